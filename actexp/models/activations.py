"""The layer-reduced residual stream h_t of docs/math.md, for batches of token ids (or, for
model.layers=each, every selected block's stream handed on as it is made).

Texts are packed into rows without padding between them (positions restart at 0 for each text,
and attention stays within it), or right-padded one per row (hardware.packing=false). Forward
hooks on the selected decoder blocks add each block's raw output into one float32 buffer, so an
all-layer stack is never built; the LM head never runs and no KV cache is made.
"""

import bisect
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from ..errors import check_interrupt
from ..maths.pooling import on_device as _on
from .loading import LoadedModel


def token_budget_batches(lengths: Sequence[int], batch_tokens: int, max_padding: float = 0.1) -> List[List[int]]:
    """Group indices into batches of similar length whose padded size (count x longest) fits batch_tokens.

    Longest first, so each batch's first text sets its width. A text joins the open batch only if
    padding it costs at most max_padding of its own length, which bounds the pad tokens of the
    whole run by max_padding x the real tokens. A text longer than the budget goes alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: List[List[int]] = []
    for i in order:
        if batches:
            width = lengths[batches[-1][0]]
            if (len(batches[-1]) + 1) * width <= batch_tokens and width - lengths[i] <= max_padding * lengths[i]:
                batches[-1].append(i)
                continue
        batches.append([i])
    return batches


@dataclass(frozen=True)
class Pack:
    """One forward pass: texts laid out in `rows` rows of `width` token slots. Text texts[k] fills
    row rows[k] from column starts[k] for lengths[k] tokens; slots no text fills are pads."""

    texts: List[int]  # indices into the ids of the call
    rows: List[int]
    starts: List[int]
    lengths: List[int]
    n_rows: int
    width: int

    @property
    def padded(self) -> bool:
        """Row k holds text k alone, from column 0, and nothing else: a right-padded batch (positions
        are the columns: no position ids needed)."""
        return (self.rows == list(range(self.n_rows)) and all(s == 0 for s in self.starts)
                and self.width == max(self.lengths))  # a wider row's pads would take positions past the context

    @property
    def slots(self) -> int:
        return self.n_rows * self.width


def padded_packs(lengths: Sequence[int], batch_tokens: int, max_padding: float = 0.1) -> List[Pack]:
    """token_budget_batches as packs: one text per row, right-padded to the batch's longest."""
    return [Pack(b, list(range(len(b))), [0] * len(b), [lengths[i] for i in b], len(b), lengths[b[0]])
            for b in token_budget_batches(lengths, batch_tokens, max_padding)]


