"""prune-dashboard on a real tiny sweep (with recovery and the probe): the workspace is written offline and
every panel reads a metric key that the sweep's W&B runs actually logged."""
import json
import subprocess
import sys

import pytest
from conftest import REPO
from wandb_records import logged_config, logged_summary

pytest.importorskip("wandb_workspaces")
pytest.importorskip("peft")
TINY = ["testbed=tiny", "batch_size=2", "num_samples=4", "eval.lengths=[128]", "progress=false", "eval.importance_accuracy=true",
        "eval.ground_truth.max_tokens=1024", "eval.ground_truth.mlp_sample=8", "eval.ground_truth.lengths=[128]",
        "recovery=lora", "recovery.steps=4", "recovery.warmup_steps=1", "recovery.seq_len=64", "recovery.log_every=1",
        "eval.tasks=[prune_passkey]", "eval.probe.lengths=[256]", "eval.probe.depths=[0.5]", "eval.probe.items=4"]


@pytest.fixture(scope="module")
def sweep(tiny_testbed, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    out = subprocess.run([sys.executable, "-m", "prune.run", "-m", "seq_len=64,128", *TINY, f"hydra.sweep.dir={tmp / 'study'}",
                          "logger.project=test"], capture_output=True, text=True, cwd=tmp, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "study"


def _logged(folder):
    """Every key each W&B run logged (history keys keep their last value in the summary), and each run's config."""
    runs = sorted(folder.glob("*/wandb/offline-run-*")) + sorted(folder.glob("wandb/offline-run-*"))
    keys, configs = set(), []
    for run in runs:
        keys |= set(logged_summary(run))
        configs.append(logged_config(run))
    return keys, configs, len(runs)


def _config_has(config: dict, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.slow
def test_dashboard_panels_read_only_logged_keys(sweep):
    out = subprocess.run([sys.executable, "-m", "prune.report.dashboard", str(sweep)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "wandb sync" in out.stderr and "--online" in out.stderr
    data = json.loads((sweep / "dashboard.json").read_text())
    logged, configs, n_runs = _logged(sweep)
    assert n_runs == 3  # two jobs and the report run
    panel_keys = set(data["panel_keys"])
    assert panel_keys <= logged, sorted(panel_keys - logged)
    for key in ("by_layer/grad_abs_mean", "by_layer/grad_abs_std", "layer", "by_layer/attention_kept_fraction",
                "ppl_after/128", "ppl_recovered/128", "importance_accuracy/attention", "recovery/loss",
                "acc_after/prune_passkey_L256_d50", "acc_recovered/prune_passkey_L256_d50", "summary",
                "timings/total", "peak_memory_mb/recovery", "report/probe", "report/ppl_after"):
        assert key in panel_keys, key
    assert data["facts"]["groupby"][0] == "seq_len" and data["facts"]["group"] == "study"
    for key in data["facts"]["groupby"]:  # runs are grouped by config keys the jobs logged
        assert all(_config_has(c, key) for c in configs[:2]), key
    view = json.dumps(data["wandb_view"])
    assert "error" not in data["wandb_view"] and "by_layer/grad_abs_mean" in view and "ppl_recovered/128" in view


@pytest.mark.slow
def test_the_report_puts_one_shot_and_recovered_side_by_side_and_plots_the_probe(sweep):
    report = (sweep / "report.md").read_text()
    assert "## After pruning: recovery and the long-context probe" in report and "one-shot / recovered" in report
    assert "PPL after recovery, eval window 128" in report and "(probe.png)" in report
    assert (sweep / "probe.png").stat().st_size > 5000
    rows = [r for r in json.loads((sweep / "summary.json").read_text())]
    assert all(r["ppl_recovered/128"] > 0 and "acc_recovered/prune_passkey_L256_d50" in r for r in rows)


def test_console_script_is_registered():
    assert "prune-dashboard = prune.report.dashboard:main" in (REPO / "setup.cfg").read_text()


@pytest.mark.slow
def test_the_sweep_carries_the_recovery_control_and_the_probe_items(sweep):
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(jobs) == 2
    # the control is trained once (same dense weights, recovery, text and seed 0) and reused by the other arm
    assert sorted(j["recovery_control"]["cached"] for j in jobs) == [False, True]
    assert jobs[0]["ppl_dense_recovered"] == jobs[1]["ppl_dense_recovered"]
    for j in jobs:
        for stage in ("before", "after", "recovered"):
            cell = j["downstream"][stage]["probe"]["prune_passkey_L256_d50"]
            assert cell["n"] == 4 and len(cell["items"]) == 4 and 0 < cell["chance"] < 1
    report = (sweep / "report.md").read_text()
    assert "Recovery control: the unpruned model fine-tuned exactly as the pruned ones" in report
    assert "paired by item over 4 items" in report
