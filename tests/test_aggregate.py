"""The aggregate stage's library on synthetic metrics.json files: gathering, trial selection,
mean (std) over seeds, rendering, plots, determinism and bad inputs."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmft.aggregate import gather, plots, summary, tables, topics
from lmft.aggregate import stage as aggregate
from lmft.io import ArtifactError, LmftError, write_json, write_parquet

MODEL = "tiny"


def finetune(root, task, seed, method, test, dev=None, trial=None, kind="ft", head="prompt", metric="acc"):
    d = {"stage": "finetune", "task": task, "k": 16, "seed": seed, "model": MODEL, "method": method, "type": kind,
         "head": head, "mode": "prompt", "metric": metric, "dev_metric": test if dev is None else dev,
         "test_metric": test, "test_ece": 0.1, "wall_time_s": 1.0, "peak_mem_mb": 10.0, "notes": ["a", "b"]}
    name = method if trial is None else f"{method}/trial-{trial}"
    if trial is not None:
        d["trial"] = trial
    path = Path(root, "finetune", MODEL, task, f"16-{seed}", name, "metrics.json")
    write_json(d, path)
    return path


def kernel(root, task, seed, test, formula="sgd", prompt="prompt", solver="lstsq"):
    d = {"stage": "kernel", "task": task, "k": 16, "seed": seed, "model": MODEL, "method": "kernel",
         "formula": formula, "prompt": prompt, "solver": solver, "metric": "acc", "dev_metric": test,
         "test_metric": test, "test_ece": 0.2, "reg": 0.001}
    path = Path(root, "kernel_solve", MODEL, task, f"16-{seed}", f"{formula}-{prompt}", solver, "metrics.json")
    write_json(d, path)
    return path


def graft(root, task, seed, sparsity, test, ece):
    d = {"stage": "graft", "task": task, "k": 16, "seed": seed, "model": MODEL, "method": "ft-prompt",
         "sparsity": sparsity, "metric": "acc", "dev_metric": test, "test_metric": test, "test_ece": ece,
         "kept_fraction": test / 0.9, "ft_test_metric": 0.9, "ft_test_ece": 0.05,
         "ood": {"beta": {"graft": test - 0.1, "ft": 0.7}}, "relax_history": [{"loss": 1.0}]}
    path = Path(root, "graft", MODEL, task, f"16-{seed}", "ft-prompt", f"sparsity-{sparsity}", "metrics.json")
    write_json(d, path)
    return path


def interpolate(root, task, pair):
    d = {"stage": "interpolate", "task": task, "model": MODEL, "method": "ft-prompt", "pair": pair, "metric": "acc",
         "l2": 1.23456, "cosine": 0.5, "dev_loss_barrier": 0.25, "dev_metric_barrier": 0.125,
         "test_loss_barrier": 0.5, "test_metric_barrier": 0.0625, "test_metric": 0.8, "dev_metric": 0.8}
    path = Path(root, "interpolate", MODEL, task, pair, "metrics.json")
    write_json(d, path)
    alphas = np.linspace(0, 1, 5)
    curve = pd.DataFrame({"alpha": np.tile(alphas, 2), "split": ["dev"] * 5 + ["test"] * 5,
                          "loss": np.tile(0.5 + alphas * (1 - alphas), 2),
                          "metric": np.tile(0.9 - 0.2 * alphas * (1 - alphas), 2)})
    write_parquet(curve, path.parent / "curve.parquet")
    return path


def all_runs(root):
    """Two tasks x two seeds; ft-prompt on alpha ran a 2-trial grid (hand-computed below)."""
    paths = []
    for task in ("beta", "alpha"):
        for seed, zs in ((13, 0.5), (21, 0.6)):
            paths.append(finetune(root, task, seed, "zeroshot", zs, kind="zeroshot"))
            paths.append(finetune(root, task, seed, "ft-cls", zs + 0.2, head="cls"))
            paths.append(kernel(root, task, seed, zs + 0.25))
            paths.append(kernel(root, task, seed, zs + 0.1, prompt="noprompt", solver="logistic"))
    # alpha, seed 13: trial 1 has the best dev (test 0.90); seed 21: trial 0 (test 0.70) -> 80.0 (10.0)
    paths.append(finetune(root, "alpha", 13, "ft-prompt", 0.80, dev=0.7, trial=0))
    paths.append(finetune(root, "alpha", 13, "ft-prompt", 0.90, dev=0.9, trial=1))
    paths.append(finetune(root, "alpha", 21, "ft-prompt", 0.70, dev=0.8, trial=0))
    paths.append(finetune(root, "alpha", 21, "ft-prompt", 0.95, dev=0.6, trial=1))
    paths.append(finetune(root, "beta", 13, "ft-prompt", 0.85))
    paths.append(finetune(root, "beta", 21, "ft-prompt", 0.85))
    for seed in (13, 21):
        for s, t in ((0.001, 0.6), (0.01, 0.8)):
            paths.append(graft(root, "alpha", seed, s, t + (0.02 if seed == 21 else 0.0), ece=0.1))
    return paths, [interpolate(root, "alpha", "seed13-seed21")]


@pytest.fixture
def runs(tmp_path):
    paths, interp = all_runs(tmp_path)
    return gather.load_runs(paths + interp)


def test_load_runs_one_row_per_file_and_union_of_columns(runs):
    assert len(runs) == 2 * 2 * 4 + 6 + 4 + 1
    assert list(runs.columns[:3]) == ["stage", "model", "task"] and runs.columns[-1] == "path"
    assert {"reg", "ood.beta.graft", "cosine", "trial", "relax_history"} <= set(runs.columns)
    assert runs["stage"].tolist() == sorted(runs["stage"], key=topics.STAGES.index)
    assert runs.loc[runs["stage"] == "finetune", "notes"].iloc[0] == '["a", "b"]'
    assert runs.loc[runs["stage"] == "interpolate", "k"].isna().all()


def test_best_dev_trial_per_seed(runs):
    ft = runs[(runs["method"] == "ft-prompt") & (runs["task"] == "alpha") & (runs["stage"] == "finetune")]
    chosen = ft[ft["selected"]].set_index("seed")["trial"].to_dict()
    assert chosen == {13: 1, 21: 0}
    assert runs.loc[runs["stage"] != "finetune", "selected"].all()


def test_summary_mean_and_population_std(runs):
    s = summary.summarize(runs, task_order=["beta", "alpha"]).set_index(["task", "method"])
    row = s.loc[("alpha", "ft-prompt")]
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.80) and row["std"] == pytest.approx(0.10)
    assert s.loc[("beta", "zeroshot"), "std"] == pytest.approx(np.std([0.5, 0.6]))


def test_main_table_cells_rows_and_columns(runs):
    table = tables.main_table(summary.summarize(runs, {"ft-prompt": "FT (prompt)"}, ["beta", "alpha"]), ["beta", "alpha"])
    f = table.frame.set_index("method")
    assert list(table.frame.columns) == ["model", "k", "method", "beta", "alpha"]
    assert list(f.index) == ["zeroshot", "ft-cls", "FT (prompt)", "kernel sgd/prompt/lstsq",
                             "kernel sgd/noprompt/logistic"]
    assert f.loc["FT (prompt)", "alpha"] == "80.0 (10.0)"
    assert f.loc["zeroshot", "beta"] == "55.0 (5.0)"
    assert f.loc["kernel sgd/prompt/lstsq", "alpha"] == "80.0 (5.0)"
    with pytest.raises(LmftError, match="both display as 'FT'"):
        summary.summarize(runs, {"ft-prompt": "FT", "ft-cls": "FT"})


def test_markdown_and_latex_render(runs):
    table = tables.main_table(summary.summarize(runs))
    md = tables.to_markdown(table).splitlines()
    assert md[0] == "| model | k | method | alpha | beta |"
    assert md[1] == "| :-- | :-- | :-- | --: | --: |"
    assert "| tiny | 16 | ft-prompt | 80.0 (10.0) | 85.0 (0.0) |" in md
    tex = tables.to_latex(table)
    assert "\\begin{tabular}{lllrr}" in tex and "\\toprule" in tex and tex.endswith("\\end{tabular}\n")
    assert "tiny & 16 & ft-prompt & 80.0 (10.0) & 85.0 (0.0) \\\\" in tex
    assert tables.latex_escape("a_b & 5% #1") == "a\\_b \\& 5\\% \\#1"
    html = tables.to_html(table)
    assert "<td>80.0 (10.0)</td>" in html and html.count("<tr>") == 1 + len(table.frame)


def test_kernel_pairs_match_heads(runs):
    pairs = summary.kernel_pairs(runs)
    assert set(zip(pairs["kernel"], pairs["ft"])) == {("kernel sgd/prompt/lstsq", "ft-prompt"),
                                                      ("kernel sgd/noprompt/logistic", "ft-cls")}
    table = tables.kernel_table(pairs).frame.set_index(["task", "kernel"])
    row = table.loc[("alpha", "kernel sgd/prompt/lstsq")]
    assert row["kernel metric"] == "80.0 (5.0)" and row["fine-tuning metric"] == "80.0 (10.0)"
    assert row["gap"] == "0.0" and row["seeds"] == "2"
    assert table.loc[("beta", "kernel sgd/noprompt/logistic"), "gap"] == "-10.0"


def test_graft_and_interpolate_tables(runs):
    g = tables.graft_table(runs).frame.set_index("sparsity")
    assert list(g.index) == ["0.001", "0.01"]
    assert g.loc["0.01", "test"] == "81.0 (1.0)" and g.loc["0.01", "test ECE"] == "10.0 (0.0)"
    assert g.loc["0.001", "OOD beta graft"] == "51.0 (1.0)" and g.loc["0.01", "FT test"] == "90.0 (0.0)"
    t = tables.interpolate_table(runs).frame
    assert list(t.columns) == ["model", "task", "pair", "dev loss barrier", "dev metric barrier",
                               "test loss barrier", "test metric barrier", "L2 distance", "cosine"]
    assert t.iloc[0].tolist() == [MODEL, "alpha", "seed13-seed21", "0.2500", "12.5", "0.5000", "6.2", "1.2346",
                                  "0.5000"]


def test_aggregate_writes_deterministic_outputs(tmp_path):
    paths, interp = all_runs(tmp_path / "results")
    curves = [p.parent / "curve.parquet" for p in interp]

    def run(out):
        written = aggregate.aggregate(paths + interp, curves, out / "runs.parquet", out / "tables", out / "plots",
                                topics.TOPICS, task_order=["alpha", "beta"])
        expected = set(topics.output_files(out / "tables", out / "plots", topics.TOPICS).values())
        assert {str(p) for p in written} == expected | {str(out / "runs.parquet")}
        return {p.relative_to(out): hashlib.sha256(p.read_bytes()).hexdigest() for p in written}

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    assert first == second
    for name in ("accuracy_vs_k", "kernel_vs_ft", "graft_sparsity", "interpolate_curves"):
        png = tmp_path / "a" / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        pdf = (tmp_path / "a" / "plots" / f"{name}.pdf").read_bytes()
        assert pdf[:5] == b"%PDF-" and b"CreationDate" not in pdf  # no timestamp: reruns give the same bytes


def test_plots_handle_several_k_and_empty_inputs(tmp_path):
    summarized = pd.DataFrame({"model": MODEL, "task": "alpha", "k": [4, 16, 4, 16], "method": ["a", "a", "b", "b"],
                            "type": "ft", "metric": "acc", "n": 2, "mean": [0.5, 0.7, 0.6, 0.8], "std": 0.01})
    fig = plots.accuracy_vs_k(summarized)
    assert fig.axes[0].get_xscale() == "log" and len(fig.axes[0].lines) >= 2
    (png, _) = plots.save(fig, tmp_path / "lines")
    assert png.stat().st_size > 5000
    (empty, _) = plots.save(plots.kernel_vs_ft(summary.kernel_pairs(pd.DataFrame(
        {"stage": ["finetune"], "selected": [True]}))), tmp_path / "empty")
    assert empty.read_bytes()[:4] == b"\x89PNG"


def test_missing_or_corrupt_metrics_name_the_file(tmp_path):
    good = finetune(tmp_path, "alpha", 13, "zeroshot", 0.5)
    missing = tmp_path / "nope" / "metrics.json"
    with pytest.raises(ArtifactError, match=str(missing)):
        gather.load_runs([good, missing])
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"stage": "finetune", ')
    with pytest.raises(ArtifactError, match=f"{corrupt}.*not valid JSON"):
        gather.load_runs([good, corrupt])
    incomplete = tmp_path / "incomplete.json"
    write_json({"stage": "kernel", "model": MODEL, "task": "alpha", "k": 16, "seed": 13}, incomplete)
    with pytest.raises(ArtifactError, match=f"{incomplete}.*formula"):
        gather.load_runs([incomplete])
    bad_stage = tmp_path / "stage.json"
    write_json({"stage": "kernels"}, bad_stage)
    with pytest.raises(ArtifactError, match=f"{bad_stage}.*'kernels'"):
        gather.load_runs([bad_stage])
    bad_value = tmp_path / "value.json"
    write_json(json.loads(good.read_text()) | {"k": "16"}, bad_value)
    with pytest.raises(ArtifactError, match=f"{bad_value}.*'k'"):
        gather.load_runs([bad_value])


def test_duplicate_runs_and_grid_without_dev_are_errors(tmp_path):
    a = finetune(tmp_path / "a", "alpha", 13, "ft", 0.5)
    b = finetune(tmp_path / "b", "alpha", 13, "ft", 0.6)
    with pytest.raises(LmftError, match="same run and trial"):
        gather.load_runs([a, b])
    t0 = finetune(tmp_path, "alpha", 13, "ft", 0.5, trial=0)
    t1 = finetune(tmp_path, "alpha", 13, "ft", 0.6, trial=1)
    write_json({k: v for k, v in json.loads(t1.read_text()).items() if k != "dev_metric"}, t1)
    with pytest.raises(ArtifactError, match=f"{t1}.*dev_metric"):
        gather.load_runs([t0, t1])
    with pytest.raises(LmftError, match="no metrics.json"):
        gather.load_runs([])


def test_topics_follow_registered_stages(tmp_path):
    assert topics.topics_for(["finetune"]) == ["main", "findings"]
    assert topics.topics_for(["finetune"], zo=True) == ["main", "zo", "findings"]
    assert topics.topics_for(["interpolate", "kernel", "finetune"]) == ["main", "kernel", "interpolate", "findings"]
    with pytest.raises(LmftError, match="kernels"):
        topics.topics_for(["kernels"])
    files = topics.output_files("t", "p", ["graft"])
    assert files["graft_md"] == "t/graft.md" and files["graft_plot_png"] == "p/graft_sparsity.png"
    assert topics.output_files("t", "p", ["findings"]) == {f"findings_{f}": f"t/findings.{f}" for f in ("csv", "md", "html")}


def test_every_topic_has_a_builder():
    from lmft.aggregate.stage import BUILD

    assert list(BUILD) == list(topics.TOPICS)


def test_every_topic_has_a_report_category_and_caption():
    """rules/aggregate.smk marks each topic's HTML table and PNG plot for the report with these."""
    assert all(topic.category for topic in topics.TOPICS.values())
    root = Path(__file__).resolve().parent.parent / "workflow/report"
    assert [t for t in topics.TOPICS if not (root / f"{t}.rst").is_file()] == []


