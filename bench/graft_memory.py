"""Peak memory of grafting (base patch + evaluation, and the relaxation) relative to the model's size.

    python bench/graft_memory.py [--model tiny|small|minilm-size] [--sparsity 0.001] [--epochs 2]
                                 [--examples 32] [--seq 64] [--batch 8] [--threads 1]

The model is the pipeline's prompt Classifier (:class:`lmft.models.heads.Classifier`) on a random BERT
encoder without MLM head, as the embedded MiniLM is (the label words scored by the decoder tied to
the word embeddings): ``tiny`` (2 layers, 32 wide), ``small`` (4 layers, 128 wide) or
``minilm-size`` (MiniLM-L6's shape: 6 layers, hidden 384, 12 heads, intermediate 1536, vocabulary
30522; 22.7M parameters). Every tensor counts as fine-tuned; the fine-tuned values are the
pre-trained ones plus seeded noise. The graftable tensors are the default ones (embeddings
excluded). The data are ``--examples`` random sequences of ``--seq`` tokens.

Each phase runs in its own fresh subprocess; memory is the peak resident set above the level
after the imports (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``; elsewhere
``ru_maxrss``, which then also counts the imports), so it includes the model itself:

- ``model``: the classifier only (what the model costs);
- ``graft``: the model (holding theta_0) + the fine-tuned graftable tensors, the base patch at
  ``--sparsity``, the graft and one evaluation of all examples;
- ``relax``: ``graft`` plus ``--epochs`` of the mask relaxation (scores, their gradients, the
  soft graft's forward and backward over batches of ``--batch``).

The report gives each peak in MB and in units of the model's parameter bytes.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmft.aggregate import benchmarks  # noqa: E402

SHAPES = {  # BertConfig keywords
    "tiny": dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "small": dict(vocab_size=30522, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=512),
    "minilm-size": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536),
}
PHASES = ("model", "graft", "relax")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _ru_maxrss() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def worker(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import BertConfig, BertModel

    from lmft.data.templates import Encoded
    from lmft.graft.mask import base_patch, graft, relax_mask, split_state
    from lmft.models.evaluate import Split, predict
    from lmft.models.heads import Classifier
    from lmft.models.substitute import Substituted
    from lmft.schema import section

    torch.set_num_threads(args.threads)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS (after the imports)
        base, how = _status_kb("VmRSS") * 1024, "VmHWM above the RSS after the imports"
    except OSError:
        base, how = 0, "ru_maxrss (includes the imports)"

    torch.manual_seed(0)
    backbone = BertModel(BertConfig(**SHAPES[args.model], attn_implementation="eager"), add_pooling_layer=False)
    model = Classifier(backbone, "prompt", 2, False, label_ids=[10, 11]).eval()
    n_params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    graftable_bytes = 0
    if args.worker != "model":
        gen = torch.Generator().manual_seed(1)
        g = torch.Generator().manual_seed(2)
        items = [Encoded(torch.randint(100, SHAPES[args.model]["vocab_size"], (args.seq,), generator=g).tolist(),
                         [0] * args.seq, args.seq - 1) for _ in range(args.examples)]
        split = Split(items, [i % 2 for i in range(args.examples)], 0, "train")
        tuned = {n: p.detach() for n, p in model.named_parameters()}
        names, _ = split_state(tuned, section({}, "graft")["exclude"])
        ft = {n: t + 1e-3 * torch.randn(t.shape, generator=gen) for n, t in tuned.items() if n in names}
        del tuned
        graftable_bytes = sum(t.numel() * t.element_size() for t in ft.values())
        theta0 = {n: p.detach() for n, p in model.named_parameters() if n in ft}
        mask = base_patch(theta0, ft, args.sparsity)
        if args.worker == "relax":
            mask = relax_mask(model, ft, mask, split, epochs=args.epochs, lr=1e7, sigmoid_bias=10.0,
                              batch_size=args.batch).mask
        predict(Substituted(model, graft(theta0, ft, mask)), split, batch_size=args.batch)
    peak = (_status_kb("VmHWM") * 1024 if base else _ru_maxrss()) - base
    return {"phase": args.worker, "n_params": n_params, "model_mb": model_bytes / 2**20,
            "graftable_mb": graftable_bytes / 2**20, "peak_mb": peak / 2**20, "peak_over_model": peak / model_bytes,
            "measure": how}


def run_worker(phase: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", phase] + [f"--{k}={v}" for k, v in vars(args).items()
                                                          if k != "worker"]
    return benchmarks.run_worker(cmd, phase)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(SHAPES), default="minilm-size")
    ap.add_argument("--sparsity", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", choices=PHASES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    rows = [run_worker(phase, args) for phase in PHASES]
    first, graft_row = rows[0], rows[1]
    print(f"model {args.model}: {first['n_params'] / 1e6:.2f}M parameters ({first['model_mb']:.1f} MB), graftable "
          f"{graft_row['graftable_mb']:.1f} MB; sparsity {args.sparsity:g}, {args.examples} examples x {args.seq} "
          f"tokens, batch {args.batch}, {args.epochs} relaxation epochs")
    print(f"memory: {first['measure']}")
    print(f"{'phase':<8}{'peak MB':>10}{'x model':>10}")
    for r in rows:
        print(f"{r['phase']:<8}{r['peak_mb']:>10.1f}{r['peak_over_model']:>10.2f}")


if __name__ == "__main__":
    main()
