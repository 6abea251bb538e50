"""The aggregate rule in a tiny workflow, its Snakemake report, and the report in headless Chromium.

The workflow is the repo's ``rules/common.smk`` and ``rules/aggregate.smk`` with synthetic
metrics.json files (and curve.parquet files) in place of the other stages' runs, registered the
way the real stages register theirs. Chromium opens the self-contained ``report.html``, clicks through the
report's own menus to each table and plot, and reports what it rendered.
"""

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from html import unescape as html_unescape
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest
import yaml

from lmft.io import write_json, write_parquet

pytestmark = pytest.mark.workflow

ROOT = Path(__file__).resolve().parent.parent

SNAKEFILE = """
from snakemake.utils import validate

validate(config, "ROOT/workflow/schemas/config.schema.yaml")

include: "ROOT/rules/common.smk"

report: "ROOT/workflow/report/workflow.rst"

# the stand-in stages' runs, written by the test before Snakemake starts: the plan's metrics files,
# set before anything reads them
PLAN.metrics = {
    "finetune": expand(RESULTS + "/finetune/tiny/{task}/16-{seed}/{method}/metrics.json",
                       task=PLAN.config["tasks"], seed=PLAN.config["kshot"]["seeds"], method=["zeroshot", "ft-prompt"]),
    "kernel": expand(RESULTS + "/kernel_solve/tiny/{task}/16-{seed}/sgd-prompt/lstsq/metrics.json",
                     task=PLAN.config["tasks"], seed=PLAN.config["kshot"]["seeds"]),
    "interpolate": expand(RESULTS + "/interpolate/tiny/{task}/seed13-seed21/metrics.json", task=PLAN.config["tasks"]),
}

include: "ROOT/rules/aggregate.smk"


rule all:
    default_target: True
    input: list(PLAN.aggregate_files.values())
"""

# What Chromium does once the report has loaded: click each category, subcategory and result's
# view button, then record what the content pane shows; the record goes into <pre id="lmft-check">.
DRIVER = """
<script>
(async function () {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const link = (text) => [...document.querySelectorAll("a")].find((a) => a.textContent.trim() === text);
  for (let i = 0; i < 100 && typeof app === "undefined"; i++) await sleep(50);  // React renders async
  const out = {};
  for (const [category, subcategory, result] of TARGETS) {
    const rec = out[category + "/" + subcategory] = {};
    try {
      app.setView({navbarMode: "menu"}); await sleep(100);  // back to the main menu, as its home button does
      rec.step = "category"; link(category).click(); await sleep(100);
      rec.step = "subcategory"; link(subcategory).click(); await sleep(100);
      rec.step = "result";
      const row = [...document.querySelectorAll("tr")].find((tr) => tr.textContent.includes(result));
      row.querySelector("div[role=group] a").click(); await sleep(500);
      const img = document.querySelector("img[src^='data:image/png']");
      if (img) {
        rec.img = {width: img.naturalWidth, height: img.naturalHeight, complete: img.complete};
      }
      const frame = document.querySelector("iframe");
      if (frame) {
        await sleep(300);
        const doc = frame.contentDocument;
        rec.iframe = {src: frame.src.slice(0, 20),
                      cells: doc ? [...doc.querySelectorAll("td, th")].map((c) => c.textContent) : null};
      }
    } catch (err) {
      rec.error = String(err);
    }
  }
  const pre = document.createElement("pre");
  pre.id = "lmft-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
"""


