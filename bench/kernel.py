"""Time an N x M sgd eNTK: the default (tiled) path, torch.func, and a naive loop of per-(example, logit) backward passes.

    python bench/kernel.py [--n 8] [--m 16] [--model tiny|minilm-size|smollm2-size] [--length 32] [--fixed-length]
                           [--classes 2] [--row-batch 8] [--col-batch 8] [--threads 1] [--seed 0] [--repeat 3]
                           [--mem-mb MB]

The model is the pipeline's prompt Classifier (:class:`lmft.models.heads.Classifier`, the MLM scores of
``--classes`` label words at the mask position) on a random BERT: ``tiny`` (2 layers, 32 wide) or
``minilm-size`` (MiniLM-L6's shape: 6 layers, hidden 384, 12 heads, intermediate 1536,
vocabulary 30522; 22.7M parameters plus the MLM transform), or a random Llama of SmolLM2-135M's
shape, ``smollm2-size`` (30 layers, hidden 576, 9 heads, 3 key-value heads, intermediate 1536,
vocabulary 49152, tied embeddings; 134.5M parameters, 106.2M of them outside the embedding
table), under the causal head (the LM scores of the label words at the last token). Every parameter is trainable. The
data are random tokens, right-padded, lengths drawn uniformly from ``length/2 .. length`` (all
``length`` with ``--fixed-length``, the best case for batching); the mask position is the
example's last token.

With ``--mem-mb`` only the default (tiled) path runs, once, under that memory budget
(``kernels.mem_mb``: Jacobians held within it, the tensors in blocks where they do not fit, each
block a pass of its own over the examples); it prints the wall and CPU time and the process's peak
resident set (which includes building the model and the data), then the floor below (once each).

Otherwise the same shard (all N rows x all M columns) is computed with :func:`lmft.kernels.compute.compute_shard`
four ways, on the CPU and, where CUDA is present, again on the GPU:

- ``default``: ``method="tiled"``, per tile of 8 examples one batched forward and C backward
  passes, per-example gradients from the modules' inputs and output gradients, wide weights
  contracted as Gram products of those factors, embedding tables as rows (:mod:`lmft.kernels.tiled`);
- ``batched``: torch.func, vmap over the examples of a block that share an attention mask, then
  the per-pair contraction;
- ``per-example``: torch.func, one example per vmap call (``vmap_chunk=1``), per-pair contraction;
- ``naive``: one ``torch.autograd.grad`` per (example, logit), per-pair contraction (the reference).

The per-pair methods recompute the column Jacobians once per row block (``ceil(N / row_batch)``
times); the tiled one keeps them where they form one block.
Times are wall-clock and the process's CPU time (the fairer number on a shared machine; on CUDA
the wall time is the one that counts), each the least of ``--repeat`` runs.
The lower bound is the floor of the computation: the N + M examples' passes, batched in the
default's tiles (one forward and one backward per logit, the backward taking the activation
gradients only: :func:`batched_passes`), plus the N x M contraction of the Jacobians outside the
embedding tables, ``[N*C, P] @ [P, M*C]`` in float64, timed alone on operands filled once
(:func:`contraction`). The bound printed before, N + M unbatched forward and backward passes of
one logit (:func:`per_example_passes`), is printed too. The last line gives the default's time
over the lower bound, the naive loop's over the default's and the default's over the old bound
(CPU time on the CPU, wall time on CUDA).
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lmft.kernels import compute as kernels  # noqa: E402
from lmft.models.heads import Classifier  # noqa: E402
from lmft.kernels.tile_jacobians import SLICE, TILE, layout_of  # noqa: E402
from lmft.kernels.tiled import one_thread  # noqa: E402

SHAPES = {  # BertConfig keywords, LlamaConfig keywords for a causal model
    "tiny": dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "minilm-size": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536),
    "smollm2-size": dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, tie_word_embeddings=True),
}
CAUSAL = {"smollm2-size"}


def build(name: str, classes: int, seed: int) -> Classifier:
    torch.manual_seed(seed)
    label_ids = list(range(10, 10 + classes))
    if name in CAUSAL:
        backbone = LlamaForCausalLM(LlamaConfig(**SHAPES[name], attn_implementation="eager"))
        return Classifier(backbone, "causal", classes, True, label_ids=label_ids).eval()
    backbone = BertForMaskedLM(BertConfig(**SHAPES[name], attn_implementation="eager"))
    return Classifier(backbone, "prompt", classes, False, label_ids=label_ids).eval()


def batch(n: int, length: int, vocab: int, gen: torch.Generator, fixed: bool) -> dict[str, torch.Tensor]:
    lengths = torch.full((n,), length) if fixed else torch.randint(length // 2, length + 1, (n,), generator=gen)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return {"input_ids": torch.randint(1, vocab, (n, length), generator=gen) * mask, "attention_mask": mask,
            "token_type_ids": torch.zeros_like(mask), "mask_pos": lengths - 1}


def timed(fn: Callable[[], torch.Tensor], device: torch.device, repeat: int = 1) -> tuple[tuple[float, float], torch.Tensor]:
    """``((wall seconds, CPU seconds of this process), fn())``, each the least of ``repeat`` runs (the
    other jobs of a shared machine only ever add time); CUDA work is waited for."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = (min(best[0], time.perf_counter() - wall), min(best[1], time.process_time() - cpu))
    return best, out


