"""What a finished job records: metrics assembled from the phases' results, per-layer rows, the plan and
scores on disk, the plots, and the job's W&B summary (flat keys)."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from prune.cache import cached
from prune.files import atomic_write, write_text
from prune.job.inputs import ground_truth_lengths
from prune.job.naming import run_name
from prune.job.tracked import log_summary
from prune.metrics import MetricsError, checked
from prune.structure import ATTENTION, MLP, model_shape

log = logging.getLogger(__name__)


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, default=float))


def write_metrics(path: Path, metrics: dict, raise_mismatch: bool = True) -> None:
    """``metrics.json``, checked against ``JobMetrics`` first. A record that does not match is a bug: it is
    still written in full (nothing measured is lost), the mismatch added to ``error``; with ``raise_mismatch``
    (no other error on its way out) it is also marked ``failed`` and raised, else the job's own status and
    exception stand."""
    try:
        checked(metrics)
    except MetricsError as exc:
        metrics["error"] = "; ".join(filter(None, (metrics.get("error"), str(exc))))
        if raise_mismatch:
            metrics["status"] = "failed"
        write_json(path, metrics)
        if raise_mismatch:
            raise
        log.error("%s", exc)
        return
    write_json(path, metrics)


def calibration_flops(method, shape, windows: dict[str, torch.Tensor]) -> float | None:
    """Model FLOPs of an importance method's passes over its calibration windows (None: not a fixed count)."""
    if not getattr(method, "passes", None) or method.uses not in windows:
        return None
    n, length = windows[method.uses].shape
    return method.passes * shape.forward_flops(length, n)


def eval_flops(shape, results: dict) -> float:
    """Model FLOPs of the forward passes behind ``evaluate_lengths``' results (``windows`` per length)."""
    return sum(shape.forward_flops(int(length), r["windows"]) for length, r in results.items())


def per_layer_rows(grad_stats: dict | None, kept: list[dict], layer_scores: dict | None = None) -> list[dict]:
    """One row per layer: |grad| statistics (whole pass and spread over batches), kept fractions, layer scores."""
    rows = []
    for i, k in enumerate(kept):
        row = {"layer": i, "attention_kept_fraction": k["attention_kept_fraction"], "mlp_kept_fraction": k["mlp_kept_fraction"]}
        for key, values in (layer_scores or {}).items():
            if isinstance(values, list) and i < len(values):
                row[f"{key}_importance"] = values[i]
        if grad_stats:
            g = grad_stats["pass"][i]
            for part in ("attention", "mlp", "all"):
                row[f"{part}_grad_abs_mean"] = g[part]["abs_mean"]
                row[f"{part}_grad_abs_std"] = g[part]["abs_std"]
            batch_means = [b[i]["all"]["abs_mean"] for b in grad_stats["batches"]]
            mean = sum(batch_means) / len(batch_means)
            var = sum((m - mean) ** 2 for m in batch_means) / max(len(batch_means) - 1, 1)
            row["grad_abs_mean_over_batches"] = mean
            row["grad_abs_mean_batch_cv"] = math.sqrt(var) / mean if mean else 0.0
            row["grad_abs_mean"] = row["all_grad_abs_mean"]
            row["grad_abs_std"] = row["all_grad_abs_std"]
        rows.append(row)
    return rows


def record(cfg, out: Path, metrics: dict, tracker, model, shape, total_before: int, before: dict, after: dict, result, plan) -> None:
    total_after = sum(p.numel() for p in model.parameters())
    prunable_after = model_shape(model).prunable_params
    kept = plan.kept_table(shape)
    rows = per_layer_rows(result.grad_stats, kept, result.layer_scores)
    for tag, res in (("acc_before", (metrics.get("downstream") or {}).get("before")),
                     ("acc_after", (metrics.get("downstream") or {}).get("after"))):
        if res:
            metrics[tag] = {**{name: r["value"] for name, r in res["tasks"].items()}, "mean": res["mean"]}
    metrics.update(
        {
            "nll_before": {str(k): v["nll"] for k, v in before.items()},
            "nll_after": {str(k): v["nll"] for k, v in after.items()},
            "eval_tokens": {str(k): v["tokens"] for k, v in before.items()},
            "params_before": total_before,
            "params_after": total_after,
            "prunable_params_before": shape.prunable_params,
            "prunable_params_after": prunable_after,
            "prunable_ratio_removed": 1 - prunable_after / shape.prunable_params,
            "total_ratio_removed": 1 - total_after / total_before,
            "kept": kept,
            "grad_stats": result.grad_stats,
            "by_layer": rows,
            "importance_extra": result.extra,
        }
    )
    scores = {"scores": result.scores.to_dict() if result.scores else None, "layer_scores": result.layer_scores,
              "plan": plan.to_dict()}
    atomic_write(out / "importance.pt", lambda tmp: torch.save(scores, tmp))
    write_json(
        out / "plan.json",
        {**plan.to_dict(), "dense_counts": {ATTENTION: shape.group_counts(ATTENTION), MLP: shape.group_counts(MLP)}},
    )
    from prune.report.job_plots import job_plots

    images = job_plots(out, rows, kept, result.grad_stats, run_name(cfg), metrics.get("layer_scores"))
    metrics["plots"] = images
    log_summary(tracker, metrics, rows, images)


def importance_accuracy(cfg, model, test_stream, eval_lengths, result, model_id, stream_id, progress) -> dict:
    """Rank agreement of this run's group scores with the (cached) true removal effect on held-out text,
    once per ground-truth window length; the flat keys repeat the longest length's values."""
    from prune.data import evaluation_windows
    from prune.eval.ground_truth import importance_accuracy
    from prune.importance.removal import removal_ground_truth

    gt = cfg.eval.ground_truth
    out: dict = {"truth_lengths": ground_truth_lengths(cfg, eval_lengths), "by_truth": {}}
    for length in out["truth_lengths"]:
        windows = evaluation_windows(test_stream, length, gt.max_tokens)
        key = {"model": model_id, "tokens": stream_id, "length": length, "max_tokens": gt.max_tokens,
               "mlp_sample": gt.mlp_sample, "seed": gt.seed}
        truth, _ = cached(
            cfg.cache_dir, "ground_truth", key,
            lambda: removal_ground_truth(model, windows, gt.mlp_sample, gt.seed, cfg.eval.batch_size, progress),
        )
        out["by_truth"][str(length)] = {**importance_accuracy(result.scores, truth), "tokens": int(windows.numel())}
    longest = out["by_truth"][str(out["truth_lengths"][-1])]
    out.update({k: v for k, v in longest.items() if k != "tokens"}, length=out["truth_lengths"][-1])
    return out
