"""Hydra callbacks: build the sweep report when a multirun ends (also after failed jobs)."""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """Writes summary.csv/json, report.md and figures into the sweep folder at ``on_multirun_end``."""

    def __init__(self, enabled: bool = True, wandb: bool = True):
        self.enabled = enabled
        self.wandb = wandb

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not self.enabled:
            return
        from prune.report import build_report

        sweep_dir = Path(config.hydra.sweep.dir)
        if not any(sweep_dir.glob("*/metrics.json")):
            log.warning("no finished job under %s: no report", sweep_dir)
            return
        try:
            path = build_report(sweep_dir, log_wandb=self.wandb)
            log.info("sweep report: %s", path)
        except Exception:  # a broken report must never hide the jobs' own results
            log.exception("building the sweep report failed; run `prune-report %s` to retry", sweep_dir)
