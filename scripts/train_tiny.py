"""Train the embedded default model (model=tiny) with next-token loss on the standard library's
docstrings, and write its weights into the package. Seeded and CPU-only:

    python scripts/train_tiny.py                 # -> actexp/assets/tiny_model.safetensors (README, "The default model")

The same torch version, Python version (its docstrings are the data) and thread count give the
same file bit for bit. The 20 bundled samples are the evaluation set and are never trained on;
every docstring whose id is 0 modulo 20 is held out to measure the loss on unseen text.
"""

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actexp.api import compose_config  # noqa: E402
from actexp.data.corpus import bundled_samples, python_docs  # noqa: E402
from actexp.jobs.common import model_spec  # noqa: E402
from actexp.models.architecture import model_config  # noqa: E402
from actexp.models.tokenizing import load_tokenizer  # noqa: E402

HELD_OUT = 20  # one docstring in 20 is held out


def token_streams(tokenizer):
    """(train, held-out) token streams: each docstring followed by the end-of-text token."""
    samples = {d.text for d in bundled_samples()}
    train, held = [], []
    for doc in python_docs(0):
        if doc.text in samples:
            continue
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        (held if int(doc.id, 16) % HELD_OUT == 0 else train).extend(ids)
    return torch.tensor(train), torch.tensor(held)


@torch.no_grad()
def mean_loss(model, stream: torch.Tensor, seq: int, batch: int = 8) -> float:
    """Next-token loss (nats per token) over the stream cut into windows of seq tokens."""
    model.eval()
    n = (len(stream) - 1) // seq
    windows = stream[: n * seq + 1]
    total, count = 0.0, 0
    for start in range(0, n, batch):
        rows = torch.stack([windows[i * seq:(i + 1) * seq + 1] for i in range(start, min(start + batch, n))])
        logits = model(rows[:, :-1]).logits  # [B, seq, V]
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), rows[:, 1:].flatten(), reduction="sum").item()
        count += rows[:, 1:].numel()
    model.train()
    return total / count


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "actexp" / "assets" / "tiny_model.safetensors"))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seq", type=int, default=1024, help="tokens per sequence: the samples reach ~950")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=100)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = model_spec(compose_config("model=tiny", "model.random_init=true"))  # the architecture of model=tiny
    tokenizer = load_tokenizer(spec)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(model_config(spec), dtype=torch.float32, attn_implementation="sdpa")
    train, held = token_streams(tokenizer)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters; {len(train):,} training tokens, "
          f"{len(held):,} held out")
    random_held = mean_loss(model, held, args.seq)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    start, log = time.time(), []
    for step in range(1, args.steps + 1):
        offsets = torch.randint(0, len(train) - args.seq - 1, (args.batch,), generator=gen)
        rows = torch.stack([train[o:o + args.seq + 1] for o in offsets.tolist()])  # [B, seq + 1]
        logits = model(rows[:, :-1]).logits  # [B, seq, V]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            held_loss = mean_loss(model, held, args.seq)
            log.append({"step": step, "train_loss": loss.item(), "held_out_loss": held_loss})
            print(f"step {step}: train loss {loss.item():.3f}, held-out loss {held_loss:.3f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    seconds = time.time() - start
    weights = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in weights.items()})  # measure what is shipped
    result = {"steps": args.steps, "tokens_seen": args.steps * args.batch * args.seq, "train_tokens": len(train),
              "held_out_tokens": len(held), "train_loss": mean_loss(model, train[: len(held) * 4], args.seq),
              "held_out_loss": mean_loss(model, held, args.seq), "random_held_out_loss": random_held,
              "seconds": round(seconds), "seq": args.seq, "batch": args.batch, "lr": args.lr, "seed": args.seed,
              "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(), "log": log}
    # The wall time is printed, not stored: the same command writes the same bytes.
    save_file(weights, args.out, metadata={"actexp.training": json.dumps({k: v for k, v in result.items() if k != "seconds"})})
    print(json.dumps({k: v for k, v in result.items() if k != "log"}, indent=1))
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
