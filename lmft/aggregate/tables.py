"""The paper tables: built from the runs table and its summaries, written as CSV, Markdown, LaTeX and HTML.

Every cell is text with a fixed format, rows and columns sorted, so the same metrics give
byte-identical tables.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lmft.aggregate.gather import is_missing, selected
from lmft.aggregate.summary import MISSING, as_text, fixed, method_label, method_order, spread_text, task_rank
from lmft.aggregate.topics import TABLE_FORMATS, TOPICS, ZO_TYPES
from lmft.io import PathLike, atomic_path

# rows that open each (model, k) block of the main table
# rows that open each (model, k) block of the main table
BASELINE_ROWS = ("majority class", "test examples")


@dataclass
class Table:
    """A paper table: every cell is text; the first ``labels`` columns name the row."""

    title: str
    frame: pd.DataFrame
    labels: int


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``"mean (std)"`` of ``values`` x ``scale`` with the population std; ``-`` if none are finite."""
    v = np.asarray([x for x in values if not is_missing(x)], dtype=float) * scale
    if v.size == 0:
        return MISSING
    return f"{fixed(v.mean(), digits)} ({fixed(v.std(), digits)})"


def _task_header(task: str, metric: str) -> str:
    return task if metric == "acc" else f"{task} ({metric})"


def main_table(summary: pd.DataFrame, task_order: Sequence[str] = (),
               baselines: pd.DataFrame | None = None) -> Table:
    """Rows (model, k, method), columns tasks; cells ``mean (std)`` x100, or ``mean ±se`` for one
    seed (see :func:`summarize`). With ``baselines`` (:func:`majority_baselines`) each (model, k) block
    opens with the rows :data:`BASELINE_ROWS` where some run reports them."""
    title = TOPICS["main"].title
    if summary.empty:
        return Table(title, pd.DataFrame(columns=["model", "k", "method"]), 3)
    tasks = sorted(summary["task"].unique(), key=lambda t: task_rank(t, task_order))
    metric = {t: summary.loc[summary["task"] == t, "metric"].iloc[0] for t in tasks}
    base: dict[tuple, dict[str, dict[str, str]]] = {}  # (model, k) -> baseline row -> task header -> cell
    for b in ([] if baselines is None else baselines.to_dict("records")):
        if b["task"] in metric:
            block = base.setdefault((b["model"], int(b["k"])), {name: {} for name in BASELINE_ROWS})
            for name, col in zip(BASELINE_ROWS, ("majority", "n_test")):
                if b[col] != MISSING:
                    block[name][_task_header(b["task"], metric[b["task"]])] = b[col]
    rows: dict[tuple, dict[str, str]] = {}
    for r in summary.to_dict("records"):  # summarize's order: model, k, method family/name
        for name, cells in base.pop((r["model"], r["k"]), {}).items():  # once, before the block's first method
            if cells:
                rows[(r["model"], r["k"], name)] = {"model": r["model"], "k": str(r["k"]), "method": name, **cells}
        row = rows.setdefault((r["model"], r["k"], r["method"]),
                              {"model": r["model"], "k": str(r["k"]), "method": r["method"]})
        row[_task_header(r["task"], metric[r["task"]])] = spread_text(r["mean"], r["std"], r["n"], r["se"])
    headers = [_task_header(t, metric[t]) for t in tasks]
    frame = pd.DataFrame(list(rows.values()), columns=["model", "k", "method"] + headers).fillna(MISSING)
    return Table(title, frame.astype(str), 3)


def kernel_table(pairs: pd.DataFrame, task_order: Sequence[str] = ()) -> Table:
    """Rows (model, task, k, kernel, fine-tuning method) over the seeds both ran; cells x100."""
    title = TOPICS["kernel"].title
    cols = ["model", "task", "k", "kernel", "fine-tuning", "kernel metric", "fine-tuning metric", "gap", "seeds"]
    rows = []
    for (model, task, k, kernel, ft), g in pairs.groupby(["model", "task", "k", "kernel", "ft"], sort=False):
        gap = 100 * (g["kernel_metric"].mean() - g["ft_metric"].mean())
        rows.append({"model": model, "task": task, "k": str(k), "kernel": kernel, "fine-tuning": ft,
                     "kernel metric": mean_std(g["kernel_metric"]), "fine-tuning metric": mean_std(g["ft_metric"]),
                     "gap": ("+" if gap > 0 else "") + fixed(gap, 1), "seeds": str(len(g)),
                     "_t": task_rank(task, task_order)})
    rows.sort(key=lambda r: (r["model"], r["_t"]))  # stable: keeps kernel_pairs' method order
    return Table(title, pd.DataFrame(rows, columns=cols), 5)


