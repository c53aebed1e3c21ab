"""``evaluate_tasks``: the in-memory model (pruned or not) on lm-eval tasks, one metric per task and their mean."""
from __future__ import annotations

import contextlib
import os
import random
import time

from prune.eval.downstream.tasks import TASK_METRICS, DownstreamError, check_task_settings, resolve_tasks


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


SUBSET_SEED = 0  # the item subsets of eval.tasks_items: fixed, independent of the job's seed
ITEM_METRICS = ("acc", "acc_norm")  # kept per item (0/1) for comparisons paired by item


def item_subset(task: str, n_docs: int, n: int | None) -> list[int] | None:
    """The doc indices ``eval.tasks_items`` evaluates: the first ``n`` of a permutation of the ``n_docs``
    items drawn with a seed fixed per task name (the same items in every job; None = all), sorted. The
    subsets are nested: the n items of a study are among the m > n of a larger run on the same file."""
    if n is None or n >= n_docs:
        return None
    order = list(range(n_docs))
    random.Random(f"{SUBSET_SEED}:{task}").shuffle(order)
    return sorted(order[:n])


def _item_record(logged: list[dict]) -> dict:
    """Per-item correctness, compact: the doc ids in order and one '0'/'1' string per metric."""
    logged = sorted(logged, key=lambda s: s["doc_id"])
    record = {"doc_ids": [int(s["doc_id"]) for s in logged]}
    for metric in ITEM_METRICS:
        if logged and metric in logged[0]:
            record[metric] = "".join("1" if float(s[metric]) > 0.5 else "0" for s in logged)
    return record


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
    items: dict[str, int] | None = None,
) -> dict:
    """Evaluate the in-memory ``model`` on lm-eval ``tasks``; returns per-task metric and the mean.

    ``{"tasks": {name: {"metric", "value", "stderr", "n", "metrics", "items"}}, "mean", "limit", "num_fewshot",
    "seconds"}``: ``value`` is the metric of ``TASK_METRICS`` (``acc`` for tasks not listed, overridable
    with ``metrics={task: metric}``), ``n`` the number of items evaluated (``limit`` caps it: the first
    ``limit`` items of the task's evaluation split), ``metrics`` every acc / acc_norm lm-eval computed,
    and ``mean`` the unweighted mean of ``value`` over tasks (tags are expanded into their tasks).
    ``items`` (task -> n, ``eval.tasks_items``) evaluates a fixed seeded subset of n items of that task
    instead (``item_subset``; tasks not named keep ``limit``); ``items`` of each task's result keeps
    which items were right (``_item_record``), so that two models can be compared item by item.
    ``local_task_dir`` is a folder of lm-eval task YAMLs (or a list of them) added to lm-eval's built-in
    tasks, e.g. ``prune.testbed.tasks.ensure_task_dir(...)``. ``device`` is where inputs go (default: the
    model's device; the model is not moved). ``batch_size`` may also be lm-eval's ``"auto"``. Tasks whose
    YAML fixes ``num_fewshot`` (the testbed tasks: 0) keep it. The model's train/eval mode and the global
    random states are restored afterwards.
    """
    import torch

    check_task_settings(batch_size, limit, items)
    manager, leaves = resolve_tasks(tasks, local_task_dir)
    names = list(dict.fromkeys(n for group in leaves.values() for n in group))
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import get_task_dict

    task_objects, samples = names, None
    if items:  # lm-eval takes a limit or per-task doc indices, not both: the limit becomes indices too
        built = get_task_dict(names, manager)
        task_objects, samples = [built[n] for n in names], {}
        for name in names:
            n_docs = len(built[name].eval_docs)
            chosen_ids = (item_subset(name, n_docs, items[name]) if name in items
                          else list(range(min(limit, n_docs))) if limit else None)
            if chosen_ids is not None:
                samples[name] = chosen_ids

    chosen = {**TASK_METRICS, **(metrics or {})}
    was_training = model.training
    started = time.time()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, backend="causal")
        if device is not None and str(device) != "auto":
            lm._device = torch.device(device)  # HFLM takes the device of a passed-in model; inputs go here
        with _preserved_rng():
            out = simple_evaluate(
                model=lm, tasks=task_objects, task_manager=manager, limit=None if items else limit,
                samples=samples or None, num_fewshot=num_fewshot, log_samples=True, bootstrap_iters=1000,
            )
    finally:
        model.train(was_training)
    results, counts, logged = out["results"], out.get("n-samples", {}), out.get("samples") or {}
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
            "items": _item_record(logged.get(name) or []),
        }
    mean = sum(r["value"] for r in report.values()) / len(report)
    return {
        "tasks": report, "mean": mean, "limit": limit, "items": dict(items or {}), "num_fewshot": num_fewshot,
        "seconds": round(time.time() - started, 2),
    }
