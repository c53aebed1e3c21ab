"""The job folders of a sweep: the one place that reads their ``metrics.json`` (with ``plan.json`` and the
overrides Hydra recorded), for the report, the Hydra callback, the dashboard and ``prune-bench --sweep``."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from prune.metrics import JobMetrics, MetricsError, validate

log = logging.getLogger(__name__)


def job_file(folder: str | Path, name: str) -> Path | None:
    """``<folder>/<name>``, or its gzipped copy ``<name>.gz`` (how ``prune-report --archive`` stores the
    per-job JSON files in the repository); None where neither exists."""
    for path in (Path(folder) / name, Path(folder) / f"{name}.gz"):
        if path.exists():
            return path
    return None


def read_json(path: Path):
    """A JSON file, plain or gzipped (by its ``.gz`` suffix)."""
    if path.suffix == ".gz":
        import gzip

        return json.loads(gzip.decompress(path.read_bytes()).decode())
    return json.loads(path.read_text())


def metrics_files(sweep_dir: str | Path, nested: bool = False) -> list[Path]:
    """``<job>/metrics.json`` (or ``metrics.json.gz``) of every job folder in natural order (``2`` before
    ``10``); with ``nested``, any depth when no folder holds one directly (never a result a rerun set aside
    in ``<job>/.superseded``)."""
    sweep_dir = Path(sweep_dir)
    pattern = ("metrics.json", "metrics.json.gz")
    files = [f for name in pattern for f in sweep_dir.glob(f"*/{name}")]
    if not files and nested:
        files = [f for name in pattern for f in sweep_dir.rglob(name) if ".superseded" not in f.parts[:-1]]
    by_folder: dict[Path, Path] = {}
    for f in sorted(files, key=lambda f: f.name.endswith(".gz")):  # a folder holding both: the plain file wins
        by_folder.setdefault(f.parent, f)
    return sorted(by_folder.values(), key=lambda p: _natural(str(p.parent.relative_to(sweep_dir))))


def read_metrics(folder: str | Path) -> JobMetrics | None:
    """One job folder's ``metrics.json``, checked against ``JobMetrics``: None where there is none, a failed
    record where it is unreadable or does not match (saying which key)."""
    path = job_file(folder, "metrics.json")
    if path is None:
        return None
    try:
        data = read_json(path)
    except (ValueError, EOFError, OSError):
        return {"status": "failed", "error": f"{path.name} is unreadable (job killed while writing?)"}
    try:
        return validate(data, str(path))
    except MetricsError as exc:
        return {**data, "status": "failed", "error": str(exc)}  # nothing dropped; a resume re-runs it


def has_jobs(sweep_dir: str | Path) -> bool:
    return bool(metrics_files(sweep_dir))


def load_jobs(sweep_dir: str | Path, latest_launch: bool = True, nested: bool = False) -> tuple[list[dict], list[str]]:
    """The job folders (their ``metrics.json``, ``plan.json``, overrides) and the names of those left out.

    A sweep folder can hold folders of an earlier launch with other settings (experiments use a fixed
    folder). With ``latest_launch``, a folder whose overrides are not a point of the latest launch
    (``multirun.yaml``) is left out and its name returned as the second value. Nothing depends on file
    times, so a copied, rsynced or freshly cloned sweep folder reads the same.
    """
    sweep_dir = Path(sweep_dir)
    grid = launch_grid(sweep_dir) if latest_launch else None
    jobs, stale = [], []
    for metrics_path in metrics_files(sweep_dir, nested):
        folder = metrics_path.parent
        name = str(folder.relative_to(sweep_dir))
        overrides_path = folder / ".hydra" / "overrides.yaml"
        overrides = []
        if overrides_path.exists():
            overrides = [line[2:].strip() for line in overrides_path.read_text().splitlines() if line.startswith("- ")]
        if grid is not None and overrides_path.exists() and frozenset(overrides) not in grid:
            stale.append(name)
            continue
        metrics = read_metrics(folder)
        plan_path = job_file(folder, "plan.json")
        plan = read_json(plan_path) if plan_path else None
        jobs.append({"folder": name, "metrics": metrics, "overrides": overrides,
                     "override_values": override_values(overrides), "plan": plan})
    return jobs, stale


def launch_grid(sweep_dir: Path) -> set[frozenset] | None:
    """The override sets of every job of the sweep's latest launch, expanded from its ``multirun.yaml``
    (sweeper params + command line) as Hydra's basic sweeper expands them; None if unknown."""
    from omegaconf import OmegaConf

    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None
    try:
        hydra_cfg = OmegaConf.load(path).hydra
        params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
        return {frozenset(job) for job in expand_sweep(params + list(hydra_cfg.overrides.task))}
    except Exception as exc:  # an unusual sweeper: keep every folder rather than guess
        log.warning("cannot expand the sweep of %s (%s): every job folder is reported", path, exc)
        return None


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Every job's overrides of a grid sweep, in Hydra's basic-sweeper order and spelling (``key=value``,
    the key with its ``+``/``~`` prefix), through Hydra's public override parser: ``["a=1,2", "b=x"]`` ->
    ``[["a=1", "b=x"], ["a=2", "b=x"]]``. An interval or other non-discrete sweep raises ValueError."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    axes: dict[str, list[str]] = {}  # a key given twice (sweeper param, then command line): the later wins
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        axes.pop(key, None)
        if not override.is_sweep_override():
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise ValueError(f"{key}: a {type(override.value()).__name__} is not a grid of values")
    return [list(job) for job in itertools.product(*axes.values())]


def override_values(overrides: list[str]) -> dict:
    """``["seq_len=128", "+data.x=a"]`` -> ``{"seq_len": 128, "data.x": "a"}`` (values parsed as YAML)."""
    import yaml

    values = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        values[key.lstrip("+~")] = parsed
    return values


def _natural(name: str):
    return (0, int(name)) if name.isdigit() else (1, name)


def setting(job: dict, key: str):
    """A job's value of a setting: from its ``metrics.json`` ``run`` record, else from its overrides."""
    run = job["metrics"].get("run", {})
    return run[key] if key in run else job.get("override_values", {}).get(key)


def logger_config(sweep_dir: str | Path, jobs: list[dict]) -> dict | None:
    """The ``logger`` settings the sweep's jobs ran with (from the first job's ``.hydra/config.yaml``)."""
    import yaml

    for job in jobs:
        path = Path(sweep_dir) / job["folder"] / ".hydra" / "config.yaml"
        if path.exists():
            return (yaml.safe_load(path.read_text()) or {}).get("logger")
    return None