def graft_table(runs: pd.DataFrame, labels: Mapping[str, str] | None = None, task_order: Sequence[str] = ()) -> Table:
    """Rows (model, task, k, method, sparsity): graft test metric, ECE, kept fraction, and the
    fine-tuned / pre-trained models' test metric and the out-of-distribution metrics when the
    metrics carry them; ``mean (std)`` over seeds x100."""
    title = TOPICS["graft"].title
    part = selected(runs, ("graft",))
    optional = [("test_ece", "test ECE"), ("kept_fraction", "kept fraction"),
                ("ft_test_metric", "FT test"), ("ft_test_ece", "FT ECE"), ("pre_test_metric", "pre-trained test")]
    optional = [(c, h) for c, h in optional if c in part.columns and part[c].notna().any()]
    ood = sorted(c for c in part.columns if c.startswith("ood.") and pd.api.types.is_numeric_dtype(part[c])
                 and part[c].notna().any())
    columns = [("test_metric", "test")] + optional + [(c, "OOD " + c.removeprefix("ood.").replace(".", " "))
                                                      for c in ood]
    head = ["model", "task", "k", "method", "sparsity", "seeds"]
    rows = []
    keys = ["model", "task", "k", "method", "sparsity"]
    for (model, task, k, method, sparsity), g in part.groupby(keys, sort=False):
        first = g.iloc[0].to_dict()
        row = {"model": model, "task": task, "k": str(k), "method": method_label(first, labels),
               "sparsity": f"{sparsity:g}", "seeds": str(len(g))}
        row.update({h: mean_std(g[c]) for c, h in columns})
        row["_order"] = (model, task_rank(task, task_order), int(k), method_order(first), float(sparsity))
        rows.append(row)
    rows.sort(key=lambda r: r["_order"])
    frame = pd.DataFrame(rows, columns=head + [h for _, h in columns])
    return Table(title, frame, 5)


def generation_table(runs: pd.DataFrame, labels: Mapping[str, str] | None = None,
                     task_order: Sequence[str] = ()) -> Table:
    """Rows (model, task, k, method): the test examples, each score of the task's metric (ROUGE-1/2/L,
    or exact match and token F1), dev's primary score and the mean generated length; scores x100,
    ``mean (std)`` over seeds or ``mean ±se`` (over the test examples) for one seed."""
    part = selected(runs, ("generation",))
    scores = sorted((c for c in part.columns if c.startswith("test_scores.")),
                    key=lambda c: (c.removeprefix("test_scores.") not in ("rouge1", "rouge2", "rougeL", "em", "f1"), c))
    head = ["model", "task", "k", "method", "test examples"]
    columns = [c.removeprefix("test_scores.") for c in scores] + ["dev (primary)", "tokens generated"]
    rows = []
    for (model, task, k, method), g in part.groupby(["model", "task", "k", "method"], sort=False):
        first = g.iloc[0].to_dict()
        row = {"model": model, "task": task, "k": str(k), "method": method_label(first, labels),
               "test examples": "/".join(dict.fromkeys(str(int(n)) for n in g["n_test"]))}
        for c, name in zip(scores, columns):
            vals = g[c].dropna().astype(float)
            primary = c == f"test_scores.{first['metric']}"
            se = float(g["test_se"].iloc[0]) if primary and len(g) == 1 and "test_se" in g else math.nan
            row[name] = MISSING if vals.empty else spread_text(vals.mean(), vals.std(ddof=0), len(vals), se)
        dev = g["dev_metric"].astype(float)
        row["dev (primary)"] = (MISSING if dev.isna().all()  # not decoded (eval_dev false)
                                else spread_text(dev.mean(), dev.std(ddof=0), len(dev), math.nan))
        row["tokens generated"] = fixed(float(g["gen_tokens_mean"].mean()), 1) if "gen_tokens_mean" in g else MISSING
        row["_order"] = (model, task_rank(task, task_order), int(k), method_order(first), row["method"])
        rows.append(row)
    rows.sort(key=lambda r: r["_order"])
    return Table(TOPICS["generation"].title, pd.DataFrame(rows, columns=head + columns).astype(str), 4)


def interpolate_table(runs: pd.DataFrame, task_order: Sequence[str] = ()) -> Table:
    """Rows (model, task, pair): per split the loss barrier and the metric barrier (x100), the
    endpoints' L2 distance and cosine, as the metrics carry them."""
    title = TOPICS["interpolate"].title
    part = selected(runs, ("interpolate",))
    splits = sorted({m.group(1) for c in part.columns if (m := re.fullmatch(r"(\w+?)_(?:loss|metric)_barrier", c))})
    columns: list[tuple[str, str, float, int]] = []  # (column, header, scale, digits)
    for s in splits:
        if f"{s}_loss_barrier" in part.columns:
            columns.append((f"{s}_loss_barrier", f"{s} loss barrier", 1.0, 4))
        if f"{s}_metric_barrier" in part.columns:
            columns.append((f"{s}_metric_barrier", f"{s} metric barrier", 100.0, 1))
    columns += [(c, h, 1.0, 4) for c, h in (("l2", "L2 distance"), ("cosine", "cosine")) if c in part.columns]
    rows = []
    for r in part.to_dict("records"):
        row = {"model": r["model"], "task": r["task"], "pair": r["pair"]}
        row.update({h: MISSING if is_missing(r.get(c)) else fixed(scale * float(r[c]), d)
                    for c, h, scale, d in columns})
        row["_order"] = (r["model"], task_rank(r["task"], task_order), r["pair"])
        rows.append(row)
    rows.sort(key=lambda r: r["_order"])
    return Table(title, pd.DataFrame(rows, columns=["model", "task", "pair"] + [h for _, h, _, _ in columns]), 3)