def per_example_passes(model: Classifier, data: list[dict[str, torch.Tensor]], device: torch.device,
                       repeat: int = 1) -> tuple[float, float]:
    """Seconds for one forward and one backward pass (of logit 0, all parameter gradients) per example,
    each alone at its own length (the bound this benchmark printed before the batched tiles)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def run() -> torch.Tensor:
        for split in data:
            for i in range(split["input_ids"].shape[0]):
                width = int(split["attention_mask"][i].sum())
                out = model(split["input_ids"][i:i + 1, :width].to(device), split["attention_mask"][i:i + 1, :width].to(device),
                            split["token_type_ids"][i:i + 1, :width].to(device), split["mask_pos"][i:i + 1].to(device))
                torch.autograd.grad(out[0, 0], params, allow_unused=True)
        return torch.zeros(())

    return timed(run, device, repeat)[0]


def batched_passes(model: Classifier, data: list[dict[str, torch.Tensor]], device: torch.device,
                   repeat: int = 1) -> tuple[float, float]:
    """Seconds for the floor's passes: per tile of TILE examples (the default's grid), trimmed to its
    longest example, one batched forward and one backward per logit that gives the activation
    gradients only (the gradient of the logits' sum with respect to the word embeddings' output, which
    runs the backward through every layer without forming a parameter gradient)."""
    embeddings = model.backbone.get_input_embeddings()

    def run() -> torch.Tensor:
        for split in data:
            n = split["input_ids"].shape[0]
            for start in range(0, n, TILE):
                rows = slice(start, min(start + TILE, n))
                width = int(split["attention_mask"][rows].sum(1).max())
                leaves = []
                hook = embeddings.register_forward_hook(
                    lambda m, a, out: leaves.append(out.detach().requires_grad_()) or leaves[-1])
                try:
                    out = model(split["input_ids"][rows, :width].to(device), split["attention_mask"][rows, :width].to(device),
                                split["token_type_ids"][rows, :width].to(device), split["mask_pos"][rows].to(device))
                finally:
                    hook.remove()
                for a in range(out.shape[1]):
                    torch.autograd.grad(out[:, a].sum(), leaves, retain_graph=a + 1 < out.shape[1])
        return torch.zeros(())

    return timed(run, device, repeat)[0]


def contraction(model: Classifier, n: int, m: int, logits: int, device: torch.device, repeat: int = 1
                ) -> tuple[tuple[float, float], int]:
    """Seconds for the floor's contraction alone, and its width P: ``[N*C, P] @ [P, M*C]`` in float64 over the
    P trainable coordinates outside the embedding tables (the dense part of the Jacobians), one GEMM per
    slice of SLICE coordinates on operands filled once (no Jacobian is read or staged)."""
    coords = sum(p.numel() for p in layout_of(model, 1).order)
    gen = torch.Generator(device=device).manual_seed(0)
    u = torch.randn(n * logits, SLICE, dtype=torch.float64, device=device, generator=gen)
    v = torch.randn(SLICE, m * logits, dtype=torch.float64, device=device, generator=gen)
    acc = torch.zeros(n * logits, m * logits, dtype=torch.float64, device=device)

    def run() -> torch.Tensor:
        for start in range(0, coords, SLICE):
            w = min(SLICE, coords - start)
            acc.addmm_(u[:, :w], v[:w])
        return acc

    return timed(run, device, repeat)[0], coords


def _seconds(t: tuple[float, float]) -> str:
    return f"{t[0]:8.2f} s wall {t[1]:8.2f} s CPU"


def bench(model: Classifier, x: dict, y: dict, args: argparse.Namespace, device: torch.device) -> None:
    model.to(device)
    shard = dict(formula="sgd", row_batch=args.row_batch, col_batch=args.col_batch)
    kernels.compute_shard(model, x, y, row_range=(0, 1), col_range=(0, 1), **shard)  # warm-up
    big = max(args.row_batch, args.col_batch)
    runs = {
        "default (tiled: batched tiles, Gram products)": dict(),
        "batched (torch.func, vmap over mask groups)": dict(method="vmap", vmap_chunk=big),
        "per-example (torch.func, vmap_chunk=1)": dict(method="vmap", vmap_chunk=1),
        "naive (one backward per example-logit)": dict(method="naive"),
    }
    times, results = {}, {}
    tiles = sum(-(-k // TILE) for k in (args.n, args.m))
    for label, opts in runs.items():
        times[label], results[label] = timed(lambda o=opts: kernels.compute_shard(model, x, y, **shard, **o).kernel, device,
                                             args.repeat)
        print(f"{device.type:4s} {label:44s} {_seconds(times[label])}", flush=True)
    for i, kind in enumerate(("wall", "CPU")):
        default, batched, per_example, naive = (t[i] for t in times.values())
        print(f"{device.type:4s} {kind} time: naive / default = {naive / default:.2f}x, naive / batched = "
              f"{naive / batched:.2f}x, naive / per-example = {naive / per_example:.2f}x")
    with one_thread(device):  # as the default path runs
        passes = batched_passes(model, [x, y], device, args.repeat)
        gemms, coords = contraction(model, args.n, args.m, args.classes, device, args.repeat)
    bound = (passes[0] + gemms[0], passes[1] + gemms[1])
    single = per_example_passes(model, [x, y], device, args.repeat)
    print(f"{device.type:4s} {'floor: batched passes, %d tiles of <= %d, C=%d' % (tiles, TILE, args.classes):44s} "
          f"{_seconds(passes)}")
    print(f"{device.type:4s} {'floor: float64 contraction alone, P=%.1fM' % (coords / 1e6):44s} {_seconds(gemms)}")
    print(f"{device.type:4s} {'lower bound = the floor (the two above)':44s} {_seconds(bound)}")
    print(f"{device.type:4s} {'per-example passes, (N+M) = %d (old bound)' % (args.n + args.m):44s} {_seconds(single)}")
    ref = results["naive (one backward per example-logit)"]
    for label, k in results.items():
        print(f"{device.type:4s} max |K - K_naive| / max |K_naive|, {label.split(' (')[0]}: "
              f"{float((k - ref).abs().max() / ref.abs().max()):.1e}")
    i = 0 if device.type == "cuda" else 1  # the CPU time on a shared CPU, the wall time on a GPU
    default, naive = times["default (tiled: batched tiles, Gram products)"][i], times["naive (one backward per example-logit)"][i]
    print(f"{device.type:4s} default / lower bound = {default / bound[i]:.2f}x; naive / default = {naive / default:.2f}x; "
          f"default / per-example passes = {default / single[i]:.2f}x", flush=True)


def bounded(model: Classifier, x: dict, y: dict, args: argparse.Namespace) -> None:
    """The default path once under ``--mem-mb``: time and the process's peak resident set (the kernel's
    log, with its blocks, goes to stderr); then the floor, once."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cpu = torch.device("cpu")
    t, k = timed(lambda: kernels.compute_shard(model, x, y, "sgd", row_batch=args.row_batch, col_batch=args.col_batch,
                                               mem_mb=args.mem_mb).kernel, cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"cpu  default (tiled) under mem_mb {args.mem_mb:.0f} MB: "
          f"{_seconds(t)}; peak resident set {peak:.0f} MB; kernel {tuple(k.shape)}, "
          f"max |K| {float(k.abs().max()):.3g}", flush=True)
    with one_thread(cpu):  # as the default path runs
        passes = batched_passes(model, [x, y], cpu)
        print(f"cpu  floor: batched passes {_seconds(passes)}", flush=True)
        gemms, coords = contraction(model, args.n, args.m, args.classes, cpu)
    print(f"cpu  floor: float64 contraction alone, P={coords / 1e6:.1f}M {_seconds(gemms)}", flush=True)
    print(f"cpu  default / lower bound = {t[1] / (passes[1] + gemms[1]):.2f}x (CPU time)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="rows (training examples)")
    parser.add_argument("--m", type=int, default=16, help="columns (examples of the other split)")
    parser.add_argument("--model", choices=sorted(SHAPES), default="minilm-size")
    parser.add_argument("--length", type=int, default=32, help="padded length; lengths are length/2..length")
    parser.add_argument("--fixed-length", action="store_true", help="every example is --length long (one mask)")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--row-batch", type=int, default=8)
    parser.add_argument("--col-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each timing, the least counts")
    parser.add_argument("--mem-mb", type=float, help="run only the default path, once, under this memory budget (MB)")
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
    if args.mem_mb is not None:
        bounded(model, x, y, args)
        return
    bench(model, x, y, args, torch.device("cpu"))
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}", flush=True)
        bench(model, x, y, args, torch.device("cuda"))


if __name__ == "__main__":
    main()
