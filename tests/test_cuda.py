"""Every stage on a CUDA device (the paper grid's ``device: cuda``), on tiny models: each test runs a stage's
entry point on the GPU and checks it against the same run on the CPU, or against what it must keep exact.

The tests skip without a GPU. ``LMFT_TEST_CUDA_AS=cpu`` runs them with that device in place of ``cuda``
(the comparisons are then CPU against CPU), to check the tests themselves on a machine without one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lmft.data.tasks import get_task
from lmft.finetune.decode import greedy_decode
from lmft.finetune.spsa import mezo_step
from lmft.finetune.stage import run_finetune
from lmft.graft.plan import graft_options, reference_options
from lmft.graft.stage import load_mask, run_graft, run_reference
from lmft.interpolate.stage import Endpoint, run_interpolate
from lmft.io import load_tensors, write_parquet
from lmft.kernels import plan as kp
from lmft.kernels import stage as ks
from lmft.kernels.files import load_logits
from lmft.paths import SPLITS
from tiny import make_config, make_tiny_model_dir, make_tokenizer, tiny_frame, write_tiny_splits

DEVICE = "cuda" if torch.cuda.is_available() else os.environ.get("LMFT_TEST_CUDA_AS")
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no CUDA device (LMFT_TEST_CUDA_AS=cpu runs these on the CPU)")
SST2 = get_task("sst-2")
TRAIN = {"steps": 4, "eval_every": 2, "batch_size": 4}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    return {"bert": make_tiny_model_dir(root, "bert"), "llama": make_tiny_model_dir(root, "llama"),
            "splits": write_tiny_splits(root), "root": root}


def _finetune(tiny, out: Path, spec: dict, device: str, model: str = "bert", **kw) -> dict:
    return run_finetune(tiny[model], SST2, tiny["splits"], out, model=model, k=6, seed=13, method=out.name, spec=spec,
                        device=device, **kw)


@pytest.mark.parametrize("spec", [{"type": "zeroshot"}, {"type": "icl"}, {"type": "linear-probe", "C_grid": [1.0]}])
def test_scoring_methods_on_cuda_equal_the_cpu(tiny, tmp_path, spec):
    """Forward passes only: the GPU's class probabilities are the CPU's to float32 rounding."""
    gpu = _finetune(tiny, tmp_path / "gpu", spec, DEVICE)
    cpu = _finetune(tiny, tmp_path / "cpu", spec, "cpu")
    assert gpu["device"] == str(torch.device(DEVICE))
    probs = [torch.from_numpy(np.stack(pd.read_parquet(tmp_path / d / "predictions.parquet")["probs"]))
             for d in ("gpu", "cpu")]
    torch.testing.assert_close(probs[0], probs[1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("spec", [
    {"type": "ft", "lr": 1e-3, "save_every": 2, "save_steps": [2], **TRAIN},
    {"type": "ft", "mode": "lora:2", "lr": 1e-3, **TRAIN},
    {"type": "mezo", "lr": 1e-3, "eps": 1e-3, "save_every": 2, **TRAIN},
    {"type": "mezo", "mode": "prefix:2", "lr": 1e-2, "eps": 1e-1, **TRAIN},
])
def test_training_on_cuda_moves_the_weights_and_resumes(tiny, tmp_path, spec):
    """FT (AdamW state on the GPU) and MeZO (its generators on the GPU) train there, and a run killed after
    step 2 resumes from resume.pt (loaded to the CPU, then moved) to the end."""
    out = tmp_path / "run"
    metrics = _finetune(tiny, out, spec, DEVICE)
    assert metrics["device"] == str(torch.device(DEVICE)) and metrics["steps"] == 4
    tuned = load_tensors(out / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in tuned.values()) and sum(t.numel() for t in tuned.values()) > 0
    if spec.get("save_every"):
        killed = tmp_path / "killed"

        def kill(step: int) -> None:
            if step == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            _finetune(tiny, killed, spec, DEVICE, on_step=kill)
        assert (killed / "resume.pt").exists()
        resumed = _finetune(tiny, killed, spec, DEVICE)
        assert resumed["resumed_from"] == 2 and not (killed / "resume.pt").exists()


def test_generation_on_cuda_decodes_as_generate(tiny):
    """Greedy decoding with the KV cache on the GPU gives the tokens of transformers' generate there."""
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer("gpt2")
    config = make_config("gpt2", tok)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval().to(DEVICE)
    prompts = [tok(s)["input_ids"] for s in ("a great movie", "the story was good and the acting was great", "so bad")]
    eos = model.config.eos_token_id
    ours = greedy_decode(model, prompts, max_new_tokens=8, pad_id=eos, eos_ids=[eos], device=DEVICE)
    for p, got in zip(prompts, ours):
        ids = torch.tensor([p], device=DEVICE)
        want = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                              pad_token_id=eos, eos_token_id=eos)[0, len(p):].tolist()
        assert got == (want[:want.index(eos)] if eos in want else want)


