"""The findings: every claim decided on its paired interval, fed runs (metrics.json and the
per-example files beside them) where it holds, does not hold, is inconclusive and is not measured;
the table's columns; the interpolate pair kinds of a config; the main table's baselines.

Scenarios are tasks: on ``t-hold`` each claim's effect is large and right, on ``t-fail`` large
and wrong, on ``t-incon`` small against the test set's noise.
"""

import hashlib
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmft.aggregate import claims, gather, summary, tables, topics
from lmft.aggregate import findings as fd
from lmft.interpolate import plan as interpolate_plan
from lmft.io import write_json, write_parquet

HOLD, FAIL, INCON = "t-hold", "t-fail", "t-incon"
H, F, I, N = claims.HOLDS, claims.FAILS, claims.INCONCLUSIVE, claims.UNMEASURED
N_TEST = 300
LABELS = np.arange(N_TEST) % 2


def write(root: Path, stage: str, frame: pd.DataFrame | None = None, name: str = "predictions.parquet", **m) -> Path:
    """One metrics.json at a path made of the stage's run keys, and its per-example file."""
    m = {"stage": stage, "k": 16, "metric": "acc", "n_test": N_TEST} | m
    m.setdefault("dev_metric", m.get("test_metric"))
    path = Path(root, stage, *(str(m[key]) for key in gather.RUN_KEYS[stage]), "metrics.json")
    write_json(m, path)
    if frame is not None:
        write_parquet(frame, path.with_name(name))
    return path


def correct(acc: float, seed: int, like: np.ndarray | None = None, flips: int = 0) -> np.ndarray:
    """A correctness pattern of accuracy ``acc`` (random order), or ``like`` with ``flips`` entries flipped."""
    rng = np.random.default_rng(seed)
    if like is not None:
        out = like.copy()
        idx = rng.choice(N_TEST, flips, replace=False)
        out[idx] = ~out[idx]
        return out
    out = np.zeros(N_TEST, dtype=bool)
    out[rng.choice(N_TEST, round(acc * N_TEST), replace=False)] = True
    return out


def preds(right: np.ndarray, conf: float = 0.8) -> pd.DataFrame:
    """Predictions right where ``right``; the predicted class has probability ``conf``."""
    pred = np.where(right, LABELS, 1 - LABELS)
    probs = [np.where(np.arange(2) == p, conf, 1 - conf) for p in pred]
    return pd.DataFrame({"index": np.arange(N_TEST), "label": LABELS, "pred": pred, "probs": probs})


def ft(root, task, method, right, seed=13, kind="ft", head="causal", mode="all", model="m", dev=None, **m) -> Path:
    acc = float(right.mean())
    return write(root, "finetune", preds(right), model=model, task=task, seed=seed, method=method, type=kind,
                 head=head, mode=mode, test_metric=acc, dev_metric=acc if dev is None else dev, **m)


def verdict_of(paths, claim, task, kinds=None, extra=None):
    found = [f for f in fd.findings(gather.load_runs(paths), kinds)
             if f.claim == claim and f.task == task and (extra is None or f.extra == extra)]
    assert len(found) == 1, found
    return found[0]


# accuracies (a, b) of "a beats b" on each scenario; independent patterns, so t-incon's 2 points sit
# inside a ~7-point interval
BEATS = {HOLD: (0.9, 0.6), FAIL: (0.6, 0.9), INCON: (0.72, 0.70)}


@pytest.mark.parametrize("task", [HOLD, FAIL, INCON])
def test_lmbff_and_mezo_zeroshot(tmp_path, task):
    a, b = BEATS[task]
    paths = [ft(tmp_path, task, "prompt-ft", correct(a, 1)), ft(tmp_path, task, "lora", correct(0.99, 2), dev=0.0),
             ft(tmp_path, task, "zeroshot", correct(b, 3), kind="zeroshot", mode="none"),
             ft(tmp_path, task, "cls", correct(b, 4), head="cls"),
             ft(tmp_path, task, "mezo", correct(a, 5), kind="mezo", mode="prefix:5")]
    want = {HOLD: H, FAIL: F, INCON: I}[task]
    for claim in ("lmbff-zeroshot", "lmbff-noprompt", "mezo-zeroshot"):
        f = verdict_of(paths, claim, task)
        assert f.verdict == want, (claim, f.reason)
        assert f.ci.n_examples == N_TEST and f.ci.low < f.ci.estimate < f.ci.high
    f = verdict_of(paths, "lmbff-zeroshot", task)
    assert f.ci.estimate == pytest.approx(a - b)  # prompt-ft (best dev), not lora (higher test, lower dev)
    assert f.rule == "95% CI of prompt FT - zero-shot > 0 points"
    if task == INCON:
        assert "would need ~" in f.reason and f"(has {N_TEST})" in f.reason
    # MeZO vs FT of the same parameters: no prefix FT ran, so not measured, whatever the scores
    mezo_ft = verdict_of(paths, "mezo-ft", task)
    assert mezo_ft.verdict == N and "no fine-tuning (type ft) of the same parameters (mode prefix:5" in mezo_ft.reason


