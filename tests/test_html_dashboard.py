"""The offline dashboard (dashboard.html) of a real tiny sweep, seq_len=128,512 x seed=0,1 x ratio=0.2,0.3: it is
self-contained, shows per layer the seed means and spreads of exactly what the jobs logged to W&B, with one
dropdown entry per ratio, and headless Chromium draws every panel without a console message."""
import json
import re
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import REPO
from headless import drawn_subplots, render, screenshot
from wandb_records import logged_config, records

from prune.report.panels import PANELS

SWEEP = ["seq_len=128,512", "seed=0,1", "pruning.ratio=0.2,0.3", "testbed=tiny", "num_samples=8", "batch_size=4",
         "eval.lengths=[128]", "progress=false", "logger.project=test"]
TITLES = {title: field for field, title, _ in PANELS}


@pytest.fixture(scope="module")
def sweep(tiny_testbed, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html-dash")
    out = subprocess.run([sys.executable, "-m", "prune.run", "-m", *SWEEP, f"hydra.sweep.dir={tmp / 'study'}"],
                         capture_output=True, text=True, cwd=tmp, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "study"


def figure(page: str) -> tuple[list[dict], dict]:
    """The traces and layout the page hands to ``Plotly.newPlot``."""
    start = re.search(r'Plotly\.newPlot\(\s*"panels",\s*', page).end()
    decoder = json.JSONDecoder()
    traces, end = decoder.raw_decode(page, start)
    layout, _ = decoder.raw_decode(page, page.index("{", end))
    return traces, layout


def shown(page: str) -> dict[str, dict[tuple, list]]:
    """Per dropdown entry: {(panel field, trace name): per-layer mean line} of the traces it makes visible."""
    traces, layout = figure(page)
    titles = [a["text"] for a in layout["annotations"]]  # subplot titles, in subplot order
    out = {}
    for button in layout["updatemenus"][0]["buttons"]:
        visible = button["args"][0]["visible"]
        lines = {}
        for trace, on in zip(traces, visible):
            if on and trace.get("fill") is None:
                axis = trace.get("xaxis", "x")
                index = int(axis[1:] or 1) - 1
                lines[(TITLES[titles[index]], trace["name"])] = trace
        out[button["label"]] = lines
    return out


def wandb_layers(sweep) -> dict[tuple, dict[str, list]]:
    """{(ratio, seq_len): {field: [per-seed list of per-layer values]}} from the jobs' offline W&B runs."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for run in sorted(sweep.glob("*/wandb/offline-run-*")):
        config = logged_config(run)
        rows = [r["history"]["item"] for r in records(run) if r.get("type") == "history" and "layer" in r["history"]["item"]]
        rows.sort(key=lambda r: r["layer"])
        for field, *_ in PANELS:
            if rows and f"by_layer/{field}" in rows[0]:
                out[(config["pruning"]["ratio"], config["seq_len"])][field].append([r[f"by_layer/{field}"] for r in rows])
    return out


@pytest.mark.slow
def test_the_sweep_writes_a_self_contained_page(sweep):
    page = (sweep / "dashboard.html").read_text()
    assert "<script src=" not in page and "<link" not in page  # plotly.js inline, nothing fetched
    assert len(page) > 3_000_000  # plotly.js itself is in the file
    assert "Verdicts" in page and "PPL after pruning, eval window 128" in page


@pytest.mark.slow
def test_the_page_shows_the_seed_mean_and_spread_of_what_wandb_logged(sweep):
    views = shown((sweep / "dashboard.html").read_text())
    assert sorted(views) == ["ratio=0.2", "ratio=0.3"]
    logged = wandb_layers(sweep)
    assert len(logged) == 4 and all(len(per_seed) == 2 for f in logged.values() for per_seed in f.values())
    fields = {field for view in views.values() for field, _ in view}
    assert {"grad_abs_mean", "grad_abs_std", "attention_grad_abs_mean", "mlp_grad_abs_std", "grad_abs_mean_batch_cv",
            "attention_kept_fraction", "mlp_kept_fraction"} <= fields
    compared = 0
    for label, lines in views.items():
        ratio = float(label.split("=")[1])
        for (field, name), trace in lines.items():
            seq_len = int(name.split("=")[1])
            per_seed = logged[(ratio, seq_len)][field]
            per_layer = list(zip(*per_seed))
            assert trace["x"] == list(range(len(per_layer)))
            assert trace["y"] == pytest.approx([statistics.fmean(v) for v in per_layer], rel=1e-9)
            assert [c[0] for c in trace["customdata"]] == pytest.approx([statistics.stdev(v) for v in per_layer], rel=1e-9, abs=1e-15)
            compared += 1
    assert compared == 2 * 2 * len(fields)  # every panel, both ratios, both seq_lens


@pytest.mark.slow
def test_chromium_draws_every_panel_without_console_messages(sweep, tmp_path):
    page = sweep / "dashboard.html"
    dom, console = render(page, tmp_path)
    assert console == []
    _, layout = figure(page.read_text())
    panels = len(layout["annotations"])
    drawn = drawn_subplots(dom)
    assert len(drawn) >= panels >= 7
    # every panel of the first dropdown entry: a line for seq_len=128 and one for 512, each with its seed band
    # (a band is a filled outline: one fill and one zero-width line; two seeds that agree give a flat band)
    assert all(d["bands"] == 2 and d["lines"] == 2 + 2 for d in list(drawn.values())[:panels]), drawn
    assert 'class="updatemenu-button"' in dom or "updatemenu" in dom  # the dropdown drew
    shot = screenshot(page, tmp_path / "dashboard.png")
    assert shot.stat().st_size > 50_000


def test_the_console_check_sees_a_script_error(tmp_path):
    """The check above would see an error: the same call on a page that throws reports it."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, console = render(page, tmp_path)
    assert any("undefinedFunction" in line for line in console)


@pytest.mark.slow
def test_prune_dashboard_writes_the_page_for_any_sweep_folder(sweep, tmp_path):
    sweep = Path(shutil.copytree(sweep, tmp_path / "copy", ignore=shutil.ignore_patterns("wandb", "dashboard.*")))
    out = subprocess.run([sys.executable, "-m", "prune.report.dashboard", str(sweep), "--plotlyjs", "plotly.min.js"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    page = (sweep / "dashboard.html").read_text()
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in page and len(page) < 500_000
    assert (sweep / "plotly.min.js").stat().st_size > 3_000_000
    assert sorted(shown(page)) == ["ratio=0.2", "ratio=0.3"]


STUDIES = sorted(p.parent for p in (REPO / "experiments" / "results").glob("*/verdicts.json"))


@pytest.mark.parametrize("study", STUDIES, ids=[s.name for s in STUDIES])
def test_the_committed_studies_dashboards_are_current(study):
    """``prune-dashboard experiments/results/<name> --plotlyjs ../plotly.min.js`` would write the same page."""
    from prune.report.conditions import Sweep
    from prune.report.html_dashboard import render
    from prune.report.panels import dashboard_data

    verdicts = json.loads((study / "verdicts.json").read_text())["structured"]
    assert (study / "dashboard.html").read_text() == render(dashboard_data(Sweep(study), verdicts), "../plotly.min.js")


def test_chromium_draws_a_committed_study_with_the_shared_plotlyjs(tmp_path):
    page = REPO / "experiments" / "results" / "seq_len_128_vs_512" / "dashboard.html"
    dom, console = render(page, tmp_path)
    assert console == []
    drawn = drawn_subplots(dom)
    assert len(drawn) >= 9 and all(d["lines"] == 4 and d["bands"] == 2 for d in list(drawn.values())[:9]), drawn
