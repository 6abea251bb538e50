"""The findings table (each paper's claims against the runs) on synthetic metrics.json files, the
interpolate pair kinds of a config, and the main table's baselines and single-seed standard errors.

Fixture: models m1 (two seeds; every claim holds on task t-hold and fails on t-fail) and m2 (one
seed, n_test 100, no test_majority as in runs made before it existed; the cases where a claim
cannot be measured).
"""

import hashlib
import math
import random
from pathlib import Path

import pytest

from lmft import claims, gather, interpolate_plan, summary, tables, topics
from lmft import findings as fd
from lmft.io import write_json

HOLD, FAIL = "t-hold", "t-fail"
KINDS = {"pre-ft": "pretrained-ft", "s-s": "seed-seed", "a-b": "other"}


def write(root: Path, stage: str, **m) -> Path:
    """One metrics.json at a path made of the stage's run keys."""
    m = {"stage": stage, "k": 16, "metric": "acc"} | m
    m.setdefault("dev_metric", m.get("test_metric"))
    path = Path(root, stage, *(str(m[key]) for key in gather.RUN_KEYS[stage]), "metrics.json")
    write_json(m, path)
    return path


def per_seed(model: str, test: float, **extra):
    """m1: seeds 13 and 21 at test -/+ 0.01 (std 1 point); m2: seed 13 at test."""
    if model == "m2":
        return [(13, test, extra)]
    return [(13, test - 0.01, extra), (21, test + 0.01, extra)]


def ft(root, model, task, method, test, kind="ft", head="prompt", mode="all", dev=None, **extra):
    fields = {"test_ece": 0.1, "n_test": 100, "device": "cpu"} | ({"test_majority": 0.55} if model == "m1" else {})
    return [write(root, "finetune", model=model, task=task, seed=seed, method=method, type=kind, head=head, mode=mode,
                  test_metric=t, dev_metric=t if dev is None else dev, **fields, **e)
            for seed, t, e in per_seed(model, test, **extra)]


def kernel(root, model, task, prompt, test, mode="all", formula="sgd", dev=None):
    return [write(root, "kernel", model=model, task=task, seed=seed, method="kernel", formula=formula, prompt=prompt,
                  solver="lstsq", test_metric=t, dev_metric=t if dev is None else dev, n_test=64,
                  kernel={"mode": mode}) for seed, t, _ in per_seed(model, test)]


def graft(root, model, task, sparsity, test, ft_metric, pre, ece, **extra):
    return [write(root, "graft", model=model, task=task, seed=seed, method="ft-prompt", sparsity=sparsity,
                  test_metric=t, ft_test_metric=ft_metric, pre_test_metric=pre, test_ece=ece, **e)
            for seed, t, e in per_seed(model, test, **extra)]


def interp(root, model, task, pair, barrier=None):
    extra = {} if barrier is None else {"test_loss_barrier": barrier, "test_loss_a": 0.7, "test_loss_b": 0.3}
    return [write(root, "interpolate", model=model, task=task, seed=13, method=pair, pair=pair, test_metric=0.8,
                  **extra)]


def gen(root, model, task, method, test, kind, se=0.01):
    """A generation run (stage generation, ROUGE-L the primary score)."""
    return [write(root, "generation", model=model, task=task, seed=seed, method=method, type=kind, metric="rougeL",
                  test_metric=t, test_se=se, n_test=64, test_scores={"rouge1": t + 0.05, "rouge2": t / 4, "rougeL": t},
                  **e) for seed, t, e in per_seed(model, test)]