def test_mezo_step_on_cuda_restores_bit_for_bit_and_repeats():
    """lr 0 leaves the parameters bit-identical on the GPU; the same seed draws the same z there twice."""
    torch.manual_seed(0)
    start = [torch.randn(3000, device=DEVICE), torch.randn(40, 7, device=DEVICE) * 1e-3]
    x = torch.randn(3000, device=DEVICE)

    def loss(params):
        return lambda: (params[0] * x).sum() + params[1].square().sum()

    params = [p.clone() for p in start]
    mezo_step(params, loss(params), eps=1e-3, lr=0.0, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(params, start))
    runs = []
    for _ in range(2):
        params = [p.clone() for p in start]
        mezo_step(params, loss(params), eps=1e-3, lr=1e-2, seed=7, n_perturbations=2)
        runs.append(params)
    assert all(torch.equal(p, q) for p, q in zip(*runs)) and not torch.equal(runs[0][0], start[0])


def test_kernel_shards_on_cuda_equal_the_cpu(tiny, tmp_path):
    """The Jacobians and the float64 contraction on the GPU: the merged kernel and f0 match the CPU's."""
    task = SST2
    cfg = kp.settings({"models": {"m": {}}, "tasks": ["sst-2"],
                       "kernels": {"formulas": ["sgd", "signgd", "asymmetric-signgd"], "binary": True,
                                   "col_shards": {"test": 2}, "row_batch": 3, "col_batch": 2, "test_cap": 8}})
    out = {}
    for device in (DEVICE, "cpu"):
        for split in SPLITS:
            for col in range(kp.col_shards(cfg, split)):
                d = tmp_path / device / split / str(col)
                ks.run_shard(tiny["bert"], task, tiny["splits"]["train"], tiny["splits"][split],
                             {f: d / f"{f}.pt" for f in cfg["formulas"]}, d / "f0.pt", split=split, prompt="prompt",
                             seed=13, row=0, col=col, cfg=kp.shard_settings(cfg, task, split) | {"device": device})
        out[device] = tmp_path / device
    for split in SPLITS:
        for col in range(kp.col_shards(cfg, split)):
            for formula in cfg["formulas"]:
                gpu = torch.load(out[DEVICE] / split / str(col) / f"{formula}.pt", weights_only=True)
                cpu = torch.load(out["cpu"] / split / str(col) / f"{formula}.pt", weights_only=True)
                k_gpu, k_cpu = gpu["kernel"], cpu["kernel"]
                assert k_gpu.dtype == torch.float64 and k_gpu.device.type == "cpu" and k_gpu.shape == k_cpu.shape
                # sign formulas count sign agreements: a gradient entry at rounding level may flip sign
                torch.testing.assert_close(k_gpu, k_cpu, rtol=1e-3, atol=1e-3 * float(k_cpu.abs().max()))
            f0 = [load_logits(out[d] / split / str(col) / "f0.pt")[0] for d in (DEVICE, "cpu")]
            torch.testing.assert_close(f0[0], f0[1], rtol=1e-4, atol=1e-5)
    ks.run_shard(tiny["bert"], task, tiny["splits"]["train"], tiny["splits"]["dev"],  # noprompt: the fitted head
                 {"sgd": tmp_path / "np/sgd.pt"}, tmp_path / "np/f0.pt", split="dev", prompt="noprompt", seed=13,
                 row=0, col=0, cfg=kp.shard_settings(cfg, task, "dev") | {"device": DEVICE, "formulas": ["sgd"]})
    assert torch.isfinite(torch.load(tmp_path / "np/sgd.pt", weights_only=True)["kernel"]).all()