def zo_table(runs: pd.DataFrame, labels: Mapping[str, str] | None = None, task_order: Sequence[str] = ()) -> Table:
    """The zeroth-order runs (:data:`lmft.aggregate.topics.ZO_TYPES`) and fine-tuning (type ``ft``) of the same
    parameters (mode and head), rows (model, task, k, mode, method): the run's passes and their unit
    (a forward, or a forward and backward, over one training batch), the passes at the kept (best
    dev) step, dev and test x100, as mean (std) over the seeds. The seconds in training steps
    (``train_s``, a measurement) stay in metrics.json and the curves: tables are byte-identical."""
    cols = ["model", "task", "k", "mode", "method", "type", "pass", "passes", "passes at best", "dev", "test",
            "seeds"]
    part = selected(runs, ("finetune",))
    if part.empty or "type" not in part.columns:
        return Table(TOPICS["zo"].title, pd.DataFrame(columns=cols), 6)
    recs = part.to_dict("records")
    cells = {(r["model"], r["task"], int(r["k"]), as_text(r.get("mode")), as_text(r.get("head"))) for r in recs
             if r["type"] in ZO_TYPES}
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        cell = (r["model"], r["task"], int(r["k"]), as_text(r.get("mode")), as_text(r.get("head")))
        if cell in cells and r["type"] in (*ZO_TYPES, "ft"):
            groups.setdefault((*cell[:4], method_label(r, labels)), []).append(r)

    def column(rs: list[dict], key: str, scale: float = 1.0, digits: int = 0) -> str:
        values = [float(r[key]) for r in rs if not is_missing(r.get(key))]
        if not values:
            return MISSING
        return fixed(scale * float(np.mean(values)), digits) if len(values) == 1 else mean_std(values, scale, digits)

    rows = []
    for (model, task, k, mode, label), rs in groups.items():
        unit = {str(r.get("pass_unit")) for r in rs if not is_missing(r.get("pass_unit"))}
        rows.append({"model": model, "task": task, "k": str(k), "mode": mode, "method": label, "type": rs[0]["type"],
                     "pass": "/".join(sorted(unit)) or MISSING, "passes": column(rs, "passes"),
                     "passes at best": column(rs, "best_passes"), "dev": column(rs, "dev_metric", 100.0, 1),
                     "test": column(rs, "test_metric", 100.0, 1), "seeds": str(len(rs)),
                     "_order": (model, task_rank(task, task_order), k, mode, method_order(rs[0]))})
    rows.sort(key=lambda r: r["_order"])
    return Table(TOPICS["zo"].title, pd.DataFrame(rows, columns=cols), 6)


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown pipe table (``|`` in cells escaped)."""
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    cols = list(table.frame.columns)
    align = [":--" if i < table.labels else "--:" for i in range(len(cols))]
    body = [line(r) for r in table.frame.itertuples(index=False)]
    return "\n".join([line(cols), "| " + " | ".join(align) + " |", *body]) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    """A ``booktabs`` tabular: label columns left-aligned, value columns right-aligned."""
    cols = list(table.frame.columns)
    spec = "l" * table.labels + "r" * (len(cols) - table.labels)
    lines = [f"% {latex_escape(table.title)}", f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in table.frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


_CSS = ("body{font-family:sans-serif;margin:1em;color:#111;background:#fff}"
        "table{border-collapse:collapse;font-size:14px}"
        "th,td{border-bottom:1px solid #ccc;padding:4px 10px;text-align:right;white-space:nowrap}"
        "th.l,td.l{text-align:left}thead th{border-bottom:2px solid #333}")


def to_html(table: Table) -> str:
    """A standalone HTML page holding the table (what the Snakemake report shows)."""
    def cell(tag: str, i: int, text: str) -> str:
        cls = ' class="l"' if i < table.labels else ""
        return f"<{tag}{cls}>{html.escape(str(text))}</{tag}>"

    head = "".join(cell("th", i, c) for i, c in enumerate(table.frame.columns))
    body = "\n".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>"
                     for r in table.frame.itertuples(index=False))
    title = html.escape(table.title)
    return (f'<!doctype html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n<h3>{title}</h3>\n<table>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table>\n</body>\n</html>\n")


def write_table(table: Table, stem: PathLike, formats: Sequence[str] = TABLE_FORMATS) -> list[Path]:
    """Write ``table`` to ``stem.{csv,md,tex,html}`` (atomically); returns the paths."""
    render = {"md": to_markdown, "tex": to_latex, "html": to_html,
              "csv": lambda t: t.frame.to_csv(index=False, lineterminator="\n")}
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            tmp.write_text(render[fmt](table), encoding="utf-8")
        paths.append(path)
    return paths
