"""Time an N x M sgd eNTK computed with torch.func against a naive loop of per-(example, logit) backward passes.

    python bench/kernel.py [--n 32] [--m 64] [--model tiny|minilm-size] [--length 32] [--fixed-length] [--classes 2]
                           [--row-batch 8] [--col-batch 8] [--threads 1] [--seed 0]

The model is the pipeline's prompt Classifier (:class:`lmft.heads.Classifier`, the MLM scores of
``--classes`` label words at the mask position) on a random BERT: ``tiny`` (2 layers, 32 wide) or
``minilm-size`` (MiniLM-L6's shape: 6 layers, hidden 384, 12 heads, intermediate 1536,
vocabulary 30522; 22.7M parameters plus the MLM transform). Every parameter is trainable. The
data are random tokens, right-padded, lengths drawn uniformly from ``length/2 .. length`` (all
``length`` with ``--fixed-length``, the best case for batching); the mask position is the
example's last token.

The same shard (all N rows x all M columns, the same row/column blocks) is computed with
:func:`lmft.kernels.compute_shard` three ways, on the CPU and, where CUDA is present, again on
the GPU:

- ``batched``: torch.func, vmap over the examples of a block that share an attention mask;
- ``per-example``: torch.func, one example per vmap call (``vmap_chunk=1``, the CPU default);
- ``naive``: one ``torch.autograd.grad`` per (example, logit).

Every method recomputes the column Jacobians once per row block (``ceil(N / row_batch)`` times).
Times are wall-clock and the process's CPU time (the fairer number on a shared machine; on CUDA
the wall time is the one that counts).
The lower bound printed is (N + M) forward and backward passes of one example each: the work of
computing every example's gradient once, for one logit.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lmft import kernels  # noqa: E402
from lmft.heads import Classifier  # noqa: E402

SHAPES = {  # BertConfig keywords
    "tiny": dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "minilm-size": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536),
}


def build(name: str, classes: int, seed: int) -> Classifier:
    torch.manual_seed(seed)
    backbone = BertForMaskedLM(BertConfig(**SHAPES[name], attn_implementation="eager"))
    return Classifier(backbone, "prompt", classes, False, label_ids=list(range(10, 10 + classes))).eval()


def batch(n: int, length: int, vocab: int, gen: torch.Generator, fixed: bool) -> dict[str, torch.Tensor]:
    lengths = torch.full((n,), length) if fixed else torch.randint(length // 2, length + 1, (n,), generator=gen)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return {"input_ids": torch.randint(1, vocab, (n, length), generator=gen) * mask, "attention_mask": mask,
            "token_type_ids": torch.zeros_like(mask), "mask_pos": lengths - 1}


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[tuple[float, float], torch.Tensor]:
    """``((wall seconds, CPU seconds of this process), fn())``; CUDA work is waited for."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - wall, time.process_time() - cpu), out


def lower_bound(model: Classifier, data: list[dict[str, torch.Tensor]], device: torch.device) -> tuple[float, float]:
    """Seconds for one forward and one backward pass (of logit 0) per example, each alone at its own length."""
    params = [p for p in model.parameters() if p.requires_grad]

    def run() -> torch.Tensor:
        for split in data:
            for i in range(split["input_ids"].shape[0]):
                width = int(split["attention_mask"][i].sum())
                out = model(split["input_ids"][i:i + 1, :width].to(device), split["attention_mask"][i:i + 1, :width].to(device),
                            split["token_type_ids"][i:i + 1, :width].to(device), split["mask_pos"][i:i + 1].to(device))
                torch.autograd.grad(out[0, 0], params, allow_unused=True)
        return torch.zeros(())

    return timed(run, device)[0]


def _seconds(t: tuple[float, float]) -> str:
    return f"{t[0]:8.2f} s wall {t[1]:8.2f} s CPU"


def bench(model: Classifier, x: dict, y: dict, args: argparse.Namespace, device: torch.device) -> None:
    model.to(device)
    shard = dict(formula="sgd", row_batch=args.row_batch, col_batch=args.col_batch)
    kernels.compute_shard(model, x, y, row_range=(0, 1), col_range=(0, 1), **shard)  # warm-up
    big = max(args.row_batch, args.col_batch)
    runs = {
        "batched (torch.func, vmap over mask groups)": dict(method="vmap", vmap_chunk=big),
        "per-example (torch.func, vmap_chunk=1)": dict(method="vmap", vmap_chunk=1),
        "naive (one backward per example-logit)": dict(method="naive"),
    }
    times, results = {}, {}
    for label, opts in runs.items():
        times[label], results[label] = timed(lambda o=opts: kernels.compute_shard(model, x, y, **shard, **o).kernel, device)
        print(f"{device.type:4s} {label:44s} {_seconds(times[label])}", flush=True)
    for i, kind in enumerate(("wall", "CPU")):
        batched, per_example, naive = (t[i] for t in times.values())
        print(f"{device.type:4s} {kind} time: naive / batched = {naive / batched:.2f}x, "
              f"naive / per-example = {naive / per_example:.2f}x")
    print(f"{device.type:4s} {'lower bound, (N+M) = %d forward+backward passes' % (args.n + args.m):44s} "
          f"{_seconds(lower_bound(model, [x, y], device))}")
    ref = results["naive (one backward per example-logit)"]
    for label, k in results.items():
        print(f"{device.type:4s} max |K - K_naive| / max |K_naive|, {label.split(' (')[0]}: "
              f"{float((k - ref).abs().max() / ref.abs().max()):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="rows (training examples)")
    parser.add_argument("--m", type=int, default=64, help="columns (examples of the other split)")
    parser.add_argument("--model", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--length", type=int, default=32, help="padded length; lengths are length/2..length")
    parser.add_argument("--fixed-length", action="store_true", help="every example is --length long (one mask)")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--row-batch", type=int, default=8)
    parser.add_argument("--col-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build(args.model, args.classes, args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    vocab = SHAPES[args.model]["vocab_size"]
    x, y = (batch(k, args.length, vocab, gen, args.fixed_length) for k in (args.n, args.m))
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    distinct = [len(set(split["attention_mask"].sum(1).tolist())) for split in (x, y)]
    shortest = args.length if args.fixed_length else args.length // 2
    print(f"model {args.model}: {n_params / 1e6:.1f}M trainable parameters, C={args.classes} logits; "
          f"N={args.n} x M={args.m}, lengths {shortest}..{args.length}, row_batch {args.row_batch}, "
          f"col_batch {args.col_batch}, distinct lengths {distinct[0]} and {distinct[1]}; torch {torch.__version__}, "
          f"{args.threads} thread(s)", flush=True)
    bench(model, x, y, args, torch.device("cpu"))
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}", flush=True)
        bench(model, x, y, args, torch.device("cuda"))


if __name__ == "__main__":
    main()
