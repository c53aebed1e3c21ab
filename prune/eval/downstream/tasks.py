"""Which lm-eval tasks a job asks for, their metric, and the checks that refuse an unknown task or an
unloadable data set (offline: not in the local cache) in one line, before any model work."""
from __future__ import annotations

import contextlib
import difflib
import logging
import os
from pathlib import Path

from prune.errors import DownstreamError

log = logging.getLogger(__name__)

# The standard zero-shot set of the structured-pruning literature -> the metric reported (LLM-Pruner's).
STANDARD_TASKS: dict[str, str] = {
    "boolq": "acc",
    "piqa": "acc",
    "hellaswag": "acc_norm",
    "winogrande": "acc",  # lm-eval computes acc only
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "openbookqa": "acc_norm",
}
# Other tasks with a known metric; any task not listed reports ``acc``.
TASK_METRICS: dict[str, str] = {
    **STANDARD_TASKS,
    "rte": "acc",  # Wanda's set
    "testbed_longrange": "acc",  # prune.testbed.tasks: one-token choices, acc_norm adds nothing
    "testbed_local": "acc",
    "local_lambada_openai": "acc",  # prune.eval.downstream.benchmarks: LAMBADA also reports the target's perplexity
    "local_arc_easy": "acc",  # as arc_easy and piqa above; acc_norm is kept in "metrics" and per item
    "local_piqa": "acc",
    "local_blimp": "acc",
}
LOCAL_TESTBED_HINT = ("the local benchmarks local_lambada_openai / local_arc_easy / local_piqa / local_blimp "
                      "(eval.task_data) or the testbed tasks testbed_longrange / testbed_local (no download)")
INSTALL_HINT = "downstream tasks need lm-eval: pip install -e .[eval]"
PACKAGED_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}


# ------------------------------------------------------------------------------------------ helpers
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as exc:
        raise DownstreamError(INSTALL_HINT) from exc
    return lm_eval


def _offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(k, "").strip().lower() in truthy for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _dir_stamp(paths: tuple[Path, ...]) -> tuple:
    return tuple(sorted((str(p), p.stat().st_mtime_ns) for path in paths for p in path.rglob("*.yaml")))


_MANAGERS: dict = {}


def _task_manager(local: tuple[Path, ...], include_defaults: bool):
    """A cached ``TaskManager`` (indexing lm-eval's ~15k built-in tasks takes seconds)."""
    from lm_eval.tasks import TaskManager

    key = (tuple(str(p) for p in local), include_defaults, _dir_stamp(local))
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(
            include_path=[str(p) for p in local] or None, include_defaults=include_defaults
        )
    return _MANAGERS[key]


def _local_dirs(local_task_dir) -> tuple[Path, ...]:
    """``local_task_dir`` (one folder, or a list of folders, or None) as resolved, existing paths."""
    if local_task_dir in (None, ""):
        return ()
    given = [local_task_dir] if isinstance(local_task_dir, (str, os.PathLike)) else list(local_task_dir)
    paths = []
    for item in given:
        path = Path(item).expanduser().resolve()
        if not path.is_dir():
            raise DownstreamError(
                f"local task folder {path} does not exist (write it with prune.testbed.tasks.write_task_dir)"
            )
        paths.append(path)
    return tuple(dict.fromkeys(paths))


def resolve_tasks(tasks, local_task_dir):
    """(task manager, requested name -> leaf task names) after checking that every name exists."""
    _require_lm_eval()
    if isinstance(tasks, str):
        tasks = [tasks]
    names = list(dict.fromkeys(str(t) for t in (tasks or [])))
    if not names:
        raise DownstreamError("no downstream task given (eval.tasks is empty)")
    local = _local_dirs(local_task_dir)
    manager = None
    if local:  # tasks all local: skip indexing lm-eval's built-in tasks
        only_local = _task_manager(local, include_defaults=False)
        if all(n in only_local.task_index for n in names):
            manager = only_local
    if manager is None:
        manager = _task_manager(local, include_defaults=True)
    index = manager.task_index
    unknown = [n for n in names if n not in index]
    if unknown:
        close = sorted({m for n in unknown for m in difflib.get_close_matches(n, manager.all_tasks, 3, 0.75)})
        where = f" or in {', '.join(map(str, local))}" if local else ""
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DownstreamError(f"unknown downstream task(s) {', '.join(unknown)}: not an lm-eval task{where}{hint}")
    tags, groups = set(manager.all_tags), set(manager.all_groups)
    leaves: dict[str, list[str]] = {}
    for name in names:
        if name in tags:
            leaves[name] = sorted(index[name].tags)
        elif name in groups:
            raise DownstreamError(f"downstream task '{name}' is an lm-eval group; list its tasks instead")
        else:
            leaves[name] = [name]
    return manager, leaves


