"""The offline dashboard's data: per-layer panels of a sweep as plain numbers, one view per combination of
the swept settings other than the x axis, one curve per x value (e.g. ``seq_len``) with its seed spread.

The values are the jobs' ``metrics.json`` ``by_layer`` rows: the rows ``prune.job.tracked`` logs to W&B as
``by_layer/<field>`` against ``layer``, so the HTML shows what the W&B workspace shows (mean and standard
deviation over the seeds of a condition, as its ``groupby_aggfunc="mean"``, ``groupby_rangefunc="stddev"``).
"""
from __future__ import annotations

import math
import statistics

from prune.report.conditions import LABELS

# (by_layer field, panel title, y axis label): the W&B workspace's per-layer panels, one field each
PANELS = (
    ("grad_abs_mean", "mean |grad|, all prunable weights", "mean |grad|"),
    ("grad_abs_std", "std of |grad|, all prunable weights", "std |grad|"),
    ("grad_abs_mean_batch_cv", "batch-to-batch CV of mean |grad|", "CV over batches"),
    ("attention_grad_abs_mean", "mean |grad|, attention", "mean |grad|"),
    ("attention_grad_abs_std", "std of |grad|, attention", "std |grad|"),
    ("mlp_grad_abs_mean", "mean |grad|, MLP", "mean |grad|"),
    ("mlp_grad_abs_std", "std of |grad|, MLP", "std |grad|"),
    ("attention_kept_fraction", "attention groups kept", "fraction kept"),
    ("mlp_kept_fraction", "MLP channels kept", "fraction kept"),
    ("layer_importance", "layer score (whole layer)", "score"),
    ("attention_importance", "layer score (attention block)", "score"),
    ("mlp_importance", "layer score (MLP block)", "score"),
)


def wandb_key(field: str) -> str:
    """The W&B history key a ``by_layer`` field is logged under (``prune.report.tracking.WandbTracker.log_by_layer``)."""
    return f"by_layer/{field}"


def _curve(rows_per_seed: list[list[dict]], field: str) -> dict | None:
    """Mean and sd over seeds of one field per layer (layers every seed has), with the seeds' own values."""
    per_seed = [{r["layer"]: r[field] for r in rows if r.get(field) is not None} for rows in rows_per_seed]
    per_seed = [s for s in per_seed if s]
    if not per_seed:
        return None
    layers = sorted(set.intersection(*(set(s) for s in per_seed)))
    values = [[float(s[layer]) for s in per_seed] for layer in layers]
    return {
        "layers": layers,
        "mean": [statistics.fmean(v) for v in values],
        "sd": [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values],
        "seeds": [list(v) for v in zip(*values)] if values else [],
        "n": len(per_seed),
    }


def _seed(job: dict):
    return job["metrics"].get("run", {}).get("seed", job.get("override_values", {}).get("seed"))


def dashboard_data(sweep, verdicts: list[dict] | None = None) -> dict:
    """Everything the page draws: panels that have data in some job, the views (selector entries), verdicts."""
    views = []
    for key, jobs in sweep.series().items():
        curves = []
        for x, group in sweep.by_x(jobs).items():
            rows = [j["metrics"].get("by_layer") or [] for j in group]
            fields = {f: c for f, *_ in PANELS if (c := _curve(rows, f))}
            curves.append({"x": x, "n": len(group), "seeds": [_seed(j) for j in group], "fields": fields})
        views.append({"label": sweep.series_label(key), "curves": curves})
    present = {f for v in views for c in v["curves"] for f in c["fields"]}
    return {
        "sweep": sweep.dir.resolve().name,
        "x_key": sweep.x_key,
        "x_label": LABELS.get(sweep.x_key, sweep.x_key),
        "selector_keys": list(sweep.series_keys),
        "jobs": len(sweep.jobs),
        "ok": len(sweep.ok),
        "panels": [{"field": f, "wandb_key": wandb_key(f), "title": t, "y_label": y} for f, t, y in PANELS if f in present],
        "views": views,
        "verdicts": [{"text": v["text"].lstrip("- ").replace("**", ""), "series": v.get("series"), "role": v.get("role")}
                     for v in verdicts or []],
    }


def finite(values: list[float]) -> list[float | None]:
    """JSON and plotly want no NaN: a missing value is a gap."""
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values]
