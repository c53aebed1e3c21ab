"""Hydra callbacks: build the sweep report when a multirun ends (also after failed jobs)."""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
# What the latest multirun in this process left: ``prune.run.main`` exits non-zero when a job did not finish ok.
SWEEP_OUTCOME: dict = {}


def sweep_outcome(sweep_dir: Path) -> dict:
    """Jobs of the sweep's latest launch by status: ``jobs``, ``not_ok``, ``detail``, ``report``."""
    from collections import Counter

    from prune.report.jobs import load_jobs

    jobs, _ = load_jobs(sweep_dir)
    counts = Counter(j["metrics"].get("status", "failed") for j in jobs)
    not_ok = sum(n for status, n in counts.items() if status != "ok")
    detail = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()) if status != "ok")
    return {"jobs": len(jobs), "not_ok": not_ok, "detail": detail, "report": str(sweep_dir / "report.md")}


class SweepReport(Callback):
    """Writes summary.csv/json, report.md and figures into the sweep folder at ``on_multirun_end``."""

    def __init__(self, enabled: bool = True, wandb: bool = True):
        self.enabled = enabled
        self.wandb = wandb

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            self._report(sweep_dir)
        finally:
            try:
                SWEEP_OUTCOME.update(sweep_outcome(sweep_dir))
            except Exception:  # noqa: BLE001 - counting must not hide the jobs' results
                log.exception("could not count the sweep's failed jobs")

    def _report(self, sweep_dir: Path) -> None:
        if not self.enabled:
            return
        from prune.report.jobs import has_jobs
        from prune.report.build import build_report

        if not has_jobs(sweep_dir):
            log.warning("no finished job under %s: no report", sweep_dir)
            return
        try:
            path = build_report(sweep_dir, log_wandb=self.wandb)
            log.info("sweep report: %s", path)
        except Exception:  # a broken report must never hide the jobs' own results
            log.exception("building the sweep report failed; run `prune-report %s` to retry", sweep_dir)
