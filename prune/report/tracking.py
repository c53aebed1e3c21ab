"""Experiment tracking: Weights & Biases (offline unless WANDB_MODE says otherwise) or nothing.

Per-layer series are logged against a ``layer`` step metric, so the same key (``by_layer/grad_abs_mean``)
of every run in a sweep overlays on one line chart in the W&B UI.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
_ONLINE_FAILED: list[str] = []  # a server that did not answer once in this process is not waited for again


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


def has_wandb_credentials() -> bool:
    """An API key in ``WANDB_API_KEY`` or in the netrc file ``wandb login`` writes (no network)."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return bool(netrc.netrc(path).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


@dataclass
class WandbTracker(NullTracker):
    """A W&B run. A run never dies for its logger: online without an API key, or a server that does not
    answer within ``init_timeout`` seconds, logs one warning and goes on offline (``wandb sync`` uploads
    later); any later W&B failure logs one warning and stops tracking, the job goes on."""

    project: str = "prune-lab"
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None
    tags: list = field(default_factory=list)
    dir: str | None = None
    init_timeout: float = 20.0

    def __post_init__(self):
        self._run = None

    def start(self, config: dict, name: str, group: str | None, job_type: str, out_dir: str) -> None:
        mode = os.environ.get("WANDB_MODE") or self.mode  # never forced online: the env var decides
        if mode in ("online", "run") and _ONLINE_FAILED:
            log.warning("W&B: logging offline, as the online start failed earlier in this process (%s)", _ONLINE_FAILED[0])
            mode = "offline"
        if mode in ("online", "run") and not has_wandb_credentials():
            log.warning("W&B: mode online but no API key (WANDB_API_KEY or `wandb login`): logging offline; "
                        "`wandb sync` uploads the run later")
            mode = "offline"
        kwargs = dict(project=self.project, entity=self.entity, group=self.group or group, name=name,
                      job_type=job_type, tags=list(self.tags), config=config, dir=self.dir or out_dir)
        if not self.dir:
            drop_superseded_runs(out_dir)
        try:
            self._init(mode, kwargs)
        except Exception as exc:  # noqa: BLE001 - W&B raises many types; the job must go on
            if mode in ("offline", "disabled"):
                log.warning("W&B could not start (%s): this run is not tracked", _first_line(exc))
                return
            _ONLINE_FAILED.append(_first_line(exc))
            log.warning("W&B online start failed (%s; init_timeout=%ss): logging offline; `wandb sync` uploads later",
                        _first_line(exc), self.init_timeout)
            try:
                self._init("offline", kwargs)
            except Exception as again:  # noqa: BLE001
                log.warning("W&B could not start offline either (%s): this run is not tracked", _first_line(again))

    def _init(self, mode: str, kwargs: dict) -> None:
        import wandb

        settings = wandb.Settings(init_timeout=float(self.init_timeout))
        self._run = wandb.init(mode=mode, settings=settings, reinit="finish_previous", **kwargs)
        self.run_dir = self._run.dir if self._run is not None else None
        wandb.define_metric("layer")
        wandb.define_metric("by_layer/*", step_metric="layer")
        wandb.define_metric("recovery_step")
        wandb.define_metric("recovery/*", step_metric="recovery_step")  # the recovery loss curve

    def _safely(self, fn) -> None:
        if self._run is None:
            return
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - never die for the logger
            log.warning("W&B failed (%s): tracking stops here, the job goes on", _first_line(exc))
            self._run = None

    def log(self, values: dict) -> None:
        self._safely(lambda: self._run.log(values))

    def log_by_layer(self, rows: list[dict]) -> None:
        def log_rows():
            for row in rows:
                self._run.log({"layer": row["layer"], **{f"by_layer/{k}": v for k, v in row.items() if k != "layer"}})

        self._safely(log_rows)

    def log_table(self, key: str, rows: list[dict]) -> None:
        if not rows:
            return
        import wandb

        columns = list(rows[0])
        self._safely(lambda: self._run.log({key: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])}))

    def log_images(self, images: dict[str, str]) -> None:
        if not images:
            return
        import wandb

        self._safely(lambda: self._run.log({key: wandb.Image(path) for key, path in images.items()}))

    def summary(self, values: dict) -> None:
        self._safely(lambda: self._run.summary.update(values))

    def finish(self, ok: bool) -> None:
        run, self._run = self._run, None
        if run is not None:
            try:
                run.finish(exit_code=0 if ok else 1)
            except Exception as exc:  # noqa: BLE001
                log.warning("W&B could not finish the run (%s)", _first_line(exc))


def drop_superseded_runs(out_dir: str) -> None:
    """Remove the offline W&B runs an earlier attempt of this job (or report) left in its own folder.

    The folder's result is being computed again (a resume after a kill, ``force=true``, a rebuilt report), so
    an earlier offline run is either half-flushed or superseded; left there, ``wandb sync`` would upload the
    job twice. Runs already online are not touched (they are on the server, and their folders say ``run-``)."""
    import shutil
    from pathlib import Path

    folder = Path(out_dir) / "wandb"
    if not folder.is_dir():
        return
    for run in folder.glob("offline-run-*"):
        shutil.rmtree(run, ignore_errors=True)
    latest = folder / "latest-run"
    if latest.is_symlink() and not latest.exists():
        latest.unlink()


def _first_line(exc: BaseException) -> str:
    text = [line for line in str(exc).strip().splitlines() if line.strip() and line.strip() != "<no message>"]
    return f"{type(exc).__name__}: {text[0].strip()}" if text else type(exc).__name__
