"""``evaluate_tasks``: the in-memory model (pruned or not) on lm-eval tasks, one metric per task and their mean."""
from __future__ import annotations

import contextlib
import os
import random
import time

from prune.downstream.tasks import TASK_METRICS, DownstreamError, check_task_settings, resolve_tasks


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
    manager, leaves = resolve_tasks(tasks, local_task_dir)
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