@pytest.mark.parametrize("task,ft_acc,mezo,want", [
    (HOLD, 0.8, "paired", H),  # MeZO = FT but for 6 examples: |FT - MeZO| well below 5
    (FAIL, 0.9, 0.6, F),
    (INCON, 0.80, 0.77, I),
])
def test_mezo_against_ft_of_the_same_parameters(tmp_path, task, ft_acc, mezo, want):
    tuned = correct(ft_acc, 1)
    m = correct(0, 2, like=tuned, flips=6) if mezo == "paired" else correct(mezo, 2)
    paths = [ft(tmp_path, task, "ft-prefix", tuned, mode="prefix:5"), ft(tmp_path, task, "ft-all", correct(1.0, 3)),
             ft(tmp_path, task, "mezo", m, kind="mezo", mode="prefix:5")]
    f = verdict_of(paths, "mezo-ft", task)
    assert f.verdict == want, f.reason
    assert f.rule == "95% CI of FT - MeZO < 5 points" and f.extra == "prefix:5"


def zo(root, task, method, right, kind, passes, **m) -> Path:
    """A zeroth-order run of MeZO-prefix's parameters that took ``passes`` forward passes (None: not counted)."""
    counted = {} if passes is None else {"passes": passes, "pass_unit": "forward"}
    return ft(root, task, method, right, kind=kind, mode="prefix:5", **counted, **m)


@pytest.mark.parametrize("task", [HOLD, FAIL, INCON])
def test_zeroth_order_variants_against_mezo_at_its_forward_passes(tmp_path, task):
    a, b = BEATS[task]
    paths = [zo(tmp_path, task, "mezo", correct(b, 1), "mezo", 400),
             zo(tmp_path, task, "fzoo", correct(a, 2), "fzoo", 400),
             zo(tmp_path, task, "svrg", correct(a, 3), "mezo-svrg", 396),
             zo(tmp_path, task, "fzoo-long", correct(1.0, 4), "fzoo", 800, dev=1.0),  # over MeZO's budget: left out
             ft(tmp_path, task, "fzoo-all", correct(1.0, 5), kind="fzoo", passes=400, dev=1.0)]  # other parameters
    want = {HOLD: H, FAIL: F, INCON: I}[task]
    for claim, role in (("fzoo-mezo", "FZOO"), ("svrg-mezo", "MeZO-SVRG")):
        f = verdict_of(paths, claim, task)
        assert f.verdict == want, (claim, f.reason)
        assert f.ci.estimate == pytest.approx(a - b) and f.rule == f"95% CI of {role} - MeZO > 0 points"
        assert f.extra == "prefix:5" and "400 forward passes" in f.measured


def test_zeroth_order_variants_not_measured(tmp_path):
    over = [zo(tmp_path, HOLD, "mezo", correct(0.6, 1), "mezo", 400),
            zo(tmp_path, HOLD, "fzoo", correct(0.9, 2), "fzoo", 404)]
    f = verdict_of(over, "fzoo-mezo", HOLD)
    assert f.verdict == N and "every FZOO run took more forward passes than MeZO's 400" in f.reason
    assert verdict_of(over, "svrg-mezo", HOLD).reason == ("no MeZO-SVRG run (type mezo-svrg) of MeZO's parameters "
                                                          "(mode prefix:5, head causal)")
    uncounted = [zo(tmp_path / "b", HOLD, "mezo", correct(0.6, 1), "mezo", None),
                 zo(tmp_path / "b", HOLD, "fzoo", correct(0.9, 2), "fzoo", 400)]
    for claim in ("fzoo-mezo", "svrg-mezo", "zo-ft"):
        f = verdict_of(uncounted, claim, HOLD)
        assert f.verdict == N and "counted no forward passes" in f.reason
    no_mezo = fd.findings(gather.load_runs([ft(tmp_path / "c", HOLD, "ft", correct(0.8, 1))]))
    assert [f.reason for f in no_mezo if f.claim == "zo-ft"] == [
        "no MeZO run (finetune type mezo): no budget of forward passes to compare at"]