def chromium() -> str:
    """The Chromium binary; installs it with tests/install_chromium.sh where it can, else skips."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        subprocess.run(["bash", str(ROOT / "tests" / "install_chromium.sh")], capture_output=True, timeout=600)
        found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed and tests/install_chromium.sh could not install it "
                    "(needs root and a Debian mirror): the report is built but not opened in a browser")
    return found


def browse(binary: str, page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Open ``page`` in headless Chromium, offline and with a fresh profile. Web security is off so
    that the driver may read the table's frame (a data: URL, which is another origin)."""
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--disable-web-security", f"--user-data-dir={tmp / 'chromium-profile'}",
           "--virtual-time-budget=20000", *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def write_runs(results: Path, tasks, seeds) -> None:
    """Stand-ins for the other stages' outputs: a deterministic metric per run."""
    def score(*parts):
        return 0.5 + (sum(ord(c) for c in "".join(map(str, parts))) % 50) / 100

    def predictions(acc: float, path: Path) -> None:  # 20 test examples, the first round(20 acc) right
        labels = [i % 2 for i in range(20)]
        preds = [y if i < round(20 * acc) else 1 - y for i, y in enumerate(labels)]
        write_parquet(pd.DataFrame({"index": range(20), "label": labels, "pred": preds,
                                    "probs": [[0.2, 0.8] if p else [0.8, 0.2] for p in preds]}),
                      path.with_name("predictions.parquet"))

    common = {"model": "tiny", "k": 16, "metric": "acc", "test_ece": 0.1}
    for task in tasks:
        for seed in seeds:
            for method in ("zeroshot", "ft-prompt"):
                s = score(task, seed, method)
                path = results / f"finetune/tiny/{task}/16-{seed}/{method}/metrics.json"
                write_json(common | {"stage": "finetune", "task": task, "seed": seed, "method": method,
                                     "type": "zeroshot" if method == "zeroshot" else "ft", "head": "prompt",
                                     "dev_metric": s, "test_metric": s}, path)
                predictions(s, path)
            s = score(task, seed, "kernel")
            path = results / f"kernel_solve/tiny/{task}/16-{seed}/sgd-prompt/lstsq/metrics.json"
            write_json(common | {"stage": "kernel", "task": task, "seed": seed, "formula": "sgd", "prompt": "prompt",
                                 "solver": "lstsq", "dev_metric": s, "test_metric": s}, path)
            predictions(s, path)
        run = results / f"interpolate/tiny/{task}/seed13-seed21"
        write_json({"stage": "interpolate", "task": task, "model": "tiny", "pair": "seed13-seed21", "metric": "acc",
                    "l2": 2.5, "cosine": 0.75, "test_loss_barrier": 0.125, "test_metric_barrier": 0.25},
                   run / "metrics.json")
        write_parquet(pd.DataFrame({"alpha": [0.0, 0.5, 1.0], "split": "test", "loss": [0.5, 0.625, 0.5],
                                    "metric": [0.9, 0.65, 0.9]}), run / "curve.parquet")
        write_parquet(pd.DataFrame({"alpha": [a for a in (0.0, 0.5, 1.0) for _ in range(20)], "split": "test",
                                    "index": list(range(20)) * 3, "loss": [v for v in (0.5, 0.625, 0.5) for _ in range(20)],
                                    "correct": True}),
                      run / "losses.parquet")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Run the tiny workflow and build its report; returns the work directory."""
    work = tmp_path_factory.mktemp("report")
    (work / "Snakefile").write_text(SNAKEFILE.replace("ROOT", str(ROOT)))
    (work / "config.yaml").write_text(yaml.safe_dump(
        {"models": {"tiny": {"source": "unused"}}, "tasks": ["sst-2", "mr"], "kshot": {"k": [16], "seeds": [13, 21]}}))
    write_runs(work / "results", tasks=("sst-2", "mr"), seeds=(13, 21))
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "snakemake", "-s", str(work / "Snakefile"), "-d", str(work),
            "--configfile", str(work / "config.yaml"), "--cores", "2"]
    for extra in ([], ["--report", str(work / "report.html")]):
        proc = subprocess.run(base + extra, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, f"snakemake {extra} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return work


def test_workflow_writes_tables_and_plots(report):
    tables, plots = report / "results" / "tables", report / "results" / "plots"
    for stem in ("main", "kernel_vs_ft", "interpolate"):
        assert {p.suffix for p in tables.glob(f"{stem}.*")} == {".csv", ".md", ".tex", ".html"}
    assert not list(tables.glob("graft.*")), "no graft runs registered: no graft table"
    assert sorted(p.name for p in plots.iterdir()) == sorted(
        f"{s}.{f}" for s in ("accuracy_vs_k", "kernel_vs_ft", "interpolate_curves") for f in ("png", "pdf"))
    main = (tables / "main.md").read_text().splitlines()
    assert main[0] == "| model | k | method | sst-2 | mr |" and len(main) == 2 + 3


def report_results(report_dir: Path) -> dict:
    text = (report_dir / "report.html").read_text()
    return json.loads(re.search(r"var results = (\{.*?\});\n", text, re.S).group(1))


def test_report_embeds_tables_and_plots(report):
    results = report_results(report)
    by_name = {Path(k).name: v for k, v in results.items()}
    assert set(by_name) == {"main.html", "accuracy_vs_k.png", "kernel_vs_ft.html", "kernel_vs_ft.png",
                            "interpolate.html", "interpolate_curves.png", "findings.html"}
    table = base64.b64decode(by_name["main.html"]["data_uri"].split(",", 1)[1]).decode()
    assert table == (report / "results" / "tables" / "main.html").read_text()
    assert by_name["interpolate_curves.png"]["mime_type"] == "image/png"
    assert "Linear mode connectivity" in by_name["interpolate.html"]["caption"]
    text = (report / "report.html").read_text()
    desc = json.loads(re.search(r"var workflow_desc = (\".*?\");\n", text, re.S).group(1))
    assert "This run: tasks sst-2, mr" in desc and "seeds 13, 21" in desc


def driven_page(report_dir: Path, tmp: Path, targets: list[list[str]]) -> Path:
    """A copy of the report that runs DRIVER over ``targets`` once loaded."""
    head, body_end, tail = (report_dir / "report.html").read_text().rpartition("</body>")  # the last one
    page = tmp / "report.html"
    page.write_text(head + DRIVER.replace("TARGETS", json.dumps(targets)) + body_end + tail)
    return page


def test_report_renders_in_headless_chromium(report, tmp_path):
    binary = chromium()
    # (category, subcategory, text of the result's row) -> the table or plot it must show
    views = {("Main results", "Table", "Test metric"): ("main", None),
             ("Main results", "Plot", "Test metric"): (None, "accuracy_vs_k"),
             ("Mode connectivity", "Table", "Linear interpolation"): ("interpolate", None),
             ("Mode connectivity", "Plot", "Linear interpolation"): (None, "interpolate_curves")}
    proc = browse(binary, driven_page(report, tmp_path, [list(v) for v in views]), tmp_path, "--dump-dom")
    m = re.search(r'<pre id="lmft-check">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"report did not render (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    checks = json.loads(html_unescape(m.group(1)))
    tables, plots = report / "results" / "tables", report / "results" / "plots"
    for (category, subcategory, _), (table, plot) in views.items():
        rec = checks[f"{category}/{subcategory}"]
        assert "error" not in rec, rec
        if table:  # the iframe shows every header and cell of the table
            frame = pd.read_csv(tables / f"{table}.csv", dtype=str, keep_default_na=False)
            assert rec["iframe"]["cells"] == list(frame.columns) + [c for row in frame.values.tolist() for c in row]
        else:  # the image decoded at the PNG's own size
            width, height = struct.unpack(">II", (plots / f"{plot}.png").read_bytes()[16:24])
            assert rec["img"] == {"width": width, "height": height, "complete": True}


def test_report_table_screenshot_is_not_blank(report, tmp_path):
    binary = chromium()
    page = driven_page(report, tmp_path, [["Main results", "Table", "Test metric"]])
    proc = browse(binary, page, tmp_path, f"--screenshot={tmp_path / 'shot.png'}", "--window-size=1200,800")
    assert proc.returncode == 0, proc.stderr[-2000:]
    pixels = mpimg.imread(tmp_path / "shot.png")[..., :3]
    assert pixels.shape[:2] == (800, 1200)
    content = pixels[:, 600:]  # right of the menu (its width fits its content): the table in its frame
    assert (content.min(axis=2) < 0.5).mean() > 0.002, "no dark (text) pixels where the table should be"
