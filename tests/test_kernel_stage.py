"""lmft.kernels.plan and lmft.kernels.stage: settings, shard layout, memory estimate, shard -> merge -> solve."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tiny import make_tiny_model_dir, tiny_frame

from lmft.data.kshot import cap_rows
from lmft.data.tasks import get_task
from lmft.io import LmftError, write_parquet
from lmft.kernels import compute as kernels
from lmft.kernels import files as kernel_files
from lmft.kernels import jacobians, solvers
from lmft.kernels import plan as kp
from lmft.kernels import stage as ks
from lmft.kernels.formulas import FORMULAS, PROMPTS
from lmft.kernels.sets import load_kernel_set
from lmft.paths import SPLITS
from lmft.schema import SCHEMA

CONFIG = {"models": {"tiny": {"source": "x"}, "other": {"source": "y"}}, "tasks": ["alpha", "three"],
          "user_tasks": {"alpha": {"path": "a.csv", "text_columns": ["text"], "label_column": "label",
                                   "label_words": {"0": "terrible", "1": "great"}},
                         "three": {"path": "b.csv", "text_columns": ["text"], "label_column": "label",
                                   "label_words": {"0": "bad", "1": "okay", "2": "good"}}},
          "kshot": {"k": [4], "seeds": [13, 21]}}


def test_settings_fill_defaults_and_resolve_solvers():
    cfg = kp.settings(CONFIG | {"kernels": {"models": ["tiny"], "solvers": ["lstsq", {"name": "asym", "lam": 0.3},
                                                                            {"name": "logistic-dev", "f0_scaling": 2.0}],
                                            "col_shards": {"test": 3}}})
    assert cfg["models"] == ["tiny"] and cfg["formulas"] == ["sgd"] and cfg["test_cap"] is None
    assert cfg["solvers"] == {"lstsq": {"grid": None, "f0_scaling": None, "lam": 0.5},
                              "asym": {"grid": None, "f0_scaling": None, "lam": 0.3},
                              "logistic-dev": {"grid": None, "f0_scaling": 2.0, "lam": 0.5}}
    assert [kp.col_shards(cfg, s) for s in SPLITS] == [1, 1, 3]
    assert kp.settings(CONFIG)["models"] == ["tiny", "other"]  # no kernels.models: every model
    every = kp.settings(CONFIG | {"kernels": {}})
    assert (every["tasks"], every["k"]) == (["alpha", "three"], [4])
    assert kp.settings(CONFIG | {"kernels": {"tasks": ["three"], "k": [4]}})["tasks"] == ["three"]


@pytest.mark.parametrize("kernels_section, message", [
    ({"solvers": ["ridge"]}, "unknown solver 'ridge'"),
    ({"solvers": ["lstsq", {"name": "lstsq", "grid": [1.0]}]}, "'lstsq' is listed twice"),
    ({"solvers": [{"name": "svm", "f0_scaling": 1.0}]}, "svm: this solver does not use f0"),
    ({"solvers": [{"name": "logistic", "f0_scaling": 1.0}]}, "logistic: this solver does not use f0"),
    ({"solvers": [{"name": "lstsq", "ridge": 1.0}]}, r"unknown option\(s\) \['ridge'\]"),
    ({"models": ["nope"]}, "kernels.models names 'nope'"),
    ({"tasks": ["sst-2"]}, "kernels.tasks names 'sst-2', not one of the config's tasks"),
    ({"k": [64]}, "kernels.k names 64"),
    ({"formulas": ["ntk"]}, "unknown formula 'ntk'"),
    ({"prompt": ["maybe"]}, "unknown setting 'maybe'"),
])
def test_settings_reject_bad_entries(kernels_section, message):
    with pytest.raises(LmftError, match=message):
        kp.settings(CONFIG | {"kernels": kernels_section})


def test_solve_targets_run_asym_only_on_binary_asymmetric_kernels():
    section = {"formulas": ["sgd", "asymmetric-signgd"], "prompt": ["prompt", "noprompt"], "binary": True,
               "models": ["tiny"], "solvers": ["lstsq", "asym"]}
    targets = kp.solve_targets(CONFIG | {"kernels": section})
    asym = [t for t in targets if t.endswith("/asym/metrics.json")]
    # lstsq: 2 tasks x 2 seeds x 2 formulas x 2 prompts; asym: the two-class task's asymmetric kernels only
    assert len(targets) - len(asym) == 16 and len(asym) == 4
    assert all("/alpha/" in t and "/asymmetric-signgd-" in t for t in asym)
    assert "results/kernel_solve/tiny/three/4-21/sgd-noprompt/lstsq/metrics.json" in targets
    assert not [t for t in kp.solve_targets(CONFIG | {"kernels": section | {"binary": False}}) if "/asym/" in t]
    assert len(kp.solve_targets(CONFIG | {"kernels": section | {"tasks": ["three"]}})) == 8


def test_solve_rules_give_each_stacked_solver_a_rule_of_its_own():
    """asym reads both parts of the stacked asymmetric-signgd kernels: its own rule, with the formula in its files."""
    rules = kp.solve_rules(kp.settings(CONFIG | {"kernels": {"solvers": ["lstsq", "asym", "logistic"]}}))
    assert [(r.name, r.formula, r.solvers, r.run) for r in rules] == [
        ("kernel_solve", "{formula}", ["lstsq", "logistic"], "{formula}-{prompt}"),
        ("kernel_solve_asym", "asymmetric-signgd", ["asym"], "asymmetric-signgd-{prompt}-asym")]
    assert [r.name for r in kp.solve_rules(kp.settings(CONFIG | {"kernels": {"solvers": ["asym"]}}))] == [
        "kernel_solve_asym"]


def test_the_plan_resolves_each_shard_jobs_settings():
    """The runner computes with what the plan resolved for its task and split (the shard rule's params)."""
    cfg = kp.settings(CONFIG | {"kernels": {"binary": True, "col_shards": {"test": 3}, "test_cap": 10, "row_batch": 5}})
    alpha, three = get_task("alpha", CONFIG), get_task("three", CONFIG)
    test, dev = kp.shard_settings(cfg, alpha, "test"), kp.shard_settings(cfg, three, "dev")
    assert (test["binary"], test["num_logits"], test["col_shards"], test["test_cap"]) == (True, 1, 3, 10)
    assert (dev["binary"], dev["num_logits"], dev["col_shards"], dev["test_cap"]) == (False, 3, 1, None)
    assert (test["row_batch"], test["head_batch_size"], test["head_max_iter"]) == (5, 16, 5000)
    assert kp.kernel_info(cfg, "noprompt")["head_init"] == "logistic"


def test_the_schema_lists_the_registered_formulas_prompts_and_solvers():
    """The registries (lmft.kernels.formulas, lmft.kernels.solvers) are the one list of what exists; the schema names them to validate."""
    kernels_schema = yaml.safe_load(SCHEMA.read_text())["properties"]["kernels"]["properties"]
    assert kernels_schema["formulas"]["items"]["enum"] == list(FORMULAS)
    assert kernels_schema["prompt"]["items"]["enum"] == list(PROMPTS)
    by_name, entry = kernels_schema["solvers"]["items"]["oneOf"]
    assert by_name["enum"] == entry["properties"]["name"]["enum"] == list(solvers.SOLVERS)
    assert [f for f, formula in FORMULAS.items() if formula.stacked] == ["asymmetric-signgd"]
    assert FORMULAS["asymmetric-signgd"].lead == (2,) and FORMULAS["sgd"].lead == ()


def test_shard_ranges_tile_the_examples_and_bad_layouts_raise():
    assert [ks.shard_range(10, 3, i, "rows") for i in range(3)] == [(0, 3), (3, 7), (7, 10)]
    with pytest.raises(LmftError, match="rows: 4 shards but only 3 examples"):
        ks.shard_range(3, 4, 0, "rows")
    with pytest.raises(LmftError, match=r"shard 2 does not exist \(0..1\)"):
        ks.shard_range(5, 2, 2, "rows")


def test_memory_estimate_grows_with_parameters_logits_and_batches(tmp_path):
    base = kp.shard_mem_mb(22_000_000, 11_000_000, 2, 8, 8)
    # 4 bytes per parameter for the weights and per trainable parameter and logit for (8 + 8 + 1) Jacobians
    assert base == int(1500 + 4 * 22e6 / 2**20 + 4 * 11e6 / 2**20 * 2 * 17)
    assert kp.shard_mem_mb(22_000_000, 11_000_000, 1, 8, 8) < base < kp.shard_mem_mb(22_000_000, 11_000_000, 2, 16, 8)
    manifest = {"n_params": 23_000_000, "vocab_size": 30_000, "hidden_size": 300, "num_layers": 6}
    assert kp.trainable_estimate(manifest, "all", False) == 23_000_000
    assert kp.trainable_estimate(manifest, "all", True) == 14_000_000
    assert kp.trainable_estimate(manifest, "last:3", True) == 7_000_000
    assert kp.trainable_estimate(manifest, "bias", False) == 230_000
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    task = get_task("three", CONFIG)
    cfg = kp.settings(CONFIG | {"kernels": {"mode": "last:3", "freeze_embeddings": True}})
    assert kp.shard_mem_mb_for(tmp_path / "model.json", task, cfg) == kp.shard_mem_mb(23_000_000, 7_000_000, 3, 8, 8)
    budget = kp.settings(CONFIG | {"kernels": {"mode": "last:3", "freeze_embeddings": True, "mem_mb": 1800.5}})
    assert kp.shard_mem_mb_for(tmp_path / "model.json", task, budget) == 1801  # a budget caps the estimate
    with pytest.raises(FileNotFoundError):  # what Snakemake reads as "known once the model is prepared"
        kp.shard_mem_mb_for(tmp_path / "missing.json", task, cfg)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny BERT with an MLM head and k-shot tables of the two-class task ``alpha``."""
    tmp = tmp_path_factory.mktemp("stage")
    model_json = make_tiny_model_dir(tmp)
    frames = {"train": tiny_frame(8), "dev": tiny_frame(6), "test": tiny_frame(12)}
    paths = {s: tmp / f"{s}.parquet" for s in frames}
    for s, df in frames.items():
        write_parquet(df, paths[s])
    return tmp, model_json, paths, get_task("alpha", CONFIG)


def test_heads_and_splits_follow_the_prompt_setting(tiny):
    _, model_json, paths, task = tiny
    assert ks.head_for("prompt", model_json) == "prompt" and ks.head_for("noprompt", model_json) == "cls"
    with pytest.raises(LmftError, match="unknown prompt setting"):
        ks.head_for("none", model_json)
    clf, tok = ks.build_model(model_json, task, "noprompt", seed=13, mode="bias")
    assert clf.head == "cls" and all(p.requires_grad == (n.endswith(".bias") or n.startswith("linear."))
                                      for n, p in clf.named_parameters())  # the new cls head trains in every mode
    batch = ks.load_split(paths["test"], task, clf, tok, cap=5)
    assert batch["input_ids"].shape[0] == 5 and torch.equal(batch["mask_pos"], torch.zeros(5, dtype=torch.long))
    labels = [int(v) for v in tiny_frame(12)["label"].iloc[cap_rows(12, 5)]]
    assert batch["labels"].tolist() == labels  # the fine-tuning stage's eval_cap subset
    clf, tok = ks.build_model(model_json, task, "prompt", seed=13)
    prompt_batch = ks.load_split(paths["test"], task, clf, tok, cap=5)
    assert (prompt_batch["mask_pos"] > 0).all()  # the template's mask token


def test_shards_merge_to_the_whole_kernel_and_solve_writes_metrics(tiny):
    tmp, model_json, paths, task = tiny
    cfg = kp.settings(CONFIG | {"kernels": {"formulas": ["sgd", "asymmetric-signgd"], "binary": True, "row_shards": 2,
                                            "col_shards": {"test": 2}, "row_batch": 3, "col_batch": 2, "test_cap": 10,
                                            "solvers": ["lstsq", "asym"]}})
    files = {}
    for split in SPLITS:
        grid = [(r, c) for r in range(2) for c in range(kp.col_shards(cfg, split))]
        for r, c in grid:
            d = tmp / f"shards/{split}/{r}-{c}"
            ks.run_shard(model_json, task, paths["train"], paths[split], {f: d / f"{f}.pt" for f in cfg["formulas"]},
                         d / "f0.pt", split=split, prompt="prompt", seed=13, row=r, col=c,
                         cfg=kp.shard_settings(cfg, task, split))
        out = {f: tmp / f"{f}-prompt/{split}.pt" for f in cfg["formulas"]}
        ks.merge({f: [tmp / f"shards/{split}/{r}-{c}/{f}.pt" for r, c in grid] for f in cfg["formulas"]},
                 [tmp / f"shards/{split}/0-{c}/f0.pt" for c in range(kp.col_shards(cfg, split))], out,
                 tmp / f"f0-prompt/{split}.pt")
        files[split] = out

    clf, tok = ks.build_model(model_json, task, "prompt", seed=13)
    rows = ks.load_split(paths["train"], task, clf, tok)
    cols = ks.load_split(paths["test"], task, clf, tok, cap=10)
    whole, whole_f0 = kernels.compute_shards_and_logits(clf, rows, cols, cfg["formulas"], binary=True)
    for formula in cfg["formulas"]:
        kernel, labels = kernel_files.load_kernel(files["test"][formula])
        assert torch.equal(kernel, whole[formula].kernel) and torch.equal(labels, cols["labels"])
    f0, _ = kernel_files.load_logits(tmp / "f0-prompt/test.pt")
    assert torch.equal(f0, whole_f0)  # the tiles' forward passes: the same bits from any column shard
    torch.testing.assert_close(f0, jacobians.logits(clf, cols, binary=True), rtol=1e-5, atol=1e-6)

    info = kp.kernel_info(cfg, "prompt")
    outs = {s: tmp / f"solve/{s}/metrics.json" for s in ("lstsq", "asym")}
    results = ks.solve({s: files[s]["asymmetric-signgd"] for s in SPLITS}, None, outs, cfg["solvers"], task=task,
                       model="tiny", k=4, seed=13, formula="asymmetric-signgd", prompt="prompt", kernel_info=info,
                       test_split=paths["test"])
    for solver, metrics in results.items():
        assert json.loads(outs[solver].read_text()) == json.loads(json.dumps(metrics))
        assert (metrics["stage"], metrics["method"], metrics["solver"], metrics["num_logits"]) == \
            ("kernel", "kernel", solver, 1)
        assert (metrics["n_train"], metrics["n_dev"], metrics["n_test"]) == (8, 6, 10)
        assert metrics["kernel"] == info
    assert info == {"source": "computed", "mode": "all", "freeze_embeddings": False, "binary": True, "test_cap": 10,
                    "head_init": "pretrained"}

    # every solver leaves its per-example test predictions beside its metrics: the k-shot test rows of the cap
    plain = kp.settings(CONFIG | {"kernels": {"solvers": ["lstsq", "logistic", "logistic-dev", "svm"]}})["solvers"]
    outs_sgd = {s: tmp / f"solve-sgd/{s}/metrics.json" for s in plain}
    results |= ks.solve({s: files[s]["sgd"] for s in SPLITS}, None, outs_sgd, plain, task=task, model="tiny", k=4,
                        seed=13, formula="sgd", prompt="prompt", kernel_info=info, test_split=paths["test"])
    sets = {f: {s: load_kernel_set(files[s][f], None, f) for s in SPLITS} for f in cfg["formulas"]}
    for solver, out in {**outs, **outs_sgd}.items():
        preds = pd.read_parquet(out.with_name("predictions.parquet"))
        assert list(preds.columns) == ["index", "label", "pred", "probs"]
        assert [str(t) for t in preds.dtypes.iloc[:3]] == ["int64", "int64", "int64"]
        assert preds["index"].tolist() == cap_rows(12, 10) and preds["label"].tolist() == cols["labels"].tolist()
        k = sets["asymmetric-signgd" if solver == "asym" else "sgd"]
        sol = solvers.solve(solver, k["train"], k["dev"], k["test"], **({"lam": 0.5} if solver == "asym" else {}))
        probs = torch.tensor(np.stack(preds["probs"].to_numpy()))
        torch.testing.assert_close(probs, sol.test_logits.softmax(1), rtol=1e-12, atol=1e-12)
        assert preds["pred"].tolist() == sol.test_logits.argmax(1).tolist()
        assert (preds["pred"] == preds["label"]).mean() == pytest.approx(results[solver]["test_metric"])
    with pytest.raises(LmftError, match=r"dev.parquet: the labels of its 6 test rows \(test_cap 10\) are not the kernel"):
        ks.solve({s: files[s]["sgd"] for s in SPLITS}, None, {"svm": tmp / "x/metrics.json"}, plain, task=task,
                 model="tiny", k=4, seed=13, formula="sgd", prompt="prompt", kernel_info=info, test_split=paths["dev"])
    # a published kernel (no k-shot table): its column positions
    ks.solve({s: files[s]["sgd"] for s in SPLITS}, None, {"svm": tmp / "pub/metrics.json"}, plain, task=task,
             model="tiny", k=4, seed=13, formula="sgd", prompt="prompt", kernel_info={"source": "published"})
    assert pd.read_parquet(tmp / "pub/predictions.parquet")["index"].tolist() == list(range(10))

    f0_files = {s: tmp / f"f0-prompt/{s}.pt" for s in SPLITS}
    specs = {"lstsq": {"grid": [0.0], "f0_scaling": 1.0, "lam": 0.5}}
    with pytest.raises(LmftError, match="solver lstsq has f0_scaling 1.0 but no f0 files"):
        ks.solve({s: files[s]["sgd"] for s in SPLITS}, None, {"lstsq": tmp / "x/metrics.json"}, specs, task=task,
                 model="tiny", k=4, seed=13, formula="sgd", prompt="prompt", kernel_info=info, test_split=paths["test"])
    with pytest.raises(LmftError, match="needs the k-shot test table"):
        ks.solve({s: files[s]["sgd"] for s in SPLITS}, f0_files, {"lstsq": tmp / "x/metrics.json"}, specs, task=task,
                 model="tiny", k=4, seed=13, formula="sgd", prompt="prompt", kernel_info=info)
    adjusted = ks.solve({s: files[s]["sgd"] for s in SPLITS}, f0_files, {"lstsq": tmp / "x/metrics.json"}, specs,
                        task=task, model="tiny", k=4, seed=13, formula="sgd", prompt="prompt", kernel_info=info,
                        test_split=paths["test"])
    # r = 0 interpolates the training labels exactly, with or without the f0 offset
    train = load_kernel_set(files["train"]["sgd"], f0_files["train"])
    assert adjusted["lstsq"]["f0_scaling"] == 1.0 and adjusted["lstsq"]["grid"] == [0.0]
    sol = solvers.solve("lstsq", train, train, train, grid=[0.0], f0_scaling=1.0)
    assert torch.equal(sol.dev_logits.argmax(1), train.labels)


def test_merge_refuses_shards_of_another_formula(tiny, tmp_path):
    _, model_json, paths, task = tiny
    cfg = kp.settings(CONFIG | {"kernels": {"formulas": ["sgd", "signgd"]}})
    ks.run_shard(model_json, task, paths["train"], paths["dev"], {f: tmp_path / f"{f}.pt" for f in cfg["formulas"]},
                 tmp_path / "f0.pt", split="dev", prompt="noprompt", seed=13, row=0, col=0,
                 cfg=kp.shard_settings(cfg, task, "dev"))
    with pytest.raises(LmftError, match="a shard of another formula than sgd"):
        ks.merge({"sgd": [tmp_path / "signgd.pt"]}, [tmp_path / "f0.pt"], {"sgd": tmp_path / "k.pt"}, tmp_path / "f.pt")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_noprompt_kernels_start_from_the_logistic_regression_head(tiny, tmp_path):
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    _, model_json, paths, task = tiny
    cfg = kp.settings(CONFIG | {"kernels": {"binary": True, "row_shards": 2, "col_shards": 2, "row_batch": 3}})
    grid = [(r, c) for r in range(2) for c in range(2)]
    for r, c in grid:
        d = tmp_path / f"{r}-{c}"
        ks.run_shard(model_json, task, paths["train"], paths["test"], {"sgd": d / "sgd.pt"}, d / "f0.pt", split="test",
                     prompt="noprompt", seed=13, row=r, col=c, cfg=kp.shard_settings(cfg, task, "test"))
    ks.merge({"sgd": [tmp_path / f"{r}-{c}/sgd.pt" for r, c in grid]}, [tmp_path / f"0-{c}/f0.pt" for c in range(2)],
             {"sgd": tmp_path / "sgd.pt"}, tmp_path / "f0.pt")

    # by hand: the [CLS] features of the 8 training examples, C by the paper's CV (4 folds: 4 per class), then LR;
    # the binary fit at 2C is the paper's multinomial one at C, written at half its log-odds (fit_paper_head)
    clf, tok = ks.build_model(model_json, task, "noprompt", seed=13)
    rows, cols = ks.load_split(paths["train"], task, clf, tok), ks.load_split(paths["test"], task, clf, tok)
    with torch.no_grad():
        feats, test_feats = (clf.features(b["input_ids"], b["attention_mask"], b["token_type_ids"]).double().numpy()
                             for b in (rows, cols))
    y = rows["labels"].numpy()
    cv = LogisticRegressionCV(Cs=[2 * c for c in solvers.GRIDS["logistic"]], cv=StratifiedKFold(4),
                              scoring="accuracy", max_iter=5000, random_state=0).fit(feats, y)
    lr = LogisticRegression(C=float(np.ravel(cv.C_)[0]), max_iter=5000).fit(feats, y)
    assert ks.fit_head(clf, rows, cfg["head_batch_size"], cfg["head_max_iter"]) == float(np.ravel(cv.C_)[0]) / 2
    # relative tolerances only: on these 8 examples the CV ties and keeps the smallest C, so the head is small
    w, b = torch.from_numpy(lr.coef_[0]).float(), torch.from_numpy(lr.intercept_).float()
    torch.testing.assert_close(clf.linear.weight.data, torch.stack([-w / 4, w / 4]), rtol=1e-6, atol=0)
    torch.testing.assert_close(clf.linear.bias.data, torch.cat([-b / 4, b / 4]), rtol=1e-6, atol=0)

    # f0 is the head's logit difference, no longer a random head's: half the regression's log-odds
    f0, _ = kernel_files.load_logits(tmp_path / "f0.pt")
    expected = torch.from_numpy(lr.decision_function(test_feats)) / 2
    torch.testing.assert_close(f0[:, 0], expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    train_f0 = jacobians.logits(clf, rows, binary=True)[:, 0]
    assert torch.equal((train_f0 > 0).long(), torch.from_numpy(lr.predict(feats))) and lr.score(feats, y) > 0.5
    # every shard job fit the same head: the 2x2 shards are the kernel of one pass of this model, bit for bit
    kernel, _ = kernel_files.load_kernel(tmp_path / "sgd.pt")
    assert torch.equal(kernel, kernels.compute_shards(clf, rows, cols, ["sgd"], binary=True)["sgd"].kernel)


def multinomial_fit(x, y, C, classes):
    """scikit-learn's multinomial objective, C * sum of cross-entropies + ||W||^2 / 2 (intercepts free), minimised
    directly: the reference for the paper's ``LogisticRegressionCV(multi_class="multinomial")`` fit."""
    from scipy.optimize import minimize

    n, h = x.shape

    def objective(p):
        w, b = p[:classes * h].reshape(classes, h), p[classes * h:]
        z = x @ w.T + b
        logp = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
        g = np.exp(logp)
        g[np.arange(n), y] -= 1
        return (-C * logp[np.arange(n), y].sum() + 0.5 * (w * w).sum(),
                np.concatenate([(C * g.T @ x + w).ravel(), C * g.sum(0)]))

    p = minimize(objective, np.zeros(classes * (h + 1)), jac=True, method="L-BFGS-B",
                 options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 20000}).x
    return p[:classes * h].reshape(classes, h), p[classes * h:]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_paper_head_is_the_multinomial_fit_at_half_its_log_odds(tiny):
    """LM-Kernel-FT's linearhead_trainer.py: multinomial LogisticRegressionCV, two classes written [-coef/2, coef/2]."""
    from sklearn.linear_model import LogisticRegression

    _, model_json, _, task = tiny
    clf, _ = ks.build_model(model_json, task, "noprompt", seed=13)
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(40, clf.linear.in_features, generator=gen, dtype=torch.float64)
    labels = (feats[:, 0] + 0.8 * torch.randn(40, generator=gen, dtype=torch.float64) > 0).long()  # not separable
    c = ks.fit_paper_head(clf, feats, labels, 5000)
    assert c in ks.HEAD_CS
    # the fitted rows are [-u, u] (the penalty splits the difference evenly); the paper writes coef_ = u halved
    w, b = multinomial_fit(feats.numpy(), labels.numpy(), c, 2)
    u, bu = torch.from_numpy(w[1] - w[0]) / 2, torch.tensor((b[1] - b[0]) / 2)
    head_w, head_b = clf.linear.weight.double(), clf.linear.bias.double()
    tol = 1e-3 * float(u.abs().max())  # scikit-learn's lbfgs stops at tol=1e-4; halving or doubling is far off
    torch.testing.assert_close(head_w, torch.stack([-u / 2, u / 2]), rtol=0, atol=tol)
    torch.testing.assert_close(head_b, torch.stack([-bu / 2, bu / 2]), rtol=0, atol=tol)
    # so the head's logit difference is half the log-odds of the binary regression at 2C (scikit-learn)
    lr = LogisticRegression(C=2 * c, max_iter=5000).fit(feats.numpy(), labels.numpy())
    diff = clf.linear(feats.float()).double() @ torch.tensor([-1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(diff, torch.from_numpy(lr.decision_function(feats.numpy())) / 2, rtol=1e-5, atol=1e-5)

    # three classes: the multinomial fit's rows as they are
    three = get_task("three", CONFIG)
    clf3, _ = ks.build_model(model_json, three, "noprompt", seed=13)
    noise = 0.8 * torch.randn(40, generator=gen, dtype=torch.float64)
    labels3 = torch.bucketize(feats[:, 0] + noise, torch.tensor([-0.4, 0.4], dtype=torch.float64))
    c3 = ks.fit_paper_head(clf3, feats, labels3, 5000)
    w3, b3 = multinomial_fit(feats.numpy(), labels3.numpy(), c3, 3)
    tol3 = 2e-3 * float(max(np.abs(w3).max(), np.abs(b3).max()))
    torch.testing.assert_close(clf3.linear.weight.double(), torch.from_numpy(w3), rtol=0, atol=tol3)
    # intercepts are unpenalised, so only their differences are determined
    torch.testing.assert_close(clf3.linear.bias.double() - clf3.linear.bias.double().mean(),
                               torch.from_numpy(b3 - b3.mean()), rtol=0, atol=tol3)