@pytest.mark.parametrize("task,ft_acc,zo_acc,want", [
    (HOLD, 0.8, "paired", H),  # the best ZO run = FT but for 2 examples: FT - ZO well below 3 points
    (FAIL, 0.9, 0.6, F),
    (INCON, 0.80, 0.77, I),
])
def test_a_zeroth_order_method_within_3_points_of_ft(tmp_path, task, ft_acc, zo_acc, want):
    tuned = correct(ft_acc, 1)
    best = correct(0, 2, like=tuned, flips=2) if zo_acc == "paired" else correct(zo_acc, 2)
    paths = [ft(tmp_path, task, "ft-prefix", tuned, mode="prefix:5"),
             zo(tmp_path, task, "mezo", correct(0.55, 3), "mezo", 400, dev=0.5),
             zo(tmp_path, task, "fzoo", best, "fzoo", 400, dev=0.9),
             zo(tmp_path, task, "fzoo-long", correct(0, 4, like=tuned), "fzoo", 800, dev=1.0)]  # over the budget
    f = verdict_of(paths, "zo-ft", task)
    assert f.verdict == want, f.reason
    assert f.rule == "95% CI of FT - fzoo (best dev of the ZO runs) < 3 points" and f.extra == "prefix:5"
    assert f.ci.estimate == pytest.approx(ft_acc - best.mean())
    assert "mezo (mezo)" in f.measured and "fzoo-long" not in f.measured
    no_ft = verdict_of(paths[1:], "zo-ft", task)
    assert no_ft.verdict == N and no_ft.reason.startswith("no fine-tuning (type ft) of the same parameters")


def kernel(root, task, prompt, right, mode="lora:8", seed=13, formula="sgd", dev=None) -> Path:
    acc = float(right.mean())
    return write(root, "kernel", preds(right), model="m", task=task, seed=seed, method="kernel", formula=formula,
                 prompt=prompt, solver="lstsq", test_metric=acc, dev_metric=acc if dev is None else dev,
                 kernel={"mode": mode})


@pytest.mark.parametrize("task", [HOLD, FAIL, INCON])
def test_kernel_claims(tmp_path, task):
    ft_p = correct(0.8, 1)
    # prompt: the kernel = FT but for 4 examples (holds), 30 points behind (fails), 5 behind (inconclusive)
    k_p = {HOLD: correct(0, 2, like=ft_p, flips=4), FAIL: correct(0.5, 2), INCON: correct(0.75, 2)}[task]
    # no-prompt gap: 30 points (holds: > the prompt gap ~0), none (fails: < the prompt gap 30), 2 (inconclusive)
    ft_np, k_np = {HOLD: (0.8, 0.5), FAIL: (0.8, 0.8), INCON: (0.72, 0.65)}[task]
    ft_np = correct(ft_np, 3)
    k_np = correct(0, 4, like=ft_np, flips=0) if task == FAIL else correct(k_np, 4)
    paths = [ft(tmp_path, task, "lora", ft_p, mode="lora:8"), ft(tmp_path, task, "lora-cls", ft_np, mode="lora:8", head="cls"),
             ft(tmp_path, task, "other-mode", correct(1.0, 5), mode="all"),
             kernel(tmp_path, task, "prompt", k_p), kernel(tmp_path, task, "noprompt", k_np)]
    want_prompt = {HOLD: H, FAIL: F, INCON: I}[task]
    f = verdict_of(paths, "kernel-prompt", task)
    assert f.verdict == want_prompt, f.reason
    assert f.rule == "95% CI of abs(FT - kernel) < 5 points" and f.extra == "lora:8"
    g = verdict_of(paths, "kernel-noprompt", task)
    want_gap = {HOLD: H, FAIL: F, INCON: I}[task]
    assert g.verdict == want_gap, g.reason


