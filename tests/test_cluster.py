"""The cluster path executed: a sweep through Hydra's submitit launcher (``hydra/launcher=submitit_local``: the
same plugin and pickled job function as ``hydra/launcher=slurm``, with local processes instead of SLURM jobs),
one job refused (too little calibration text), its report built once both jobs are back; then the text is
fixed and the same command resumes: the finished job is kept, the refused one runs, the report says 2 ok."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
pytestmark = pytest.mark.slow


def sweep(sweep_dir, text_file):
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the workers import the checkout's prune too
    return subprocess.run(
        [sys.executable, "-m", "prune.run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
         "hydra.launcher.cpus_per_task=1", "testbed=tiny", "data=text_split", f"data.file={text_file}", "data.test_fraction=0.8", "seq_len=16,32",
         "num_samples=4", "batch_size=2", "eval.lengths=[16]", "importance=taylor_1st", "logger=none", "progress=false",
         "threads=1", f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=900)


def statuses(sweep_dir):
    return {str(json.loads(p.read_text())["run"]["seq_len"]): json.loads(p.read_text())["status"]
            for p in sweep_dir.glob("*/metrics.json")}


def job_metrics(sweep_dir, seq_len: int):
    return next(p for p in sweep_dir.glob("*/metrics.json") if json.loads(p.read_text())["run"]["seq_len"] == seq_len)


def test_a_submitit_sweep_with_a_failed_job_reports_once_all_are_back_and_resumes(tiny_testbed, tmp_path):
    text, out = tmp_path / "story.txt", tmp_path / "sweep"
    text.write_text(" ".join(f"word{i % 50}" for i in range(100)) + "\n\n" + " ".join(f"word{i % 50}" for i in range(200)))
    first = sweep(out, text)  # calibration (up to the blank line) has ~100 tokens: enough for 4 x 16, not for 4 x 32
    assert first.returncode == 1, first.stderr[-3000:]
    assert "1 of 2 jobs did not finish ok (refused: 1)" in first.stderr.strip().splitlines()[-1]
    assert statuses(out) == {"16": "ok", "32": "refused"}
    assert list(out.glob(".submitit/*")), "the jobs did not go through submitit"
    assert "2 jobs: 1 ok, 1 failed" in (out / "report.md").read_text()  # built after both jobs came back
    finished = job_metrics(out, 16).read_text()

    text.write_text(" ".join(f"word{i % 50}" for i in range(600)) + "\n\n" + " ".join(f"word{i % 50}" for i in range(200)))
    again = sweep(out, text)  # the same command, once there is enough text
    assert again.returncode == 0, again.stderr[-3000:]
    assert statuses(out) == {"16": "ok", "32": "ok"}
    assert job_metrics(out, 16).read_text() == finished  # kept, not re-run
    assert "2 jobs: 2 ok" in (out / "report.md").read_text()
