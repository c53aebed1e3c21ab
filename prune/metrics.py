"""The record a job writes as ``metrics.json``: every key, its type and its meaning, in one place.

``pipeline``/``record``/``recovery`` write it through :func:`checked` (an undeclared key or a value of the
wrong type is a bug and raises, naming the key); ``report.jobs`` reads it through :func:`validate` (a file
of another version keeps its extra keys, with a warning). The report and W&B flatten it with
:func:`flat`. Torch-free: reading results never loads a model library.

Per-length families (``ppl_after``, ...) are keyed by the evaluation length as a string (JSON keys), e.g.
``{"128": 31.2, "512": 29.8}``; per-task families (``acc_after``, ...) by task name plus ``mean``.
"""
from __future__ import annotations

import logging
from typing import Any, Literal, Optional

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic validates typing_extensions TypedDicts on Python < 3.12

log = logging.getLogger(__name__)

Status = Literal["running", "ok", "refused", "failed", "interrupted"]
PerLength = dict[str, float]  # evaluation length ("512") -> value
PerTask = dict[str, float]  # task name (and "mean") -> accuracy
PerPhase = dict[str, float]  # phase ("importance", "eval_after", ..., "total") -> value


class RunInfo(TypedDict, total=False):
    """What the job was (``job.naming.run_info``); the report groups jobs by these."""

    name: str
    importance: str
    seq_len: int
    lengths: dict[str, int]
    batch_size: int
    num_samples: Optional[int]
    token_budget: Optional[int]
    calibration_block: Optional[int]
    seed: int
    pruning: str
    ratio: Optional[float]
    model: str
    data: str


class KeptRow(TypedDict, total=False):
    """What one layer keeps (``pruning.plan.PruningPlan.kept_table``)."""

    layer: int
    query_heads: int
    kv_heads: int
    mlp_channels: int
    attention_kept_fraction: float
    mlp_kept_fraction: float
    removed: bool


@with_config(ConfigDict(extra="forbid"))
class JobMetrics(TypedDict, total=False):
    """``metrics.json``. Only ``status`` and ``output_dir`` are there from the start; a job that stops early
    has the keys of the phases it finished (``status`` and ``error`` say why it stopped)."""

    status: Status
    error: str  # one line: what stopped the job
    traceback: str  # a failed job (a bug) only
    output_dir: str
    run: RunInfo
    config_digest: str  # what resume compares (``job.naming.config_digest``)
    settings: dict[str, Any]  # the result-defining settings (``job.naming.result_settings``)
    torch_threads: int
    data: dict[str, Any]  # text source, token counts, calibration windows per method, eval lengths
    memory_estimate_gib: dict[str, float]  # the chosen importance pass, by part (weights, gradients, ...)
    memory_estimate_by_mean_grad_gib: dict[str, float]  # total per mean-gradient kind
    ppl_before: PerLength
    nll_before: PerLength
    eval_tokens: PerLength
    eval_before_cached: bool
    ppl_after: PerLength
    nll_after: PerLength
    eval_after_cached: bool
    acc_before: PerTask
    acc_after: PerTask
    tasks_after_cached: bool
    downstream: dict[str, Any]  # {"before"/"after": lm-eval results per task, mean, limit, seconds}
    layer_scores: dict[str, Any]  # the layer criterion: name, length, one score per layer
    importance_accuracy: dict[str, Any]  # rank agreement with the removal truth, per truth length
    importance_extra: dict[str, Any]  # what an importance method reports beside its scores
    grad_stats: Optional[dict[str, Any]]  # |grad| per layer and part: the whole pass and per batch
    params_before: int
    params_after: int
    prunable_params_before: int
    prunable_params_after: int
    prunable_ratio_removed: float
    total_ratio_removed: float
    ratio_note: str  # the plan's ratio differs from the asked one (and why)
    kept: list[KeptRow]
    by_layer: list[dict[str, Any]]  # per layer: kept fractions, |grad| mean/std, layer scores
    plots: dict[str, str]  # W&B key -> image file
    pruned_model_dir: Optional[str]
    ppl_recovered: PerLength  # after recovery training (``recovery``)
    nll_recovered: PerLength
    acc_recovered: PerTask
    recovery: dict[str, Any]  # how the pruned model was recovered (method, steps, seed, losses, tokens)
    ppl_dense_recovered: PerLength  # the dense model recovered the same way (the control)
    recovery_gap: PerLength  # ppl_recovered / ppl_dense_recovered - 1
    recovery_control: dict[str, Any]
    timings: PerPhase  # seconds
    peak_memory_mb: PerPhase
    memory_kind: Optional[str]  # what peak_memory_mb measures (CUDA allocator or process RSS)
    flops: PerPhase  # model FLOPs of the phase's forward/backward passes
    flops_per_s: PerPhase


