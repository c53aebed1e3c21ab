"""A full disk (simulated with RLIMIT_FSIZE in a subprocess: every write past the limit fails with EFBIG, as
with ENOSPC) ends the job with one line naming the path it was writing, and leaves nothing a resume would
trust: metrics.json does not say ok, no half-written file under its final name, and a rerun finishes it."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
JOB = ["testbed=tiny", "seq_len=32", "num_samples=4", "batch_size=2", "eval.lengths=[64]", "eval.max_tokens=1024",
       "importance=taylor_1st", "logger=none", "progress=false", "threads=1", "eval.cache_before=false", "eval.cache_after=false"]


def job(run_dir, limit: int | None = None):
    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "prune.run", *JOB, f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                          cwd=REPO, timeout=600, preexec_fn=cap if limit else None)


def test_a_full_disk_ends_the_job_in_one_line_and_a_rerun_finishes_it(tiny_testbed, tmp_path):
    free = job(tmp_path / "free")
    assert free.returncode == 0, free.stderr[-3000:]
    files = [p for p in (tmp_path / "free").rglob("*") if p.is_file() and ".hydra" not in p.parts]
    largest = max(files, key=lambda p: p.stat().st_size)  # the pruned model's weights, here
    relative = largest.relative_to(tmp_path / "free")

    run_dir = tmp_path / "full"
    full = job(run_dir, limit=largest.stat().st_size - 1)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr and "Logging error" not in full.stderr
    lines = [line for line in full.stderr.splitlines() if "cannot write" in line]
    assert len(lines) == 1, full.stderr[-3000:]
    named = run_dir / (relative.parts[0] if relative.parts[0] == "pruned_model" else relative)
    assert str(named) in lines[0] and "File too large" in lines[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] != "ok" and "Traceback" not in json.dumps(metrics)
    if relative.parts[0] == "pruned_model":
        assert not (run_dir / "pruned_model").exists() and not list(run_dir.glob("pruned_model.partial-*"))
    else:
        assert not (run_dir / relative).exists()
    assert not [p for p in run_dir.rglob("*.tmp-*")]

    again = job(run_dir)  # the rerun, with room: the job is re-run, not skipped as finished
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "ok"
    assert (run_dir / relative).stat().st_size == largest.stat().st_size