def test_cells_are_paired_on_the_seeds_both_sides_ran(tmp_path):
    """FT on seeds 13 and 21, zero-shot on 13 only: the comparison uses seed 13 alone."""
    paths = [ft(tmp_path, HOLD, "prompt-ft", correct(0.9, 1), seed=13), ft(tmp_path, HOLD, "prompt-ft", correct(0.5, 2), seed=21),
             ft(tmp_path, HOLD, "zeroshot", correct(0.6, 3), seed=13, kind="zeroshot", mode="none")]
    f = verdict_of(paths, "lmbff-zeroshot", HOLD)
    assert f.ci.n_seeds == 1 and f.ci.estimate == pytest.approx(0.3)
    paths.append(ft(tmp_path, HOLD, "zeroshot", correct(0.6, 4), seed=21, kind="zeroshot", mode="none"))
    f = verdict_of(paths, "lmbff-zeroshot", HOLD)
    assert f.ci.n_seeds == 2 and f.ci.estimate == pytest.approx(((0.9 - 0.6) + (0.5 - 0.6)) / 2)


def test_missing_predictions_are_not_measured(tmp_path):
    paths = [ft(tmp_path, HOLD, "prompt-ft", correct(0.9, 1)),
             ft(tmp_path, HOLD, "zeroshot", correct(0.6, 3), kind="zeroshot", mode="none")]
    paths[1].with_name("predictions.parquet").unlink()
    f = verdict_of(paths, "lmbff-zeroshot", HOLD)
    assert f.verdict == N and "predictions.parquet is missing" in f.reason


def graft_run(root, task, sparsity, graft, pre, tuned, ood=None, seed=13, **m) -> Path:
    """A graft run: its own predictions (model graft) and the reference's (pre, ft) beside it."""
    def frame(model, parts):
        return pd.concat([preds(*r).assign(model=model, split=split) for split, r in parts.items()])

    ood = ood or {}
    path = write(root, "graft", frame("graft", {"test": graft, **{f"ood:{t}": g for t, (g, _) in ood.items()}}),
                 model="m", task=task, seed=seed, method="llm-ft", sparsity=sparsity,
                 test_metric=float(graft[0].mean()), mask_moved=0.25, pre_is_pretrained=True,
                 ood={t: {"graft": float(g[0].mean()), "ft": float(f[0].mean())} for t, (g, f) in ood.items()}, **m)
    reference = pd.concat([frame("pre", {"test": pre}),
                           frame("ft", {"test": tuned, **{f"ood:{t}": f for t, (_, f) in ood.items()}})])
    write_parquet(reference, path.parent.parent / "reference" / "predictions.parquet")
    return path


@pytest.mark.parametrize("task", [HOLD, FAIL, INCON])
def test_graft_claims(tmp_path, task):
    pre, tuned = correct(0.5, 1), correct(0.9, 2)
    # graft predictions: the fine-tuned model's (keeps 100%), the pre-trained one's (keeps 0), or 3 points
    # short of FT (keeps ~92%, with an interval around 95%)
    g = {HOLD: tuned, FAIL: pre, INCON: correct(0, 3, like=tuned, flips=9)}[task]
    # calibration: FT at confidence 0.99 with 90% right (ECE 0.09); the graft's confidence = its accuracy (ECE ~0),
    # or 0.99 where it is 50% right (ECE 0.49), or 0.965 with 87% right (reduction ~20%, noisy)
    conf = {HOLD: float(g.mean()), FAIL: 0.99, INCON: 0.94}[task]
    ood_g, ood_f = {HOLD: (0.8, 0.6), FAIL: (0.6, 0.8), INCON: (0.72, 0.70)}[task]
    paths = [graft_run(tmp_path, task, s, (g, conf), (pre, 0.6), (tuned, 0.99),
                       ood={"t2": ((correct(ood_g, 4), 0.8), (correct(ood_f, 5), 0.8))}) for s in (1e-4, 1e-2)]
    want = {HOLD: H, FAIL: F, INCON: I}[task]
    for claim in ("graft-kept", "graft-ood"):
        f = verdict_of(paths, claim, task)
        assert f.verdict == want, (claim, f.reason)
    kept = verdict_of(paths, "graft-kept", task)
    assert "sparsity 0.0001" in kept.measured and "1e-04: 25%" not in kept.measured
    assert ("smallest sparsity whose interval clears 95%: 0.0001" in kept.reason) == (task == HOLD)
    ece = verdict_of(paths, "graft-ece", task)
    assert ece.verdict == {HOLD: H, FAIL: F, INCON: I}[task], ece.reason
    assert ece.rule == "95% CI of (FT ECE - graft ECE) / FT ECE > 40 %"


