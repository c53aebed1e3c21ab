"""Sweep progress: after every job of a multirun, one line with the jobs done out of the launch's total and
an estimate of the time left.

Everything is read from the sweep folder (``multirun.yaml``, written when the launch starts, and the job
folders' ``metrics.json``), so the count is right whichever process ran the job (the basic launcher, joblib
workers, a cluster node on a shared file system) and on a resumed sweep, where jobs that already finished
count as done but not towards the pace.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def progress(sweep_dir: Path, now: float | None = None, finished: str | None = None) -> dict | None:
    """``done``/``total`` jobs of the latest launch, ``fresh`` (finished since it started), ``elapsed`` and
    ``eta`` seconds (None until a job of this launch finished); None without a ``multirun.yaml``. ``finished``:
    the folder of a job that has finished but not yet written its final metrics.json (the caller itself)."""
    from prune.report.jobs import launch_grid, load_jobs

    started_file = sweep_dir / "multirun.yaml"
    if not started_file.exists():
        return None
    grid = launch_grid(sweep_dir)
    jobs, _ = load_jobs(sweep_dir)
    # a job writes metrics.json with status "running" when it starts: with parallel workers that is not done
    jobs = [j for j in jobs if j["folder"] == finished or (j["metrics"] or {}).get("status", "running") != "running"]
    started = started_file.stat().st_mtime
    now = time.time() if now is None else now
    fresh = sum(j["folder"] == finished or (sweep_dir / j["folder"] / "metrics.json").stat().st_mtime >= started for j in jobs)
    total = len(grid) if grid is not None else None
    elapsed = max(now - started, 0.0)
    left = None if total is None else max(total - len(jobs), 0)
    eta = elapsed / fresh * left if fresh and left is not None else None
    swept = set()  # the keys whose value differs between the launch's jobs
    if grid:
        values: dict = {}
        for point in grid:
            for item in point:
                values.setdefault(item.partition("=")[0], set()).add(item)
        swept = {key for key, seen in values.items() if len(seen) > 1}
    return {"done": len(jobs), "total": total, "fresh": fresh, "elapsed": elapsed, "eta": eta, "swept": swept}


def wandb_values(sweep_dir: Path, now: float | None = None, finished: str | None = None) -> dict:
    """The sweep's progress as W&B summary values of a job's run (``sweep/done``, ``sweep/total``,
    ``sweep/elapsed_s``, ``sweep/eta_s``): the group's runs table then shows how far the sweep is and when
    it should end. Empty outside a multirun folder."""
    state = progress(sweep_dir, now, finished)
    if state is None:
        return {}
    values = {"sweep/done": state["done"], "sweep/elapsed_s": round(state["elapsed"], 1)}
    if state["total"]:
        values["sweep/total"] = state["total"]
    if state["eta"] is not None:
        values["sweep/eta_s"] = round(state["eta"], 1)
    return values


def job_label(job_dir: Path, swept: set) -> str:
    """The job's swept settings (``seq_len=512 seed=0``), else its folder name."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not (swept and path.exists()):
        return job_dir.name
    items = [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]
    return " ".join(item for item in items if item.partition("=")[0] in swept) or job_dir.name


def progress_line(sweep_dir: Path, job_dir: Path, now: float | None = None) -> str | None:
    """``[sweep 3/8] seq_len=512 seed=0: ok in 14s | elapsed 0:42, about 1:10 left``."""
    from prune.report.jobs import read_metrics

    state = progress(sweep_dir, now)
    if state is None:
        return None
    metrics = read_metrics(job_dir) or {}
    took = (metrics.get("timings") or {}).get("total")
    job = f"{job_label(job_dir, state['swept'])}: {metrics.get('status', 'no metrics.json')}" + (f" in {took:.0f}s" if took is not None else "")
    count = f"{state['done']}/{state['total']}" if state["total"] else str(state["done"])
    if state["total"] and state["done"] >= state["total"]:
        tail = f"all done in {clock(state['elapsed'])}"
    elif state["eta"] is not None:
        tail = f"elapsed {clock(state['elapsed'])}, about {clock(state['eta'])} left"
    else:
        tail = f"elapsed {clock(state['elapsed'])}"
    return f"[sweep {count}] {job} | {tail}"


class SweepProgress(Callback):
    """Prints the progress line (stdout, flushed) at the end of every job of a multirun."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_job_end(self, config: DictConfig, job_return=None, **kwargs) -> None:
        from hydra.types import RunMode

        if not self.enabled or config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            line = progress_line(Path(config.hydra.sweep.dir), Path(config.hydra.runtime.output_dir))
        except Exception:  # noqa: BLE001 - progress must never stop a sweep
            log.exception("could not count the sweep's progress")
            return
        if line:
            print(line, flush=True)
