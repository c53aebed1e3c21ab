"""A finished job in W&B: the summary keys of ``metrics.flat`` (``ppl_after/512``, ``acc_after/<task>``,
``importance_accuracy/mlp``, ...), per-layer rows and plots."""
from __future__ import annotations

from prune.metrics import flat


def log_summary(tracker, metrics: dict, rows: list[dict], images: dict) -> None:
    tracker.summary(flat(metrics))
    tracker.log_by_layer(rows)
    tracker.log_table("by_layer_table", rows)
    tracker.log_images(images)