def all_runs(root: Path) -> list[Path]:
    p = []
    # LM-BFF; lora's test is higher but its dev lower, so ft-prompt is the prompt FT picked
    for task, prompt, zs, cls in ((HOLD, 0.9, 0.6, 0.7), (FAIL, 0.6, 0.7, 0.65)):
        p += ft(root, "m1", task, "ft-prompt", prompt, peak_mem_mb=3000.0)
        p += ft(root, "m1", task, "lora", 0.95, mode="lora:8", dev=0.1)
        p += ft(root, "m1", task, "zeroshot", zs, kind="zeroshot", mode="none", peak_mem_mb=1000.0)
        p += ft(root, "m1", task, "ft-cls", cls, head="cls")
    p += ft(root, "m2", HOLD, "llm-ft", 0.8, head="causal")  # no cls run of m2: m1's is compared
    p += ft(root, "m2", HOLD, "llm-zeroshot", 0.5, kind="zeroshot", head="causal", mode="none")
    p += ft(root, "m2", FAIL, "llm-ft", 0.7, head="causal")  # no zero-shot on t-fail
    # kernel view (mode all = ft-prompt's); m2's kernel differentiates the biases, which no m2 run tuned
    p += kernel(root, "m1", HOLD, "prompt", 0.88) + kernel(root, "m1", HOLD, "noprompt", 0.5)
    p += kernel(root, "m1", HOLD, "prompt", 0.99, formula="asymmetric-signgd", dev=0.2)
    p += kernel(root, "m1", FAIL, "prompt", 0.4) + kernel(root, "m1", FAIL, "noprompt", 0.64)
    p += kernel(root, "m2", HOLD, "prompt", 0.7, mode="bias")
    # MeZO
    p += ft(root, "m1", HOLD, "mezo", 0.8, kind="mezo", peak_mem_mb=1100.0)
    p += ft(root, "m1", FAIL, "mezo", 0.62, kind="mezo", peak_mem_mb=2000.0)
    p += ft(root, "m2", HOLD, "mezo", 0.6, kind="mezo", head="causal", mode="lora:8")  # no memory, no FT of lora:8
    p += ft(root, "m2", FAIL, "mezo", 0.69, kind="mezo", head="causal")
    # grafting: kept 87.5% / 25%; the t-fail grafts carry no ft_test_ece (the finetune run's 0.1 counts)
    p += graft(root, "m1", HOLD, 0.001, 0.6, 0.9, 0.5, 0.05, ft_test_ece=0.1)
    p += graft(root, "m1", HOLD, 0.01, 0.85, 0.9, 0.5, 0.05, ft_test_ece=0.1, ood={FAIL: {"graft": 0.7, "ft": 0.6}})
    p += graft(root, "m1", HOLD, 0.1, 0.2, 0.9, 0.5, 0.5, ft_test_ece=0.1)  # above 1%: not looked at
    p += graft(root, "m1", FAIL, 0.01, 0.6, 0.9, 0.5, 0.2, ood={HOLD: {"graft": 0.5, "ft": 0.6}})
    p += graft(root, "m2", HOLD, 0.1, 0.7, 0.8, 0.5, 0.1)
    p += graft(root, "m2", FAIL, 0.01, 0.7, 0.7, 0.7, 0.1, ft_test_ece=0.1)  # FT gained nothing
    # mode connectivity
    p += interp(root, "m1", HOLD, "pre-ft", 0.01) + interp(root, "m1", HOLD, "s-s", 0.3)
    p += interp(root, "m1", HOLD, "a-b", 0.9)
    p += interp(root, "m1", FAIL, "pre-ft", 0.2) + interp(root, "m1", FAIL, "s-s", 0.0)
    p += interp(root, "m2", HOLD, "s-s")
    # the problem set's generation: on t-hold FT and ICL gain >= 1 point of ROUGE-L, on t-fail ICL loses
    # and FT gains 0.5; m2 has zero-shot and ICL only
    for task, tuned, icl in ((HOLD, 0.20, 0.17), (FAIL, 0.155, 0.12)):
        p += gen(root, "m1", task, "gen-zs", 0.15, "zeroshot") + gen(root, "m1", task, "gen-icl", icl, "icl")
        p += gen(root, "m1", task, "gen-lora", tuned, "ft")
    p += gen(root, "m2", HOLD, "gen-zs", 0.15, "zeroshot") + gen(root, "m2", HOLD, "gen-icl", 0.2, "icl")
    return p


@pytest.fixture
def runs(tmp_path):
    return gather.load_runs(all_runs(tmp_path))


def verdicts(found):
    return {(f.claim, f.model, f.task): f.verdict for f in found}