@pytest.fixture(scope="module")
def run_dirs(tiny):
    """Two CPU fine-tuning runs of the tiny BERT (the grafts and interpolations read them)."""
    dirs = {}
    for name, lr in (("a", 1e-3), ("b", 3e-3)):
        dirs[name] = tiny["root"] / "runs" / name
        run_finetune(tiny["bert"], SST2, tiny["splits"], dirs[name], model="bert", k=6, seed=13, method=name,
                     spec={"type": "ft", "lr": lr, **TRAIN}, device="cpu")
    ood = tiny_frame(10).assign(label=lambda d: d["label"].map({"0": "rotten", "1": "fresh"}))
    write_parquet(ood, tiny["root"] / "ood.parquet")
    return dirs


def test_graft_on_cuda_scores_as_the_cpu(tiny, run_dirs, tmp_path):
    """Masks, the relaxation's scores and the grafted model on the GPU: the reference scores equal the CPU's,
    the graft keeps the sparsity's count, and its mask file loads back on the CPU."""
    ood = {"rt-polarity": (get_task("rt-polarity"), tiny["root"] / "ood.parquet")}
    kw = {"model": "bert", "k": 6, "seed": 13, "method": "a", "ood": ood}
    options = graft_options({"graft": {"epochs": 2}}, "a")  # every setting as the plan resolves it
    refs = {d: run_reference(tiny["bert"], SST2, run_dirs["a"], tiny["splits"], tmp_path / d / "reference",
                             options=reference_options(options), device=d, **kw)
            for d in (DEVICE, "cpu")}
    for key in ("pre_test_metric", "ft_test_metric", "pre_dev_loss", "ft_dev_loss"):
        assert refs[DEVICE][key] == pytest.approx(refs["cpu"][key], rel=1e-4, abs=1e-5)
    metrics = run_graft(tiny["bert"], SST2, run_dirs["a"], tiny["splits"], tmp_path / DEVICE / "g",
                        tmp_path / DEVICE / "reference/metrics.json", sparsity=1e-2, options=options,
                        device=DEVICE, **kw)
    mask = load_mask(tmp_path / DEVICE / "g/mask.safetensors")
    assert metrics["device"] == str(torch.device(DEVICE)) and sum(int(m.sum()) for m in mask.values()) == metrics["count"]
    assert all(m.device.type == "cpu" for m in mask.values()) and "rt-polarity" in metrics["ood"]


def test_interpolation_on_cuda_equals_the_cpu(tiny, run_dirs, tmp_path):
    a, b = Endpoint(run_dirs["a"], SST2), Endpoint(run_dirs["b"], SST2)
    curves = {}
    for d in (DEVICE, "cpu"):
        m = run_interpolate(tiny["bert"], SST2, a, b, tiny["splits"], tmp_path / d, model="bert", k=6, seed=13,
                            pair="ab", points=3, device=d)
        assert m["device"] == str(torch.device(d))
        curves[d] = pd.read_parquet(tmp_path / d / "curve.parquet")
    torch.testing.assert_close(torch.tensor(curves[DEVICE]["loss"].to_numpy()),
                               torch.tensor(curves["cpu"]["loss"].to_numpy()), rtol=1e-4, atol=1e-5)
    assert curves[DEVICE]["metric"].tolist() == curves["cpu"]["metric"].tolist()
