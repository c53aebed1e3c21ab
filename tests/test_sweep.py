"""Sweeps as a user runs them: a shrunken experiment, failures recorded, reports built, resume."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONF, REPO
from wandb_records import logged_summary

SMALL = ["testbed=tiny", "batch_size=2", "num_samples=8", "eval.lengths=[128,512]", "eval.ground_truth.max_tokens=2048", "eval.tasks_limit=4",
         "eval.ground_truth.mlp_sample=16", "progress=false"]


def prune_run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "prune.run", *args], capture_output=True, text=True, cwd=cwd, timeout=1200)


@pytest.fixture(scope="module")
def sweep(tiny_testbed, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    out = prune_run("experiment=seq_len_128_vs_512", *SMALL, "importance=taylor_2nd", "seed=0,1", "budget=samples,tokens", "pruning.ratio=0.3",
                    f"hydra.sweep.dir={tmp / 'study'}", "logger.project=test", cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "study", out


@pytest.mark.slow
def test_experiment_runs_every_job_and_writes_the_report(sweep):
    folder, _ = sweep
    jobs = [json.loads(p.read_text())["run"] for p in folder.glob("*/metrics.json")]
    assert len(jobs) == 8  # 2 lengths x 2 seeds x 2 budgets
    assert {(j["seq_len"], j["seed"], j["token_budget"]) for j in jobs} == {
        (L, s, b) for L in (128, 512) for s in (0, 1) for b in (None, 16384)
    }
    rows = list(csv.DictReader(open(folder / "summary.csv")))
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    tokens = {(r["seq_len"], r["num_samples"]) for r in rows if r["token_budget"]}
    assert tokens == {("128", "128"), ("512", "32")}  # equal token budget: 16384 at both lengths
    report = (folder / "report.md").read_text()
    assert "## Primary endpoint" in report and "## Secondary comparisons" in report and "seq_len=128" in report and "within a setting (different seeds on both sides)" in report
    for figure in ("ppl_after.png", "overlap.png", "grad_by_layer.png", "kept_by_layer.png", "cost.png", "importance_accuracy.png"):
        assert (folder / figure).stat().st_size > 5000, figure
        assert f"({figure})" in report
    verdicts = json.loads((folder / "verdicts.json").read_text())
    assert any("importance accuracy" in v for v in verdicts["verdicts"])
    # the ground truth at several window lengths, each verdict naming its own
    for metrics in folder.glob("*/metrics.json"):
        accuracy = json.loads(metrics.read_text())["importance_accuracy"]
        assert set(accuracy["by_truth"]) == {"128", "512"}
        assert {"attention", "attention_top", "attention_wtau", "mlp_wtau"} <= set(accuracy["by_truth"]["128"])
    assert {L for L in ("128", "512") if any(f"truth on {L}-token windows" in v for v in verdicts["verdicts"])} == {"128", "512"}
    assert all("90 % CI" in v or "no seed" in v or "identical" in v or "every seed gives" in v or "Jaccard" in v for v in verdicts["verdicts"])


@pytest.mark.slow
def test_jobs_share_one_wandb_group_and_the_report_is_a_run(sweep):
    folder, _ = sweep
    runs = list(folder.glob("*/wandb/offline-run-*"))
    assert len(runs) == 8
    assert list(folder.glob("wandb/offline-run-*"))  # the report run, in the sweep folder
    config = (runs[0] / "files" / "config.yaml").read_text() if (runs[0] / "files" / "config.yaml").exists() else ""
    assert "seq_len" in config or not config
    # every job's run carries the sweep's progress with itself counted: the group's runs table shows 1/8 ... 8/8
    summaries = [logged_summary(run) for run in runs]
    assert sorted(s["sweep/done"] for s in summaries) == list(range(1, 9))
    assert {s["sweep/total"] for s in summaries} == {8}
    assert all(s["sweep/eta_s"] >= 0 for s in summaries if s["sweep/done"] < 8)


@pytest.mark.slow
def test_rerunning_the_sweep_skips_finished_jobs_and_redoes_missing_ones(sweep, tmp_path):
    folder, _ = sweep
    redo = next(
        p.parent for p in folder.glob("*/metrics.json")
        if (lambda r: (r["seq_len"], r["seed"], r["token_budget"]))(json.loads(p.read_text())["run"]) == (512, 1, None)
    )
    before = {p: p.stat().st_mtime for p in folder.glob("*/metrics.json")}
    (redo / "metrics.json").unlink()  # as if that job had been killed
    out = prune_run("experiment=seq_len_128_vs_512", *SMALL, "importance=taylor_2nd", "seed=0,1", "budget=samples,tokens", "pruning.ratio=0.3",
                    f"hydra.sweep.dir={folder}", "logger.project=test", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("skipping") == 7
    after = {p: p.stat().st_mtime for p in folder.glob("*/metrics.json")}
    assert all(after[p] == t for p, t in before.items() if p.parent != redo)
    assert json.loads((redo / "metrics.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_report_still_comes_out(tiny_testbed, tmp_path):
    # tiny testbed: max positions 1024, so seq_len=2048 fails its checks; the other job runs
    out = prune_run("-m", "seq_len=128,2048", *SMALL, "logger=none", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]  # after the report: a script notices the refused job
    assert "1 of 2 jobs did not finish ok (refused: 1)" in out.stderr.splitlines()[-1]
    rows = {r["seq_len"]: r for r in csv.DictReader(open(tmp_path / "s" / "summary.csv"))}
    assert rows["128"]["status"] == "ok"
    assert rows["2048"]["status"] == "refused" and "max_position_embeddings" in rows["2048"]["error"]
    assert "## Failed jobs" in (tmp_path / "s" / "report.md").read_text()


@pytest.mark.slow
def test_prune_report_rebuilds_a_report_on_demand(sweep, tmp_path):
    folder, _ = sweep
    (folder / "report.md").unlink()
    out = subprocess.run([sys.executable, "-m", "prune.report", str(folder), "--no-wandb"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (folder / "report.md").exists()
    bad = subprocess.run([sys.executable, "-m", "prune.report", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "no */metrics.json" in bad.stderr


@pytest.mark.slow
def test_an_archived_sweep_rebuilds_the_same_verdicts_from_its_compact_files(sweep, tmp_path):
    folder, _ = sweep
    dest = tmp_path / "results" / "study"
    out = subprocess.run([sys.executable, "-m", "prune.report", str(folder), "--archive", str(dest)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not list(dest.rglob("*.safetensors")) and not list(dest.rglob("wandb"))
    original = json.loads((folder / "verdicts.json").read_text())["verdicts"]
    rebuilt = json.loads((dest / "verdicts.json").read_text())["verdicts"]
    assert rebuilt == original and len(rebuilt) > 4
    # the per-job JSON is stored gzipped, readable by every reader, and much smaller than the originals
    assert not list(dest.glob("*/metrics.json")) and not list(dest.glob("*/plan.json"))
    archived = sum(f.stat().st_size for f in dest.glob("*/*.json.gz"))
    source = sum(f.stat().st_size for f in folder.glob("*/metrics.json")) + sum(f.stat().st_size for f in folder.glob("*/plan.json"))
    assert len(list(dest.glob("*/metrics.json.gz"))) == len(list(folder.glob("*/metrics.json"))) and archived < source / 4
    from prune.report.jobs import load_jobs

    live, archived_jobs = load_jobs(folder)[0], load_jobs(dest)[0]
    assert [j["metrics"] for j in archived_jobs] == [j["metrics"] for j in live]
    assert [j["plan"] for j in archived_jobs] == [j["plan"] for j in live]
    import gzip

    import numpy as np
    import torch

    assert list(folder.glob("*/importance.pt"))
    for job in folder.glob("*/importance.pt"):  # the group scores come along, to 5 significant digits
        kept = json.loads(gzip.decompress((dest / job.parent.name / "scores.json.gz").read_bytes()))["scores"]
        original = torch.load(job, weights_only=False)["scores"]
        for block in ("attention", "mlp"):
            np.testing.assert_allclose(np.array(kept[block]), np.array(original[block], dtype=np.float64), rtol=5e-5, atol=0)
    # committed studies share one plotly.js beside them instead of embedding 4 MB each
    page = (dest / "dashboard.html").read_text()
    assert '<script charset="utf-8" src="../plotly.min.js"></script>' in page and len(page) < 1_000_000
    assert (dest.parent / "plotly.min.js").stat().st_size > 3_000_000 and (folder / "dashboard.html").stat().st_size > 3_000_000
    # a job killed before its record (status running, nothing else) is unfinished, not failed, and does not
    # make every setting look varied
    head = next(line for line in (dest / "report.md").read_text().splitlines() if " jobs: " in line)
    (dest / "zz-killed").mkdir()
    (dest / "zz-killed" / "metrics.json").write_text('{"status": "running", "output_dir": "x"}')
    out = subprocess.run([sys.executable, "-m", "prune.report", str(dest), "--no-wandb"], capture_output=True, text=True, timeout=300)
    report = (dest / "report.md").read_text()
    n = len(live)
    assert f"{n + 1} jobs: {n} ok, 0 failed, 1 unfinished" in report and "## Failed jobs" not in report
    assert "- job zz-killed: status running" in report and head.split("Varying: ")[1] in report
    # rebuilt in place beside the shared plotly.min.js, the page keeps loading that one copy
    assert '<script charset="utf-8" src="../plotly.min.js"></script>' in (dest / "dashboard.html").read_text()


def test_readme_findings_are_the_committed_reports_verdicts():
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "findings.py"), "--check"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr


def test_depth_study_moves_only_the_layer_importance_length():
    from omegaconf import OmegaConf

    sweep = OmegaConf.load(CONF / "experiment" / "depth_seq_len.yaml").hydra.sweeper.params
    assert "lengths.layer" in sweep and "seq_len" not in sweep and "lengths.taylor" not in sweep


def test_launcher_presets_compose():
    from conftest import compose_config

    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from prune.schema import compose

    for preset, target in (("joblib_local", "JoblibLauncher"), ("slurm", "SlurmLauncher")):
        cfg = compose(f"hydra/launcher={preset}", return_hydra_config=True)
        assert target in cfg.hydra.launcher._target_


def test_70b_slurm_example_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from prune.schema import compose

    cfg = compose("experiment=llama3_70b_slurm", return_hydra_config=True)
    assert cfg.model.device_map == "auto" and cfg.model.path == "meta-llama/Meta-Llama-3-70B"
    assert cfg.hydra.launcher.gpus_per_node == 8 and "Slurm" in cfg.hydra.launcher._target_
    assert cfg.importance.gradient_checkpointing is True


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_and_each_of_its_sweep_points_composes(name):
    from prune.schema import compose

    if name == "llama3_70b_slurm":
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose(f"experiment={name}", return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.hydra.sweep.dir.endswith(f"sweeps/{name}")
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert params
    first = [f"{k}={v[0]}" for k, v in params.items()]
    last = [f"{k}={v[-1]}" for k, v in params.items()]
    for point in (first, last):
        job = compose(f"experiment={name}", *point)
        instantiate_all = [job.importance, job.pruning, job.data, job.model]
        assert all("_target_" in node for node in instantiate_all)


@pytest.mark.slow
def test_depth_experiment_report_has_layer_curves_and_task_accuracy(tiny_testbed, tmp_path):
    out = prune_run("experiment=depth_seq_len", "testbed=tiny", "batch_size=2", "num_samples=4", "eval.lengths=[128]",
                    "eval.tasks_limit=4", "progress=false", "seq_len=128", "lengths.layer=64,128", "seed=0", "pruning=layer_weighted",
                    "logger=none", f"hydra.sweep.dir={tmp_path / 'depth'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "depth"
    rows = list(csv.DictReader(open(folder / "summary.csv")))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert all(r["acc_after/testbed_longrange"] not in ("", None) for r in rows)
    for metrics in folder.glob("*/metrics.json"):
        m = json.loads(metrics.read_text())
        assert m["layer_scores"]["criterion"] == "layer" and m["layer_scores"]["length"] == m["run"]["lengths"]["layer"]
        assert m["run"]["lengths"]["taylor"] == 128  # only the layer-importance length moves
    report = (folder / "report.md").read_text()
    assert "(layer_importance.png)" in report and (folder / "layer_importance.png").stat().st_size > 5000
    assert "testbed_longrange" in report


def _job(run: dict, overrides: list[str]) -> dict:
    from prune.report.jobs import override_values

    return {"metrics": {"run": run, "status": "ok"}, "overrides": overrides, "override_values": override_values(overrides)}


def test_any_swept_key_separates_conditions_but_seeds_and_renames_do_not():
    from prune.report.conditions import condition_of, varying_keys

    jobs = [
        _job({"seq_len": L, "token_budget": 16384 if b == "tokens" else None, "seed": s},
             [f"seq_len={L}", f"importance.fisher={f}", f"budget={b}", f"seed={s}"])
        for L in (128, 512) for f in ("sample", "token") for b in ("samples", "tokens") for s in (0, 1)
    ]
    keys = varying_keys(jobs)
    assert keys == ["seq_len", "token_budget", "importance.fisher"]  # not seed, not budget (= token_budget)
    conditions = {condition_of(j, keys) for j in jobs}
    assert len(conditions) == 8 and (512, None, "token") in conditions


@pytest.mark.slow
def test_a_smaller_relaunch_into_the_same_folder_reports_only_its_own_jobs(sweep, tmp_path):
    import shutil

    folder = tmp_path / "study"
    shutil.copytree(sweep[0], folder)
    # 2 of the 8 jobs: both finished already (skipped); the other 6 folders are not points of this launch
    out = prune_run("experiment=seq_len_128_vs_512", *SMALL, "importance=taylor_2nd", "seed=0", "budget=samples", "pruning.ratio=0.3",
                    f"hydra.sweep.dir={folder}", "logger.project=test", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("skipping") == 2
    rows = list(csv.DictReader(open(folder / "summary.csv")))
    assert sorted((r["seq_len"], r["seed"], r["token_budget"]) for r in rows) == [("128", "0", ""), ("512", "0", "")]
    report = (folder / "report.md").read_text()
    left_out = next(line for line in report.splitlines() if line.startswith("Left out"))
    assert left_out.count("budget=") == 6 and "2 jobs: 2 ok" in report


def test_seeds_are_paired_only_where_one_seed_means_the_same_text():
    from prune.report.conditions import pairs_by_seed

    def jobs(block=2048, budget=16384):
        return [{"metrics": {"run": {"seq_len": L, "seed": s, "calibration_block": block, "token_budget": budget}}}
                for L in (128, 512) for s in range(3)]

    assert pairs_by_seed(jobs())
    assert not pairs_by_seed(jobs(block=None, budget=None))  # budget=samples: a seed draws other text per length
    assert not pairs_by_seed(jobs()[:3] + jobs(block=None)[3:])  # mixed designs
    # arms that differ in a setting that does not touch the data: the same seed is the same text
    assert pairs_by_seed(jobs(block=None, budget=None), "importance.fisher")
    assert not pairs_by_seed(jobs(block=None, budget=None), "lengths.layer")


@pytest.mark.slow
def test_the_report_of_a_copied_sweep_does_not_depend_on_file_times(sweep, tmp_path):
    """Committed studies are rebuilt from a fresh clone, where every file has the checkout's time."""
    import os
    import shutil

    from prune.report.jobs import load_jobs

    folder = tmp_path / "copy"
    shutil.copytree(sweep[0], folder)
    for i, path in enumerate(sorted(folder.rglob("*"))):
        os.utime(path, (1_000_000 + 7919 * i % 1000, 1_000_000 + 7919 * i % 1000))  # scrambled times
    (folder / "multirun.yaml").touch()  # newest of all: every job folder 'older' than the launch
    jobs, stale = load_jobs(folder)
    assert len(jobs) == 8 and not stale