def _declared(kind: str) -> tuple[str, ...]:
    return tuple(k for k, t in JobMetrics.__annotations__.items() if getattr(t, "__forward_arg__", t) == kind)


KEYS: tuple[str, ...] = tuple(JobMetrics.__annotations__)
PER_LENGTH = _declared("PerLength")  # ppl_before, ppl_after, ...: one value per evaluation length
PER_TASK = _declared("PerTask")  # acc_before, acc_after, acc_recovered

# objective=...: the keys a sweeper can minimise or maximise, and what names their entries (one number each
# for the others): ``ppl_after.512``, ``acc_after.<task>``, ``prunable_ratio_removed``
OBJECTIVES = {k: "lengths" if k in PER_LENGTH else "tasks" if k in PER_TASK else None
              for k in ("ppl_after", "ppl_before", "ppl_recovered", "acc_after", "acc_before", "acc_recovered",
                        "prunable_ratio_removed", "total_ratio_removed", "params_after")}

# What a summary row and a W&B run summary hold, flattened (``flat``): the outcomes, sizes and cost; of
# ``recovery`` only how it ran (RECOVERY_FIELDS), not where its files went or how long it took.
RECOVERY_SUMMARY = ("ppl_recovered", "ppl_dense_recovered", "recovery_gap", "acc_recovered", "recovery")
RECOVERY_FIELDS = ("method", "steps", "seed", "trainable_params", "train_tokens", "stream_tokens", "loss_first", "loss_last")
SUMMARY = ("ppl_before", "ppl_after", "acc_before", "acc_after", "params_before", "params_after",
           "prunable_ratio_removed", "total_ratio_removed", "importance_accuracy", *RECOVERY_SUMMARY,
           "timings", "peak_memory_mb")

_ADAPTER = TypeAdapter(JobMetrics)


class MetricsError(TypeError):
    """A record that does not match ``JobMetrics`` (a bug in the writer, or a file of another version)."""


def _problems(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '<record>'}: {e['msg']}" for e in error.errors()[:5])


def checked(metrics: dict) -> dict:
    """``metrics`` itself, after checking it against ``JobMetrics`` (raises MetricsError naming the keys)."""
    try:
        _ADAPTER.validate_python(metrics, strict=True)
    except ValidationError as exc:
        raise MetricsError(f"metrics.json does not match prune.metrics.JobMetrics: {_problems(exc)}") from None
    return metrics


def validate(metrics: dict, source: str = "metrics.json") -> dict:
    """A record read from disk: keys this version does not declare, at any depth, are kept (with a warning,
    once per file); a declared key of the wrong type raises MetricsError."""
    extra = [k for k in metrics if k not in KEYS]
    if extra:
        log.warning("%s: keys this version does not know (kept as they are): %s", source, ", ".join(extra))
    try:
        _ADAPTER.validate_python({k: v for k, v in metrics.items() if k in KEYS})
    except ValidationError as exc:
        nested_extra = all(e["type"] == "extra_forbidden" for e in exc.errors())
        if not nested_extra:
            raise MetricsError(f"{source}: {_problems(exc)}") from None
        log.warning("%s: fields this version does not know (kept as they are): %s", source, _problems(exc))
    return metrics


def flat(metrics: dict, keys: tuple[str, ...] = SUMMARY, sep: str = "/") -> dict:
    """The scalar values under ``keys``, one flat key each (``ppl_after/512``, ``timings/total``,
    ``importance_accuracy/by_truth/512/mlp``), by ``pandas.json_normalize``; lists are left out."""
    import pandas as pd

    picked = {k: metrics[k] for k in keys if metrics.get(k) not in (None, {}, [])}
    if isinstance(picked.get("recovery"), dict):
        picked["recovery"] = {k: v for k, v in picked["recovery"].items() if k in RECOVERY_FIELDS}
    if not picked:
        return {}
    row = pd.json_normalize(picked, sep=sep).to_dict("records")[0]
    return {k: v for k, v in row.items() if not isinstance(v, (list, dict))}