def test_graft_preconditions_are_not_measured(tmp_path):
    pre, tuned = correct(0.5, 1), correct(0.9, 2)
    only_1pct = graft_run(tmp_path / "a", HOLD, 1e-2, (tuned, 0.9), (pre, 0.6), (tuned, 0.9))
    f = verdict_of([only_1pct], "graft-kept", HOLD)
    assert f.verdict == N and "no graft near the paper's sparsity 0.0001 (ran 0.01)" in f.reason
    no_gain = graft_run(tmp_path / "b", HOLD, 1e-4, (pre, 0.9), (pre, 0.6), (correct(0.52, 7), 0.9))
    f = verdict_of([no_gain], "graft-kept", HOLD)
    assert f.verdict == N and f.reason.startswith("the fine-tuning gain itself is not significant")
    not_pre = graft_run(tmp_path / "c", HOLD, 1e-4, (tuned, 0.9), (pre, 0.6), (tuned, 0.9))
    metrics = gather.load_runs([not_pre])
    metrics["pre_is_pretrained"] = False
    assert {f.verdict for f in fd.findings(metrics) if f.claim.startswith("graft")} == {N}


def interp_run(root, task, pair, bump, rel=0.8, noise=0.3, seed=0) -> Path:
    """Per-example test losses along a path: linear from 0.7 to 0.3, plus ``bump`` x 4 alpha (1 - alpha)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, noise, N_TEST)
    rows = []
    for alpha in np.linspace(0, 1, 6):
        loss = 0.7 - 0.4 * alpha + bump * 4 * alpha * (1 - alpha) + base + rng.normal(0, noise / 3, N_TEST)
        rows.append(pd.DataFrame({"alpha": alpha, "split": "test", "index": np.arange(N_TEST), "loss": loss,
                                  "correct": loss < 0.5}))
    return write(root, "interpolate", pd.concat(rows), "losses.parquet", model="m", task=task, seed=13, method=pair,
                 pair=pair, test_metric=0.8, test_loss_a=0.7, test_loss_b=0.3, distance_ab=8.0 * rel, distance_a0=8.0,
                 relative_distance=rel)


@pytest.mark.parametrize("task,bump,want_none,want_task", [
    (HOLD, 0.0, H, F),   # straight path: no barrier (connected), so no task boundary
    (FAIL, 0.5, F, H),   # a 0.5-nat bump: a barrier
    (INCON, 0.05, I, I),  # a bump at the margin
])
def test_mode_connectivity(tmp_path, task, bump, want_none, want_task):
    kinds = {"s-s": "seed-seed", "d-d": "data-seed", "t-t": "task-task", "pre-ft": "pretrained-ft"}
    paths = [interp_run(tmp_path, task, pair, bump) for pair in kinds]
    found = [f for f in fd.findings(gather.load_runs(paths), kinds) if f.claim.startswith("modeconn")]
    got = {f.claim: f.verdict for f in found}
    assert got == {"modeconn-seed": want_none, "modeconn-data": want_none, "modeconn-task": want_task}
    assert all(f.rule.startswith("95% CI of test loss barrier") for f in found)
    barrier = next(f for f in found if f.claim == "modeconn-seed")
    if bump == 0.0:  # signed: a straight path sits on its chord, not clipped above it
        assert abs(barrier.ci.estimate) < 0.03 and barrier.ci.low < 0.01
    close = interp_run(tmp_path / "close", task, "s-s", 0.5, rel=0.1)
    f = verdict_of([close], "modeconn-seed", task, {"s-s": "seed-seed"})
    assert f.verdict == N and "too close to tell" in f.reason and "relative distance 0.10" in f.measured


def test_barrier_is_signed(tmp_path):
    """A path that dips below its chord has a negative barrier, shown as such."""
    f = verdict_of([interp_run(tmp_path, HOLD, "s-s", -0.3)], "modeconn-seed", HOLD, {"s-s": "seed-seed"})
    assert f.verdict == H and -0.25 < f.ci.estimate < -0.15 and f.ci.high < 0  # -0.3 x 4 (0.2 x 0.8): the interior point nearest the chord


def gen(root, task, method, scores, kind) -> Path:
    frame = pd.DataFrame({"index": np.arange(len(scores)), "target": "x", "prediction": "y", "score": scores})
    return write(root, "generation", frame, model="m", task=task, seed=13, method=method, type=kind, metric="rougeL",
                 test_metric=float(np.mean(scores)), n_test=len(scores), test_se=0.01)


@pytest.mark.parametrize("task,tuned,icl,want_ft,want_icl", [
    (HOLD, 0.05, 0.05, H, H), (FAIL, -0.05, -0.05, F, F), (INCON, 0.002, -0.002, I, I)])
def test_generation_claims(tmp_path, task, tuned, icl, want_ft, want_icl):
    rng = np.random.default_rng(0)
    zs = rng.uniform(0.05, 0.3, 200)
    paths = [gen(tmp_path, task, "zs", zs, "zeroshot"),
             gen(tmp_path, task, "ft", zs + tuned + rng.normal(0, 0.05, 200), "ft"),
             gen(tmp_path, task, "icl", zs + icl + rng.normal(0, 0.05, 200), "icl")]
    assert verdict_of(paths, "gen-ft", task).verdict == want_ft
    assert verdict_of(paths, "gen-icl", task).verdict == want_icl


def memory_rows(mezo, inference, sgd, mode="prefix:5"):
    return [{"stage": "memory", "selected": True, "model": "m", "task": HOLD, "k": 16, "seed": 13, "mode": mode,
             "what": what, "batch_size": 8, "measure": "cpu-rss-hwm", "repeats": 3,
             "peak_mb_min": v * 0.95, "peak_mb_median": v, "peak_mb_max": v * 1.05}
            for what, v in (("mezo", mezo), ("inference", inference), ("ft-sgd", sgd), ("ft-adamw", 3 * sgd))]


@pytest.mark.parametrize("mezo,inference,sgd,want_inf,want_ft", [
    (100.0, 100.0, 1000.0, H, H),   # MeZO at inference, a tenth of FT
    (300.0, 100.0, 400.0, F, F),    # three times inference, most of FT
    (118.0, 100.0, 236.0, I, I),    # the ranges straddle 1.2x and 0.5x
])
def test_mezo_memory(mezo, inference, sgd, want_inf, want_ft):
    runs = pd.DataFrame(memory_rows(mezo, inference, sgd))
    found = {f.claim: f for f in claims.findings(runs) if f.claim.startswith("mezo-memory")}
    assert found["mezo-memory-inference"].verdict == want_inf, found["mezo-memory-inference"].reason
    assert found["mezo-memory-ft"].verdict == want_ft, found["mezo-memory-ft"].reason
    assert "range over 3 repeated measurements" in found["mezo-memory-ft"].reason


@pytest.mark.parametrize("tuned,want_inf", [(1_000, N), (900_000, H)])
def test_mezo_memory_against_inference_is_decided_only_where_mezo_tunes_a_share(tuned, want_inf):
    """Prefix MeZO perturbs almost nothing: its step peaks in inference's forward pass, a tie by construction."""
    runs = pd.DataFrame([r | {"trainable_params": tuned, "total_params": 1_000_000}
                         for r in memory_rows(100.0, 100.0, 1000.0)])
    found = {f.claim: f for f in claims.findings(runs) if f.claim.startswith("mezo-memory")}
    assert found["mezo-memory-inference"].verdict == want_inf, found["mezo-memory-inference"].reason
    assert found["mezo-memory-ft"].verdict == H
    if want_inf == N:
        assert "tunes 0.1% of the weights" in found["mezo-memory-inference"].reason