H, F, N = claims.HOLDS, claims.FAILS, claims.UNMEASURED
EXPECTED = {
    "lmbff": {("m1", HOLD): H, ("m1", FAIL): F, ("m2", HOLD): H, ("m2", FAIL): N},
    "kernel-prompt": {("m1", HOLD): H, ("m1", FAIL): F, ("m2", HOLD): N},
    "kernel-noprompt": {("m1", HOLD): H, ("m1", FAIL): F, ("m2", HOLD): N},
    "mezo-zeroshot": {("m1", HOLD): H, ("m1", FAIL): F, ("m2", HOLD): H, ("m2", FAIL): N},
    "mezo-memory": {("m1", HOLD): H, ("m1", FAIL): F, ("m2", HOLD): N, ("m2", FAIL): N},
    "mezo-ft": {("m1", HOLD): F, ("m1", FAIL): H, ("m2", HOLD): F, ("m2", FAIL): H},
    "graft-kept": {("m1", HOLD): H, ("m1", FAIL): F, ("m2", HOLD): N, ("m2", FAIL): N},
    "graft-ece": {("m1", HOLD): H, ("m1", FAIL): F, ("m2", HOLD): N, ("m2", FAIL): H},
    "graft-ood": {("m1", HOLD): H, ("m1", FAIL): F, ("m2", HOLD): N, ("m2", FAIL): N},
    "modeconn-pretrained": {("m1", HOLD): H, ("m1", FAIL): F},
    "modeconn-seed": {("m1", HOLD): F, ("m1", FAIL): H, ("m2", HOLD): N},
    "gen-ft": {("m1", HOLD): H, ("m1", FAIL): F, ("m2", HOLD): N},
    "gen-icl": {("m1", HOLD): H, ("m1", FAIL): F, ("m2", HOLD): H},
}


def test_every_claim_holds_fails_or_is_not_measured(runs):
    got = verdicts(fd.findings(runs, KINDS))
    assert got == {(c, m, t): v for c, cells in EXPECTED.items() for (m, t), v in cells.items()}


def test_reasons_name_the_numbers_and_the_runs_chosen(runs):
    found = {(f.claim, f.model, f.task): f for f in fd.findings(runs, KINDS)}
    lmbff = found[("lmbff", "m1", HOLD)]
    assert lmbff.reason == "prompt FT 90.0 vs zero-shot 60.0 (+30.0) and no-prompt FT 70.0 (+20.0)"
    assert lmbff.measured.startswith("prompt FT (ft-prompt): 90.0 (1.0), 2 seeds; ")  # best dev, not lora
    single = found[("lmbff", "m2", HOLD)]  # one seed: ± the binomial SE sqrt(.8 .2 / 100) = 4.0
    assert "prompt FT (llm-ft): 80.0 ±4.0, 1 seed" in single.measured and "(ft-cls of m1): 70.0 (1.0)" in single.measured
    assert found[("lmbff", "m2", FAIL)].reason == "no zero-shot run (type zeroshot) of m2"
    assert found[("kernel-prompt", "m1", HOLD)].reason == "FT 90.0 - kernel 88.0 = 2.0 points <= 5"
    assert "it ran with mode all" in found[("kernel-prompt", "m2", HOLD)].reason
    assert found[("kernel-noprompt", "m1", FAIL)].reason == "no-prompt gap 1.0 <= prompt gap 20.0 points (FT - kernel)"
    memory = found[("mezo-memory", "m1", HOLD)].reason
    assert memory.startswith("MeZO 1100 MB / zero-shot 1000 MB = 1.10x <= 1.2; on CPU peak_mem_mb is the peak RSS")
    assert found[("mezo-ft", "m2", HOLD)].reason == ("FT 80.0 - MeZO 60.0 = 20.0 points > 5 (no FT of mode lora:8 "
                                                     "ran: the best FT with head causal, mode all)")
    kept = found[("graft-kept", "m1", HOLD)]
    assert kept.reason == "the graft keeps 87.5% of the fine-tuning gain (FT 90.0, pre-trained 50.0) >= 80%"
    assert kept.measured.startswith("graft (ft-prompt, sparsity 0.01): 85.0 (1.0), 2 seeds")
    assert found[("graft-ece", "m1", FAIL)].reason == "graft ECE 20.0 > FT ECE 10.0 (x100)"
    assert found[("graft-ood", "m1", FAIL)].reason == f"graft < FT somewhere (on {HOLD}: graft 50.0, FT 60.0 (-10.0))"
    assert found[("graft-kept", "m2", HOLD)].reason == "no graft at sparsity <= 0.01 (ran 0.1)"
    assert found[("graft-kept", "m2", FAIL)].reason.startswith("no fine-tuning gain to keep")
    assert found[("modeconn-seed", "m1", HOLD)].measured == (
        "pair s-s: test loss barrier 0.3000, loss at a 0.7000, loss at b 0.3000")
    assert found[("modeconn-seed", "m2", HOLD)].reason == "no test_loss_barrier in the pair's metrics"


