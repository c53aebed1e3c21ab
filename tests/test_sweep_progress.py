"""Sweep progress: one line per finished job with done / total and the time left, counted from the sweep folder."""
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from prune.report.jobs import expand_sweep, launch_grid
from prune.report.progress import clock, progress, progress_line, wandb_values

START = 1_800_000_000.0


def _folder(tmp_path, finished: dict[str, float]):
    """A 2 x 2 launch (seq_len x seed) started at START, with ``finished``: {job: mtime of its metrics.json}."""
    sweep = tmp_path / "sweep"
    sweep.mkdir(parents=True)
    OmegaConf.save({"hydra": {"sweeper": {"params": {}}, "overrides": {"task": ["seq_len=64,128", "seed=0,1"]}}},
                   sweep / "multirun.yaml")
    os.utime(sweep / "multirun.yaml", (START, START))
    for name, mtime in finished.items():
        seq_len, seed = name.split("-")
        job = sweep / name
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seq_len={seq_len}\n- seed={seed}\n")
        (job / "metrics.json").write_text(json.dumps({"status": "ok", "timings": {"total": 12.4}}))
        os.utime(job / "metrics.json", (mtime, mtime))
    return sweep


def test_the_launched_grid_is_every_combination_in_hydras_spelling(tmp_path):
    """The jobs a launch holds, expanded by Hydra's public override parser: sweeper params then command line,
    a list value is one value, a prefixed key keeps its prefix; a non-grid sweep is refused, not guessed."""
    assert expand_sweep(["seed=0,1", "eval.lengths=[128,512]", "+x=a", "seq_len=range(64,193,128)"]) == [
        ["seed=0", "eval.lengths=[128,512]", "+x=a", "seq_len=64"], ["seed=0", "eval.lengths=[128,512]", "+x=a", "seq_len=192"],
        ["seed=1", "eval.lengths=[128,512]", "+x=a", "seq_len=64"], ["seed=1", "eval.lengths=[128,512]", "+x=a", "seq_len=192"]]
    assert expand_sweep(["seed=0,1,2", "seq_len=64,128", "seed=0"]) == [["seq_len=64", "seed=0"], ["seq_len=128", "seed=0"]]
    with pytest.raises(ValueError, match="lr"):
        expand_sweep(["lr=interval(0,1)"])
    sweep = _folder(tmp_path, {})
    assert launch_grid(sweep) == {frozenset({f"seq_len={n}", f"seed={s}"}) for n in (64, 128) for s in (0, 1)}
    OmegaConf.save({"hydra": {"sweeper": {"params": {"lr": "interval(0,1)"}}, "overrides": {"task": []}}},
                   sweep / "multirun.yaml")
    assert launch_grid(sweep) is None  # unknown: every folder is reported


def test_the_time_left_follows_the_pace_of_this_launch(tmp_path):
    # one job finished before this launch (a resume: done, but no pace), one 60 s into it
    sweep = _folder(tmp_path, {"64-0": START - 500, "64-1": START + 60})
    state = progress(sweep, now=START + 60)
    assert state == {"done": 2, "total": 4, "fresh": 1, "elapsed": 60.0, "eta": 120.0, "swept": {"seq_len", "seed"}}
    line = progress_line(sweep, sweep / "64-1", now=START + 60)
    assert line == "[sweep 2/4] seq_len=64 seed=1: ok in 12s | elapsed 1:00, about 2:00 left"


def test_no_estimate_before_a_job_of_this_launch_finished_and_a_last_line(tmp_path):
    sweep = _folder(tmp_path, {"64-0": START - 500})
    assert progress_line(sweep, sweep / "64-0", now=START + 5).endswith("| elapsed 0:05")
    done = _folder(tmp_path / "b", {"64-0": START + 1, "64-1": START + 2, "128-0": START + 3, "128-1": START + 3725})
    assert progress_line(done, done / "128-1", now=START + 3725).endswith("| all done in 1:02:05")
    assert clock(59.6) == "1:00" and clock(3600) == "1:00:00"


def test_a_running_job_is_not_done_and_the_wandb_values_say_the_same(tmp_path):
    """A parallel worker's job writes metrics.json (status running) when it starts: it must not count as done."""
    sweep = _folder(tmp_path, {"64-0": START + 30, "64-1": START + 60})
    (sweep / "64-1" / "metrics.json").write_text(json.dumps({"status": "running"}))
    state = progress(sweep, now=START + 60)
    assert (state["done"], state["fresh"]) == (1, 1) and state["eta"] == 180.0
    assert wandb_values(sweep, now=START + 60) == {"sweep/done": 1, "sweep/total": 4, "sweep/elapsed_s": 60.0, "sweep/eta_s": 180.0}
    assert wandb_values(tmp_path / "not-a-sweep") == {}
    # the job itself, between its W&B flush and its final metrics.json, counts itself (and towards the pace)
    assert wandb_values(sweep, now=START + 60, finished="64-1")["sweep/done"] == 2


@pytest.mark.slow
def test_a_multirun_prints_one_progress_line_per_job(tiny_testbed, tmp_path):
    out = subprocess.run([sys.executable, "-m", "prune.run", "-m", "seq_len=64,128", "testbed=tiny", "num_samples=4", "batch_size=2",
                          "eval.lengths=[64]", "logger=none", "progress=false", "save_model=false",
                          f"hydra.sweep.dir={tmp_path / 'study'}"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("[sweep ")]
    assert len(lines) == 2, out.stdout[-3000:]
    assert lines[0].startswith("[sweep 1/2] seq_len=64: ok in ") and "left" in lines[0]
    assert lines[1].startswith("[sweep 2/2] seq_len=128: ok in ") and "all done in" in lines[1]