def test_sweep_folder_names_are_one_path_component_of_bounded_length():
    from prune.run import safe_dirname

    name = safe_dirname("data.file=/data/a.txt,seed=0")
    assert "/" not in name and name == "data.file=_data_a.txt,seed=0"
    long = ",".join(f"eval.key{i}={'x' * 20}" for i in range(20))
    assert len(safe_dirname(long)) <= 200 and safe_dirname(long) != safe_dirname(long + "y")


def test_a_job_folder_reads_the_same_plain_or_gzipped_and_a_live_file_wins(tmp_path):
    import gzip

    from prune.report.jobs import metrics_files, read_metrics

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "metrics.json.gz").write_bytes(gzip.compress(json.dumps({"status": "ok", "x": 1}).encode()))
    (tmp_path / "b" / "metrics.json.gz").write_bytes(gzip.compress(b'{"status": "ok"}'))
    (tmp_path / "b" / "metrics.json").write_text('{"status": "running"}')  # rerun in an archived folder
    assert [p.name for p in metrics_files(tmp_path)] == ["metrics.json.gz", "metrics.json"]
    assert read_metrics(tmp_path / "a") == {"status": "ok", "x": 1}
    assert read_metrics(tmp_path / "b") == {"status": "running"}
    (tmp_path / "a" / "metrics.json.gz").write_bytes(b"\x1f\x8b truncated")
    assert read_metrics(tmp_path / "a")["status"] == "failed"


def test_compressing_committed_studies_keeps_every_value(tmp_path):
    from findings import compress
    from prune.report.jobs import load_jobs

    job = tmp_path / "study" / "seed=0"
    job.mkdir(parents=True)
    metrics = {"status": "ok", "ppl_after": {"512": 34.741234567891234}, "x": [0.1 + 0.2, 1e-30, None]}
    (job / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (job / "plan.json").write_text(json.dumps({"keep_mlp": [[0, 2, 5]]}, indent=2))
    before = load_jobs(tmp_path / "study", latest_launch=False)[0]
    assert compress(tmp_path) == 2
    assert sorted(p.name for p in job.iterdir()) == ["metrics.json.gz", "plan.json.gz"]
    after = load_jobs(tmp_path / "study", latest_launch=False)[0]
    assert after == before and after[0]["metrics"] == metrics
