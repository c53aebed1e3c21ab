"""Kill -9 safety: a small sweep SIGKILLed again and again (at random moments, in the middle of writing a
file, during the W&B flush, while saving the pruned model) and rerun each time ends with the same report as
an uninterrupted sweep: finished jobs kept and never re-run, nothing half-written, no job counted twice."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
SWEEP = ["-m", "testbed=tiny", "seq_len=32,64", "num_samples=4", "batch_size=2", "eval.lengths=[64]",
         "eval.max_tokens=1024", "importance=taylor_1st", "logger=wandb", "progress=false", "threads=1"]
KILLS = 20
VOLATILE = ("timings/", "peak_memory_mb/", "flops_per_s")  # measured, not computed: differ between any two runs


def launch(sweep_dir: Path, point: str = "none", kill_after: float | None = None) -> int | None:
    """The sweep through tests/kill_driver.py in its own process group; None when it was killed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the checkout's prune, not an installed one
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "kill_driver.py"), point, "--", *SWEEP,
                             f"hydra.sweep.dir={sweep_dir}"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=kill_after if kill_after is not None else 900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    if proc.returncode == -signal.SIGKILL:
        return None
    assert proc.returncode == 0, err[-3000:]
    return 0


def comparable(sweep_dir: Path) -> list[dict]:
    rows = json.loads((sweep_dir / "summary.json").read_text())
    return sorted(({k: v for k, v in row.items() if not k.startswith(VOLATILE)} for row in rows), key=json.dumps)


def check_nothing_half_written(sweep_dir: Path, finished: dict[str, str]) -> None:
    """After a kill: every file a reader trusts is whole, and every job seen finished is untouched."""
    for path in sweep_dir.glob("*/metrics.json"):
        metrics = json.loads(path.read_text())  # never half a file
        job = path.parent.name
        if job in finished:
            assert path.read_text() == finished[job], f"{job} finished earlier and was run again"
        elif metrics["status"] == "ok":
            finished[job] = path.read_text()
            model = path.parent / "pruned_model"
            assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
        for folder in path.parent.glob("pruned_model*"):
            if folder.name == "pruned_model":  # under its final name only when complete
                assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file(), folder
    if (sweep_dir / "summary.json").exists():
        rows = json.loads((sweep_dir / "summary.json").read_text())
        with open(sweep_dir / "summary.csv", newline="") as f:
            assert len(list(csv.DictReader(f))) == len(rows)
    if (sweep_dir / "verdicts.json").exists():
        json.loads((sweep_dir / "verdicts.json").read_text())
    if (sweep_dir / "report.md").exists():
        assert (sweep_dir / "report.md").read_text().strip()


def test_a_sweep_killed_20_times_ends_as_an_uninterrupted_one(tiny_testbed, tmp_path):
    reference = tmp_path / "reference"
    started = time.monotonic()
    assert launch(reference) == 0
    span = time.monotonic() - started  # how long the whole sweep takes here: the range of the random kills
    expected = comparable(reference)
    assert len(expected) == 2 and all(row["status"] == "ok" for row in expected)

    rng = random.Random(20)
    sweep, finished, killed = tmp_path / "killed", {}, 0
    for i in range(KILLS):
        point = rng.choice(["random"] * 4 + ["write", "write", "wandb", "save"])
        if point == "random":
            outcome = launch(sweep, kill_after=rng.uniform(0.5, span))
        elif point == "write":
            outcome = launch(sweep, f"write:{rng.randint(1, 12)}")
        elif point == "wandb":
            outcome = launch(sweep, f"wandb:{rng.uniform(0.0, 0.5):.2f}")
        else:
            outcome = launch(sweep, "save")
        killed += outcome is None
        check_nothing_half_written(sweep, finished)
    assert killed >= KILLS // 2, f"only {killed} of {KILLS} launches were killed"

    assert launch(sweep) == 0  # the resume that finishes it
    check_nothing_half_written(sweep, finished)
    assert comparable(sweep) == expected  # same jobs, same numbers
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 2
    for job in jobs:  # one W&B run per job and one for the report: a resumed job is not counted twice
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1, job
        assert not list(job.glob("pruned_model.partial-*"))
    assert len(list((sweep / "wandb").glob("offline-run-*"))) == 1
    report, uninterrupted = ((folder / "report.md").read_text().splitlines() for folder in (sweep, reference))
    assert report[0] == uninterrupted[0].replace("reference", "killed")  # the title names the folder
    assert report[1:] == uninterrupted[1:]


def test_a_job_killed_while_saving_the_model_leaves_no_complete_looking_folder(tiny_testbed, tmp_path):
    sweep = tmp_path / "sweep"
    assert launch(sweep, "save") is None
    for job in sweep.glob("*/metrics.json"):
        assert json.loads(job.read_text())["status"] == "running"  # unfinished: a resume re-runs it
        assert not (job.parent / "pruned_model").exists()
    assert list(sweep.glob("*/pruned_model.partial-*"))  # the half-saved folder, under a name no reader trusts
    assert launch(sweep) == 0
    for job in sweep.glob("*/metrics.json"):
        assert json.loads(job.read_text())["status"] == "ok"
        assert (job.parent / "pruned_model" / "model.safetensors").is_file()
        assert not list(job.parent.glob("pruned_model.partial-*"))
