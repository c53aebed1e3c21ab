"""A finished job in W&B: flat summary keys (``ppl_after/512``, ``acc_after/<task>``, ...), per-layer rows and plots."""
from __future__ import annotations


def log_summary(tracker, metrics: dict, rows: list[dict], images: dict) -> None:
    flat = {}
    for key in ("ppl_before", "ppl_after"):
        for length, value in metrics[key].items():
            flat[f"{key}/{length}"] = value
    for key in ("params_before", "params_after", "prunable_ratio_removed", "total_ratio_removed"):
        flat[key] = metrics[key]
    for tag in ("acc_before", "acc_after"):
        for task, value in (metrics.get(tag) or {}).items():
            flat[f"{tag}/{task}"] = value
    for block, value in (metrics.get("importance_accuracy") or {}).items():
        if isinstance(value, (int, float)) and block not in ("length", "tokens"):
            flat[f"importance_accuracy/{block}"] = value
    tracker.summary(flat)
    tracker.log_by_layer(rows)
    tracker.log_table("by_layer_table", rows)
    tracker.log_images(images)