def zo_run(root, method, kind, seed, per_step, dev, test, steps=(0, 10, 20), mode="prefix:5", passes=True):
    """A fine-tuning run with its curve: dev and test at ``steps``, ``per_step`` passes a step; the
    last step is kept. ``passes=False``: a curve written before runs counted passes."""
    path = finetune(root, "alpha", seed, method, test[-1], dev=dev[-1], kind=kind)
    m = json.loads(path.read_text()) | {"mode": mode, "steps": steps[-1], "best_step": steps[-1]}
    if passes:
        m |= {"passes": per_step * steps[-1], "best_passes": per_step * steps[-1], "train_s": 2.0 * steps[-1],
              "pass_unit": "forward+backward" if kind == "ft" else "forward"}
    write_json(m, path)
    rows = [{"step": s, "split": split, "loss": 0.5, "metric": v, "passes": per_step * s, "train_s": 2.0 * s}
            for s, d, t in zip(steps, dev, test) for split, v in (("dev", d), ("test", t))]
    curve = pd.DataFrame(rows)
    write_parquet(curve if passes else curve.drop(columns=["passes", "train_s"]), path.parent / "curve.parquet")
    return path


def test_zo_table_and_forward_pass_plot(tmp_path):
    root = tmp_path / "results"
    paths = [zo_run(root, "mezo", "mezo", s, 2, [0.5, 0.6, 0.7], [0.5, 0.6, 0.65 + s / 1000]) for s in (13, 21)]
    paths += [zo_run(root, "fzoo", "fzoo", s, 4, [0.5, 0.8, 0.75], [0.5, 0.75, 0.7]) for s in (13, 21)]
    paths += [zo_run(root, "old-mezo", "mezo", 13, 2, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], passes=False)]
    paths += [zo_run(root, "ft-prefix", "ft", s, 1, [0.6, 0.9], [0.6, 0.8], steps=(0, 40)) for s in (13, 21)]
    paths += [zo_run(root, "ft-all", "ft", 13, 1, [0.6, 0.9], [0.6, 0.95], steps=(0, 40), mode="all")]
    runs = gather.load_runs(paths)
    curves = [p.parent / "curve.parquet" for p in paths if "/ft-" not in str(p)]
    zo = summary.zo_curves(runs, curves, {"fzoo": "FZOO"})
    assert set(zo["method"]) == {"mezo", "FZOO"}  # old-mezo counted no passes: left out
    assert zo[(zo["method"] == "FZOO") & (zo["split"] == "test")]["passes"].tolist() == [0, 40, 80] * 2
    refs = summary.ft_references(runs, zo)
    assert refs[["method", "test", "passes", "n"]].values.tolist() == [["ft-prefix", pytest.approx(0.8), 40.0, 2]]
    table = tables.zo_table(runs, {"fzoo": "FZOO"}).frame.set_index("method")
    assert list(table.index) == ["ft-prefix", "mezo", "old-mezo", "FZOO"]  # ft-all tunes other parameters
    assert table.loc["mezo", "passes"] == "40 (0)" and table.loc["mezo", "pass"] == "forward"
    assert table.loc["FZOO", "test"] == "70.0 (0.0)" and table.loc["FZOO", "passes at best"] == "80 (0)"
    assert table.loc["ft-prefix", "pass"] == "forward+backward" and table.loc["old-mezo", "passes"] == "-"
    fig = plots.zo_forward_passes(zo, refs)
    ax = fig.axes[0]
    assert len(ax.lines) == 4 + 2  # test and dev of two methods; FT's line and marker
    assert {tuple(line.get_xdata()) for line in ax.lines[:4]} == {(0, 20, 40), (0, 40, 80)}  # passes, not steps
    written = aggregate.aggregate(paths, [], tmp_path / "runs.parquet", tmp_path / "tables", tmp_path / "plots",
                                  ["zo"], zo_curves=curves)
    assert {p.name for p in written} >= {"zo_forward_passes.png", "zo_forward_passes.pdf", "zo_forward_passes.md"}
    assert (tmp_path / "plots" / "zo_forward_passes.png").stat().st_size > 5000


def test_generation_table_shows_an_undecoded_dev_as_missing():
    base = {"stage": "generation", "selected": True, "model": "m", "task": "t", "k": 4, "metric": "rougeL",
            "type": "zeroshot", "n_test": 8, "test_se": 0.01, "gen_tokens_mean": 5.0, "test_scores.rougeL": 0.2}
    runs = pd.DataFrame([base | {"method": "zs", "seed": 13, "dev_metric": float("nan")},
                         base | {"method": "icl", "type": "icl", "seed": 13, "dev_metric": 0.25}])
    frame = tables.generation_table(runs).frame.set_index("method")
    assert frame.loc["zs", "dev (primary)"] == summary.MISSING and frame.loc["icl", "dev (primary)"] == "25.0"
