"""Downstream (zero-shot multiple-choice) accuracy of the in-memory model with lm-evaluation-harness.

``check_tasks`` runs before any model work and refuses, in one line, a task lm-eval does not know or whose
data set cannot be loaded (offline: not in the local cache). ``evaluate_tasks`` wraps the model that is
in memory, pruned or not, in lm-eval's ``HFLM`` and runs ``lm_eval.simple_evaluate``; it returns one
metric per task (the one the literature reports, see ``STANDARD_TASKS``) and their unweighted mean.

lm-eval is an optional dependency (``pip install -e .[eval]``, pinned to 0.4.13 in setup.cfg) and is
imported only inside these functions, so the rest of the package works without it.

Which metric per task
---------------------
lm-eval reports ``acc`` (argmax of the summed log-likelihood of each choice) and, for tasks whose choices
differ in length, ``acc_norm`` (the same divided by the choice's length in bytes). Papers differ:

* LLM-Pruner (Ma et al., 2023; BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA): ``acc`` for BoolQ,
  PIQA, WinoGrande and ARC-e, ``acc_norm`` for HellaSwag, ARC-c and OBQA. Its code prints both; the
  paper's LLaMA-7B numbers match ``acc`` on the first four and ``acc_norm`` on the last three
  (horseee/LLM-Pruner issue #25 reproduces the table both ways). Structured-pruning papers that compare
  with LLM-Pruner usually copy this table and with it this convention.
* Wanda (Sun et al., 2023; BoolQ, RTE, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA): ``acc`` everywhere
  (its dense LLaMA-7B HellaSwag 56.9 and OBQA 34.4 are the ``acc`` values).
* SliceGPT (Ashkboos et al., 2024; PIQA, WinoGrande, HellaSwag, ARC-e, ARC-c): ``acc_norm`` wherever the
  task reports it, else ``acc`` (``result.get('acc_norm,none', result['acc,none'])`` in its
  ``run_lm_eval.py``), i.e. ``acc`` only for WinoGrande.

This project prunes whole heads and channels as LLM-Pruner does and compares against its table, so
``STANDARD_TASKS`` follows LLM-Pruner. Every task's result also keeps all of ``acc`` / ``acc_norm`` that
lm-eval computed (``metrics``), so the Wanda or SliceGPT convention can be recomputed from ``metrics.json``;
``evaluate_tasks(metrics={...})`` changes the reported one.
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import os
import random
import time
from pathlib import Path

from prune.errors import DownstreamError  # re-exported: defined with the other refusals

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
}
LOCAL_TESTBED_HINT = "the local testbed tasks testbed_longrange / testbed_local (prune.testbed.tasks, no download)"
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


def _resolve(tasks, local_task_dir):
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
    from lm_eval.tasks._index import Kind

    leaves: dict[str, list[str]] = {}
    for name in names:
        entry = index[name]
        if entry.kind == Kind.TAG:
            leaves[name] = sorted(entry.tags)
        elif entry.kind == Kind.GROUP:
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
def check_task_settings(batch_size, limit) -> None:
    """Refuse a downstream batch size or item limit that lm-eval cannot take (one line, no model needed)."""
    if isinstance(batch_size, bool) or not (
        (isinstance(batch_size, int) and batch_size > 0) or (isinstance(batch_size, str) and batch_size.startswith("auto"))
    ):
        raise DownstreamError(f"eval.tasks_batch_size={batch_size} must be a positive integer or 'auto'")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise DownstreamError(f"eval.tasks_limit={limit} must be a positive integer or null")


def check_tasks(tasks: list[str], local_task_dir: str | os.PathLike | list | None = None) -> None:
    """Refuse, in one line (``DownstreamError``, a ValueError), tasks that cannot run; cheap, no model needed.

    Checks that lm-eval is installed, that every name is an lm-eval task or tag (built in, or in
    ``local_task_dir``), and that every task's data set can be loaded now: local data files exist; a hub
    data set is resolved with ``datasets.load_dataset_builder`` (metadata only), which offline succeeds
    only if the data set is in the local cache.
    """
    manager, leaves = _resolve(tasks, local_task_dir)
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


@contextlib.contextmanager
def _preserved_rng():
    """simple_evaluate seeds python, numpy and torch globally; give the caller its RNG state back."""
    import numpy as np
    import torch

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _number(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" for stderrs it did not compute
    return value


def evaluate_tasks(
    model,
    tokenizer,
    tasks: list[str],
    batch_size: int | str,
    limit: int | None,
    device=None,
    local_task_dir: str | os.PathLike | list | None = None,
    num_fewshot: int = 0,
    metrics: dict[str, str] | None = None,
) -> dict:
    """Evaluate the in-memory ``model`` on lm-eval ``tasks``; returns per-task metric and the mean.

    ``{"tasks": {name: {"metric", "value", "stderr", "n", "metrics"}}, "mean", "limit", "num_fewshot",
    "seconds"}``: ``value`` is the metric of ``TASK_METRICS`` (``acc`` for tasks not listed, overridable
    with ``metrics={task: metric}``), ``n`` the number of items evaluated (``limit`` caps it: the first
    ``limit`` items of the task's evaluation split), ``metrics`` every acc / acc_norm lm-eval computed,
    and ``mean`` the unweighted mean of ``value`` over tasks (tags are expanded into their tasks).
    ``local_task_dir`` is a folder of lm-eval task YAMLs (or a list of them) added to lm-eval's built-in
    tasks, e.g. ``prune.testbed.tasks.ensure_task_dir(...)``. ``device`` is where inputs go (default: the
    model's device; the model is not moved). ``batch_size`` may also be lm-eval's ``"auto"``. Tasks whose
    YAML fixes ``num_fewshot`` (the testbed tasks: 0) keep it. The model's train/eval mode and the global
    random states are restored afterwards.
    """
    import torch

    check_task_settings(batch_size, limit)
    manager, leaves = _resolve(tasks, local_task_dir)
    names = list(dict.fromkeys(n for group in leaves.values() for n in group))
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    chosen = {**TASK_METRICS, **(metrics or {})}
    was_training = model.training
    started = time.time()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, backend="causal")
        if device is not None and str(device) != "auto":
            lm._device = torch.device(device)  # HFLM takes the device of a passed-in model; inputs go here
        with _preserved_rng():
            out = simple_evaluate(
                model=lm, tasks=names, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                log_samples=False, bootstrap_iters=1000,
            )
    finally:
        model.train(was_training)
    results, counts = out["results"], out.get("n-samples", {})
    report = {}
    for name in names:
        res = results[name]
        metric = chosen.get(name, "acc")
        if f"{metric},none" not in res:
            available = sorted(k.split(",")[0] for k in res if "," in k and "stderr" not in k)
            raise DownstreamError(f"task '{name}' reports no '{metric}' (it has {', '.join(available)})")
        report[name] = {
            "metric": metric,
            "value": float(res[f"{metric},none"]),
            "stderr": _number(res.get(f"{metric}_stderr,none")),
            "n": int(counts.get(name, {}).get("effective", 0)) or None,
            "metrics": {m: float(res[f"{m},none"]) for m in ("acc", "acc_norm", "perplexity") if f"{m},none" in res},
        }
    mean = sum(r["value"] for r in report.values()) / len(report)
    return {
        "tasks": report, "mean": mean, "limit": limit, "num_fewshot": num_fewshot,
        "seconds": round(time.time() - started, 2),
    }