def test_claims_without_runs_are_not_measured(tmp_path):
    paths = [ft(tmp_path, HOLD, "zeroshot", correct(0.6, 1), kind="zeroshot", mode="none"),
             write(tmp_path, "finetune", preds(correct(0.7, 2)), model="m", task=HOLD, k=4, seed=13, method="ft-prompt",
                   type="ft", head="prompt", test_metric=0.7)]
    found = fd.findings(gather.load_runs(paths))
    assert {f.claim for f in found} == {c.key for c in fd.CLAIMS}
    assert all(f.verdict == claims.UNMEASURED and f.model == summary.MISSING for f in found)
    reasons = {f.claim: f.reason for f in found}
    assert reasons["lmbff-zeroshot"] == "no prompt fine-tuning (type ft, head prompt or causal) at k=16; it ran at k=4"
    assert reasons["mezo-memory-ft"] == "no memory measurement (the config's memory: section)"
    assert reasons["modeconn-seed"].endswith("no pair kinds were given (lmft.interpolate.plan.pair_kinds of the config)")


def table_runs(root: Path) -> list[Path]:
    paths = []
    for task, (a, b) in BEATS.items():
        paths += [ft(root, task, "prompt-ft", correct(a, 1)), ft(root, task, "zeroshot", correct(b, 2), kind="zeroshot")]
    return paths


