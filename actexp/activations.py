"""The layer-reduced residual stream h_t of docs/math.md, for batches of token ids.

Forward hooks on the selected decoder blocks add each block's raw output into one float32
buffer, so an all-layer stack is never built; the LM head never runs and no KV cache is made.
"""

from typing import Iterator, List, Sequence, Tuple

import torch

from .errors import check_interrupt
from .model import LoadedModel


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


class _StopForward(Exception):
    """Raised by the hook of the deepest selected block: later blocks are not needed."""


class LayerMean:
    """Forward hooks that average the raw outputs of the selected blocks into h [B, T, H] float32."""

    def __init__(self, blocks: Sequence[torch.nn.Module], layer_ids: Sequence[int]):
        self.blocks, self.layer_ids = blocks, list(layer_ids)
        self.stop_early = self.layer_ids[-1] < len(blocks) - 1
        self.sum = None

    def _hook(self, layer: int):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output  # [B, T, H]; transformers 4 returns a tuple
            if self.sum is None:
                self.sum = out.to(torch.float32, copy=True)  # [B, T, H]
            else:
                self.sum.add_(out)
            if self.stop_early and layer == self.layer_ids[-1]:
                raise _StopForward

        return hook

    @torch.inference_mode()
    def __call__(self, body: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """h [B, T, H] float32 for right-padded input_ids [B, T].

        No attention mask: with right padding a causal model never lets a real token see a pad,
        and positions stay 0..T-1, so every real token's stream is exact; pads are masked later.
        """
        handles = [self.blocks[i].register_forward_hook(self._hook(i)) for i in self.layer_ids]
        self.sum = None
        try:
            body(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        h, self.sum = self.sum.div_(len(self.layer_ids)), None
        return h


def batch_ids(lm: LoadedModel, ids: Sequence[Sequence[int]], batch: Sequence[int]) -> torch.Tensor:
    """Right-padded input ids [B, T] of one batch (longest first), on the model's device."""
    width = len(ids[batch[0]])
    pad = lm.text.bos_id or 0  # any valid id: pad positions are never read
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)  # [B, T]
    for row, i in enumerate(batch):
        input_ids[row, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
    return input_ids.to(lm.device)


def stream(lm: LoadedModel, ids: Sequence[Sequence[int]], batch_tokens: int, max_padding: float = 0.1
           ) -> Iterator[Tuple[List[int], torch.Tensor, List[int]]]:
    """Yield (indices into ids, h [B, T, H] float32, lengths) per token-budget batch."""
    lengths = [len(x) for x in ids]
    if min(lengths, default=1) < 1:
        raise ValueError("every text needs at least one token")
    layer_mean = LayerMean(lm.blocks, lm.layer_ids)
    for batch in token_budget_batches(lengths, batch_tokens, max_padding):
        check_interrupt()
        h = layer_mean(lm.body, batch_ids(lm, ids, batch))  # [B, T, H]
        yield batch, h, [lengths[i] for i in batch]