def packed_packs(lengths: Sequence[int], batch_tokens: int, width: Optional[int] = None,
                 max_padding: float = 0.1) -> List[Pack]:
    """Texts packed into rows without padding between them (best fit, longest first).

    A pack holds at most batch_tokens slots (always at least one row). A text goes into the row
    whose free tail fits it most tightly, or opens a row while the pack has room; one that fits
    nowhere waits for the next pack. Pads are only the unfilled tails of rows. Rows are the pack's
    longest text wide, and a text opens one only if the row's tail beyond it is at most max_padding
    of its length (as right-padded batches bound their pads), so shorter texts fill the tails or
    wait for a narrower pack. With a width given, rows are that wide and any text may open one:
    many texts share each row, and every pack but a call's last has the same shape (unless a text
    is longer than width); the last keeps only the rows it fills.
    """
    remaining = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: List[Pack] = []
    while remaining:
        W = max(width or 0, lengths[remaining[0]])
        max_rows = max(1, batch_tokens // W)
        free: List[Tuple[int, int]] = []  # (free slots, row) of the rows with room, ascending
        n_rows, texts, rows, starts, waiting = 0, [], [], [], []
        for j, i in enumerate(remaining):
            n = lengths[i]
            k = bisect.bisect_left(free, (n, -1))
            if k < len(free):  # the row that fits it most tightly
                room, row = free.pop(k)
            elif n_rows < max_rows and (width or W - n <= max_padding * n):
                room, row, n_rows = W, n_rows, n_rows + 1
            elif not free and n_rows == max_rows:  # every row is full: the rest waits
                waiting += remaining[j:]
                break
            else:
                waiting.append(i)
                continue
            texts.append(i), rows.append(row), starts.append(W - room)
            if room > n:
                bisect.insort(free, (room - n, row))
        packs.append(Pack(texts, rows, starts, [lengths[i] for i in texts], n_rows, W))
        remaining = waiting
    return packs


class _StopForward(Exception):
    """Raised by the hook of the deepest selected block: later blocks are not needed."""


class BlockOutputs:
    """Forward hooks that hand each selected block's raw output [R, W, H] to a callback as the block
    makes it: LayerMean sums them, model.layers=each pools each, so no stack of blocks is ever kept.
    The LM head never runs, no KV cache is made, and blocks after the deepest selected one never run."""

    def __init__(self, blocks: Sequence[torch.nn.Module], layer_ids: Sequence[int]):
        self.blocks, self.layer_ids = blocks, list(layer_ids)
        self.stop_early = self.layer_ids[-1] < len(blocks) - 1

    @torch.inference_mode()
    def __call__(self, body: torch.nn.Module, on_block, input_ids: torch.Tensor,
                 position_ids: Optional[torch.Tensor] = None) -> None:
        """on_block(k, out [R, W, H]) for the k-th selected block, in order; rows as LayerMean takes them."""
        def hook_of(k: int):
            def hook(module, args, output):
                on_block(k, output[0] if isinstance(output, tuple) else output)  # [R, W, H]
                if self.stop_early and k == len(self.layer_ids) - 1:
                    raise _StopForward
            return hook

        handles = [self.blocks[i].register_forward_hook(hook_of(k)) for k, i in enumerate(self.layer_ids)]
        try:
            body(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()


class LayerMean:
    """The mean of the selected blocks' raw outputs, h [B, T, H] float32, summed as each block makes it."""

    def __init__(self, blocks: Sequence[torch.nn.Module], layer_ids: Sequence[int]):
        self.outputs, self.n = BlockOutputs(blocks, layer_ids), len(layer_ids)

    @torch.inference_mode()
    def __call__(self, body: torch.nn.Module, input_ids: torch.Tensor,
                 position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h [B, T, H] float32 for input_ids [B, T]: right-padded rows (position_ids None), or packed
        rows whose position_ids restart at 0 for each text.

        Right padding needs no attention mask: a causal model never lets a real token see a pad, and
        positions stay 0..T-1. Packed rows need none either: transformers reads the restarts of
        position_ids as text boundaries and masks attention across them (block-diagonal causal for
        sdpa and eager, a block mask for flex; flash attention only in a batch of one row, which the
        backend's check finds). Pads are never pooled.
        """
        total = []

        def add(k, out):  # out [B, T, H] in the model's dtype
            if not total:
                total.append(out.to(torch.float32, copy=True))  # [B, T, H]
            else:
                total[0].add_(out)

        self.outputs(body, add, input_ids, position_ids)
        return total[0].div_(self.n)


def batch_ids(lm: LoadedModel, ids: Sequence[Sequence[int]], pack: Pack) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(input_ids [R, W], position_ids [R, W] or None for a padded pack) of one pack, on the model's device.
    Positions restart at 0 for each text; every pad has position 0, a sequence of its own (a row of
    pads wider than the model's context would overflow its position table otherwise)."""
    pad = lm.text.bos_id or 0  # any valid id: pad slots are never pooled
    input_ids = torch.full((pack.n_rows, pack.width), pad, dtype=torch.long)  # [R, W]
    position_ids = None if pack.padded else torch.zeros(pack.n_rows, pack.width, dtype=torch.long)  # [R, W]
    for i, row, start, n in zip(pack.texts, pack.rows, pack.starts, pack.lengths):
        input_ids[row, start:start + n] = torch.tensor(ids[i], dtype=torch.long)
        if position_ids is not None:
            position_ids[row, start:start + n] = torch.arange(n)
    return _on(input_ids, lm.device), None if position_ids is None else _on(position_ids, lm.device)


def segments(pack: Pack, h: torch.Tensor) -> Iterator[Tuple[List[int], torch.Tensor, List[int]]]:
    """(indices into ids, x [n, T, H] right-padded, lengths) covering every text of the pack once: the
    pooling and the mean take right-padded batches. A padded pack is one segment, h itself; a packed
    one gives the k-th text of every row as segment k (gathered: at most h's size in all)."""
    if pack.padded:  # row k holds text k
        yield pack.texts, h, pack.lengths
        return
    by_row: dict = {}
    for k in sorted(range(len(pack.texts)), key=lambda k: (pack.rows[k], pack.starts[k])):
        by_row.setdefault(pack.rows[k], []).append(k)
    for slot in range(max(len(v) for v in by_row.values())):
        members = [v[slot] for v in by_row.values() if len(v) > slot]
        T = max(pack.lengths[k] for k in members)
        rows = torch.tensor([pack.rows[k] for k in members])  # [n]
        cols = (torch.tensor([pack.starts[k] for k in members])[:, None] + torch.arange(T)).clamp_(max=pack.width - 1)  # [n, T]
        # Built on the host and sent without a wait: the slots past a text's end are never pooled.
        yield ([pack.texts[k] for k in members], h[_on(rows[:, None], h.device), _on(cols, h.device)],
               [pack.lengths[k] for k in members])  # [n, T, H]


@dataclass(frozen=True)
class Batching:
    """How texts become forward passes: packed rows (default) or right-padded ones, within batch_tokens."""

    batch_tokens: int = 8192
    packing: bool = True
    max_padding: float = 0.1  # the pads a row may hold beyond a text, as a fraction of its length
    pack_width: Optional[int] = None  # packed rows' width; None: each pack's longest text

    @classmethod
    def from_config(cls, hw) -> "Batching":
        return cls(hw.batch_tokens, hw.packing, hw.max_padding, hw.pack_width)

    def packs(self, lengths: Sequence[int]) -> List[Pack]:
        if self.packing:
            return packed_packs(lengths, self.batch_tokens, self.pack_width, self.max_padding)
        return padded_packs(lengths, self.batch_tokens, self.max_padding)


def packing_error(lm: LoadedModel) -> float:
    """How far a text packed behind another moves from the same text alone (relative): about 1e-7 in
    float32 where the model honours restarting position ids; of order 1 where it lets the texts
    attend to each other or ignores the positions (a family whose masks transformers does not build
    from position ids)."""
    vocab = lm.model.config.vocab_size
    first, second = [i % vocab for i in range(1, 8)], [i % vocab for i in range(8, 13)]
    layer_mean = LayerMean(lm.blocks, lm.layer_ids)
    # Two rows, as a real pack has: flash attention finds packed texts only in a batch of one row.
    pack = Pack([0, 1, 2], [0, 0, 1], [0, 7, 0], [7, 5, 7], 2, 12)
    packed = layer_mean(lm.body, *batch_ids(lm, [first, second, first], pack))[0, 7:]  # [5, H]
    alone = layer_mean(lm.body, *batch_ids(lm, [second], padded_packs([5], 64)[0]))[0]  # [5, H]
    return ((packed - alone).norm() / alone.norm()).item()


def _packs(ids: Sequence[Sequence[int]], batching: Batching) -> Iterator[Pack]:
    """The forward passes over the texts' token ids, Ctrl-C checked before each."""
    lengths = [len(x) for x in ids]
    if min(lengths, default=1) < 1:
        raise ValueError("every text needs at least one token")
    for pack in batching.packs(lengths):
        check_interrupt()
        yield pack


def stream_blocks(lm: LoadedModel, ids: Sequence[Sequence[int]], batching: Batching, on_block) -> Iterator[Pack]:
    """model.layers=each: per forward pass, on_block(pack, k, out [R, W, H]) for each selected block k as
    it is made, then the pack."""
    outputs = BlockOutputs(lm.blocks, lm.layer_ids)
    for pack in _packs(ids, batching):
        outputs(lm.body, lambda k, out: on_block(pack, k, out), *batch_ids(lm, ids, pack))
        yield pack


def stream(lm: LoadedModel, ids: Sequence[Sequence[int]], batching: Batching) -> Iterator[Tuple[Pack, torch.Tensor]]:
    """Yield (pack, h [R, W, H] float32) per forward pass over the texts' token ids."""
    layer_mean = LayerMean(lm.blocks, lm.layer_ids)
    for pack in _packs(ids, batching):
        yield pack, layer_mean(lm.body, *batch_ids(lm, ids, pack))  # [R, W, H]