def test_table_columns_and_published_figures(tmp_path):
    frame = fd.findings_table(gather.load_runs(table_runs(tmp_path)), task_order=[FAIL, HOLD, INCON]).frame
    assert list(frame.columns) == list(fd.COLUMNS)
    assert frame["paper"].drop_duplicates().tolist() == ["LM-BFF", "Kernel view", "MeZO", "FZOO", "MeZO-SVRG",
                                                         "Zeroth-order", "Grafting", "Mode connectivity",
                                                         "Few-shot LMs (problem set)"]
    lmbff = frame[frame["claim"] == fd.CLAIMS[0].text]
    assert lmbff["task"].tolist() == [FAIL, HOLD, INCON] and lmbff["verdict"].tolist() == [F, H, I]
    assert lmbff["effect"].tolist() == ["-30.000", "30.000", "2.000"]  # points
    assert all(float(lo) < float(e) < float(hi) for lo, e, hi in zip(lmbff["ci_low"], lmbff["effect"], lmbff["ci_high"]))
    assert lmbff["n_test"].tolist() == [str(N_TEST)] * 3 and lmbff["n_seeds"].tolist() == ["1"] * 3
    assert "prompt FT 92.7 (0.9)" in lmbff["published"].iloc[0]
    assert all(isinstance(v, str) and "\n" not in v for v in frame.to_numpy().ravel())


def test_findings_are_byte_identical_whatever_the_input_order(tmp_path):
    paths = table_runs(tmp_path / "results")

    def render(order, out):
        table = fd.findings_table(gather.load_runs(order))
        written = tables.write_table(table, out / "findings", topics.TOPICS["findings"].formats)
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in written}

    shuffled = list(paths)
    random.Random(0).shuffle(shuffled)
    first = render(paths, tmp_path / "a")
    assert set(first) == {"findings.csv", "findings.md", "findings.html"}
    assert first == render(paths, tmp_path / "b") == render(shuffled, tmp_path / "c")


def test_pair_kinds_from_the_config():
    train = {"type": "ft", "lr": 1e-3, "steps": 4}
    config = {
        "models": {"m": {"source": "x"}}, "tasks": ["a", "b"], "kshot": {"k": [16], "seeds": [13, 21]},
        "finetune": {"methods": {"ft": train | {"save_steps": [2]}, "ft-s2": train | {"model_seed": 1},
                                 "ft-13": train | {"model_seed": 13}, "ft-lr": train | {"lr": 1e-4, "model_seed": 1}}},
        "interpolate": {"pairs": {
            "pre-ft": {"a": {"method": "ft", "pretrained": True}, "b": {"method": "ft"}},
            "ft-pre": {"a": {"method": "ft"}, "b": {"method": "ft", "pretrained": True}},
            "pre-step": {"a": {"method": "ft", "pretrained": True}, "b": {"method": "ft", "step": 2}},
            "s-s": {"a": {"method": "ft"}, "b": {"method": "ft-s2"}},
            "same-seed": {"a": {"method": "ft"}, "b": {"method": "ft-13"}},  # 13 is the default model_seed
            "other-lr": {"a": {"method": "ft"}, "b": {"method": "ft-lr"}},
            "data-seeds": {"a": {"method": "ft", "seed": 13}, "b": {"method": "ft", "seed": 21}},
            "tasks": {"a": {"method": "ft", "task": "a"}, "b": {"method": "ft", "task": "b"}, "tasks": ["a"]},
            "tasks-seeds": {"a": {"method": "ft", "task": "a"}, "b": {"method": "ft", "task": "b", "seed": 21}},
            "tasks-lr": {"a": {"method": "ft", "task": "a"}, "b": {"method": "ft-lr", "task": "b"}},
        }},
    }
    assert interpolate_plan.pair_kinds(config) == {
        "pre-ft": "pretrained-ft", "ft-pre": "pretrained-ft", "pre-step": "other", "s-s": "seed-seed",
        "same-seed": "other", "other-lr": "other", "data-seeds": "data-seed", "tasks": "task-task",
        "tasks-seeds": "other", "tasks-lr": "other"}
    assert interpolate_plan.pair_kinds({}) == {}