def _dataset_problem(cfg: dict) -> str | None:
    """Why the task's data set cannot be loaded now (None if it can), without loading the data."""
    if cfg.get("custom_dataset") is not None:
        return None  # built by the task's own code: nothing to check cheaply
    path = cfg.get("dataset_path")
    if not path or not isinstance(path, str):
        return None
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    if path in PACKAGED_BUILDERS:  # local files (json, csv, ...): they must exist
        files = kwargs.get("data_files") or {}
        files = files.values() if isinstance(files, dict) else [files]
        for group in files:
            for f in group if isinstance(group, list) else [group]:
                if "://" in str(f):
                    if _offline():
                        return f"its data file {f} is remote and HF_DATASETS_OFFLINE=1"
                elif not Path(str(f)).expanduser().exists():
                    return f"its data file {f} is missing"
        return None
    import datasets

    kwargs.pop("trust_remote_code", None)  # gone in datasets >= 4 (lm-eval drops it too)
    kwargs = {k: v for k, v in kwargs.items() if k in ("data_dir", "data_files", "revision")}
    try:
        with _quiet_datasets():
            datasets.load_dataset_builder(path, cfg.get("dataset_name"), **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure means the task cannot load its data
        state = "not in the local datasets cache and HF_DATASETS_OFFLINE=1" if _offline() else "unavailable"
        return f"its data set {path}{'/' + cfg['dataset_name'] if cfg.get('dataset_name') else ''} is {state} ({_first_line(exc)})"
    return None


@contextlib.contextmanager
def _quiet_datasets():
    import datasets

    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


# --------------------------------------------------------------------------------------------- API
def check_task_settings(batch_size, limit, items=None) -> None:
    """Refuse a downstream batch size or item limit that lm-eval cannot take (one line, no model needed)."""
    if isinstance(batch_size, bool) or not (
        (isinstance(batch_size, int) and batch_size > 0) or (isinstance(batch_size, str) and batch_size.startswith("auto"))
    ):
        raise DownstreamError(f"eval.tasks_batch_size={batch_size} must be a positive integer or 'auto'")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise DownstreamError(f"eval.tasks_limit={limit} must be a positive integer or null")
    for task, n in dict(items or {}).items():
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise DownstreamError(f"eval.tasks_items.{task}={n} must be a positive integer")


def check_tasks(tasks: list[str], local_task_dir: str | os.PathLike | list | None = None, items=None) -> None:
    """Refuse, in one line (``DownstreamError``, a ValueError), tasks that cannot run; cheap, no model needed.

    Checks that lm-eval is installed, that every name is an lm-eval task or tag (built in, or in
    ``local_task_dir``), and that every task's data set can be loaded now: local data files exist; a hub
    data set is resolved with ``datasets.load_dataset_builder`` (metadata only), which offline succeeds
    only if the data set is in the local cache.
    """
    manager, leaves = resolve_tasks(tasks, local_task_dir)
    stray = sorted(set(items or {}) - {n for group in leaves.values() for n in group})
    if stray:
        raise DownstreamError(f"eval.tasks_items names {', '.join(stray)}, not among the tasks evaluated "
                              f"({', '.join(n for group in leaves.values() for n in group)})")
    problems = {}  # leaf task -> (requested name, why)
    for requested, names in leaves.items():
        for name in names:
            if name not in problems:
                problem = _dataset_problem(manager.task_index[name].cfg or {})
                if problem:
                    problems[name] = (requested, problem)
    if problems:
        name, (requested, problem) = next(iter(problems.items()))
        others = [n for n in problems if n != name]
        also = f" (also {', '.join(others)})" if others else ""
        raise DownstreamError(
            f"downstream task '{name}'{'' if requested == name else f' (from {requested})'} cannot run{also}: "
            f"{problem}; download it once online, or use {LOCAL_TESTBED_HINT}"
        )