def test_claims_without_runs_are_not_measured(tmp_path):
    paths = ft(tmp_path, "m1", HOLD, "zeroshot", 0.6, kind="zeroshot")
    paths += [write(tmp_path, "finetune", model="m1", task=HOLD, k=4, seed=13, method="ft-prompt", type="ft",
                    head="prompt", test_metric=0.7)]
    found = fd.findings(gather.load_runs(paths))
    assert {f.claim for f in found} == {c.key for c in fd.CLAIMS}
    assert all(f.verdict == claims.UNMEASURED and f.model == summary.MISSING for f in found)
    reasons = {f.claim: f.reason for f in found}
    assert reasons["lmbff"] == "no prompt fine-tuning (type ft, head prompt or causal) at k=16; it ran at k=4"
    assert reasons["mezo-memory"] == "no MeZO runs (finetune type mezo)"
    assert reasons["modeconn-seed"].endswith("no pair kinds were given (lmft.interpolate_plan.pair_kinds of the config)")


def test_table_columns_order_and_published_figures(runs):
    table = fd.findings_table(runs, KINDS, task_order=[FAIL, HOLD])
    frame = table.frame
    assert list(frame.columns) == list(fd.COLUMNS)
    assert frame["paper"].drop_duplicates().tolist() == ["LM-BFF", "Kernel view", "MeZO", "Grafting",
                                                         "Mode connectivity", "Few-shot LMs (problem set)"]
    lmbff = frame[frame["paper"] == "LM-BFF"]
    assert list(zip(lmbff["model"], lmbff["task"], lmbff["k"])) == [("m1", FAIL, "16"), ("m1", HOLD, "16"),
                                                                    ("m2", FAIL, "16"), ("m2", HOLD, "16")]
    assert "prompt FT 92.7 (0.9)" in lmbff["published"].iloc[0]
    mezo = frame.loc[frame["threshold"] == "MeZO - zero-shot >= 5 points", "published"].iloc[0]
    assert mezo == "RoBERTa-large SST-2 k=16 (Table 18): zero-shot 79.0, LP 76.0 (2.8), MeZO 90.5 (1.2)"
    assert frame.loc[frame["paper"] == "Mode connectivity", "k"].tolist() == ["16"] * 5
    assert set(frame["verdict"]) == {claims.HOLDS, claims.FAILS, claims.UNMEASURED}
    assert all(isinstance(v, str) and "\n" not in v for v in frame.to_numpy().ravel())


def test_findings_are_byte_identical_whatever_the_input_order(tmp_path):
    paths = all_runs(tmp_path / "results")

    def render(order, out):
        table = fd.findings_table(gather.load_runs(order), KINDS)
        written = tables.write_table(table, out / "findings", topics.table_formats("findings"))
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
        }},
    }
    assert interpolate_plan.pair_kinds(config) == {"pre-ft": "pretrained-ft", "ft-pre": "pretrained-ft", "pre-step": "other",
                                     "s-s": "seed-seed", "same-seed": "other", "other-lr": "other",
                                     "data-seeds": "other", "tasks": "other"}
    assert interpolate_plan.pair_kinds({}) == {}


def test_main_table_baselines_and_single_seed_standard_error(runs):
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
    assert tables.main_table(summarized, [HOLD, FAIL]).frame["method"].tolist()[0] == "zeroshot"  # without baselines
    assert "m2 & 16 & llm-ft & 80.0 $\\pm$4.0 & 70.0 $\\pm$4.6" in tables.to_latex(tables.Table("t", table, 3))
