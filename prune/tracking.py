"""Experiment tracking: Weights & Biases (offline unless WANDB_MODE says otherwise) or nothing.

Per-layer series are logged against a ``layer`` step metric, so the same key (``by_layer/grad_abs_mean``)
of every run in a sweep overlays on one line chart in the W&B UI.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class NullTracker:
    """Tracks nothing (``logger=none``)."""

    run_dir: str | None = None

    def start(self, config: dict, name: str, group: str | None, job_type: str, out_dir: str) -> None:
        pass

    def log(self, values: dict) -> None:
        pass

    def log_by_layer(self, rows: list[dict]) -> None:
        pass

    def log_table(self, key: str, rows: list[dict]) -> None:
        pass

    def log_images(self, images: dict[str, str]) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self, ok: bool) -> None:
        pass


@dataclass
class WandbTracker(NullTracker):
    project: str = "prune-lab"
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None
    tags: list = field(default_factory=list)
    dir: str | None = None

    def __post_init__(self):
        self._run = None

    def start(self, config: dict, name: str, group: str | None, job_type: str, out_dir: str) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or self.mode  # never forced online: the env var decides
        self._run = wandb.init(
            project=self.project,
            entity=self.entity,
            group=self.group or group,
            name=name,
            job_type=job_type,
            tags=list(self.tags),
            config=config,
            dir=self.dir or out_dir,
            mode=mode,
            reinit="finish_previous",  # a second init in one process must not reuse the first run
        )
        self.run_dir = self._run.dir if self._run is not None else None
        wandb.define_metric("layer")
        wandb.define_metric("by_layer/*", step_metric="layer")
        wandb.define_metric("recovery_step")
        wandb.define_metric("recovery/*", step_metric="recovery_step")  # the recovery loss curve

    def log(self, values: dict) -> None:
        if self._run is not None:
            self._run.log(values)

    def log_by_layer(self, rows: list[dict]) -> None:
        if self._run is None:
            return
        for row in rows:
            self._run.log({"layer": row["layer"], **{f"by_layer/{k}": v for k, v in row.items() if k != "layer"}})

    def log_table(self, key: str, rows: list[dict]) -> None:
        if self._run is None or not rows:
            return
        import wandb

        columns = list(rows[0])
        self._run.log({key: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})

    def log_images(self, images: dict[str, str]) -> None:
        if self._run is None or not images:
            return
        import wandb

        self._run.log({key: wandb.Image(path) for key, path in images.items()})

    def summary(self, values: dict) -> None:
        if self._run is not None:
            self._run.summary.update(values)

    def finish(self, ok: bool) -> None:
        if self._run is not None:
            try:
                self._run.finish(exit_code=0 if ok else 1)
            finally:
                self._run = None