# --- the main table (baselines and single-seed standard errors), on metrics alone -----------------

def metrics_only(root: Path, stage: str, **m) -> Path:
    return write(root, stage, None, **m)


def test_main_table_baselines_and_single_seed_standard_error(tmp_path):
    def run(model, task, method, test, seed=13, **m):
        fields = {"n_test": 100, "type": "ft", "head": "prompt"} | ({"test_majority": 0.55} if model == "m1" else {})
        return metrics_only(tmp_path, "finetune", model=model, task=task, seed=seed, method=method, test_metric=test,
                            **(fields | m))

    paths = []
    for task in (HOLD, FAIL):
        paths += [run("m1", task, "ft-prompt", 0.89, 13), run("m1", task, "ft-prompt", 0.91, 21),
                  run("m1", task, "zeroshot", 0.6, type="zeroshot")]
        paths += [metrics_only(tmp_path, "kernel", model="m1", task=task, seed=13, method="kernel", formula="sgd",
                               prompt="prompt", solver="lstsq", test_metric=0.8, n_test=64, test_majority=0.55)]
    paths += [run("m2", HOLD, "llm-ft", 0.8), run("m2", FAIL, "mezo", 0.69, type="mezo")]
    paths += [metrics_only(tmp_path, "kernel", model="m2", task=HOLD, seed=13, method="kernel", formula="sgd",
                           prompt="prompt", solver="lstsq", test_metric=0.7, n_test=64)]
    runs = gather.load_runs(paths)
    summarized = summary.summarize(runs, task_order=[HOLD, FAIL])
    table = tables.main_table(summarized, [HOLD, FAIL], summary.majority_baselines(runs)).frame
    m1 = table[table["model"] == "m1"].set_index("method")
    assert list(m1.index[:2]) == list(tables.BASELINE_ROWS)
    assert m1.loc["majority class"].tolist()[2:] == ["55.0", "55.0"]
    assert m1.loc["test examples", HOLD] == "64/100" and m1.loc["test examples", FAIL] == "64/100"  # kernels: 64
    assert m1.loc["ft-prompt", HOLD] == "90.0 (1.0)"
    m2 = table[table["model"] == "m2"].set_index("method")  # no test_majority: no majority row
    assert list(m2.index[:1]) == ["test examples"] and "majority class" not in m2.index
    assert m2.loc["llm-ft", HOLD] == "80.0 ±4.0" and m2.loc["mezo", FAIL] == "69.0 ±4.6"
    assert m2.loc["kernel sgd/prompt/lstsq", HOLD] == "70.0 ±5.7"  # its n_test is 64
    assert summary.spread_text(0.8, 0.0, 1, summary.single_seed_se([0.8], None, "acc")) == "80.0"  # n_test unknown
    assert math.isnan(summary.single_seed_se([0.8], 100, "f1"))  # binomial: accuracy only
    assert "m2 & 16 & llm-ft & 80.0 $\\pm$4.0" in tables.to_latex(tables.Table("t", table, 3))


@pytest.mark.parametrize("cfg,kinds", [
    ("config.yaml", {"data-seed": "data-seed", "task-task": "task-task"}),
    ("config/findings.yaml", {"pretrained-ft": "pretrained-ft", "seed-seed": "seed-seed", "data-seed": "data-seed",
                              "task-task": "task-task"})])
def test_shipped_configs_plan_the_pair_kinds_their_claims_need(cfg, kinds):
    from lmft.config import load_config

    assert interpolate_plan.pair_kinds(load_config(Path(__file__).parent.parent / cfg)) == kinds
