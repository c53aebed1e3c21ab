"""Every comparison a sweep report judges: the reference x value against each other one, within each series.

Rows carry their numbers only (``prune.report.verdicts.judge`` / ``overlap_row``); ``prune.report.study`` marks
the primary one, adjusts the others and words them all.
"""
from __future__ import annotations

from prune.stats import compare, compare_items, mean_sd
from prune.stats.items import bootstrap_ci, correct_by_item
from prune.report.conditions import arm_pairs, pairs_by_seed, removed_sets
from prune.report.jobs import setting
from prune.report.verdicts import judge, margin, overlap_row


def _arm(jobs: list[dict], value) -> dict:
    return {setting(j, "seed"): value(j["metrics"]) for j in jobs}


def comparison(what, x_key, ref, other, a, b, value, kind, lower_is_better, paired, before=None, metric=None, at=None,
               control=None):
    """One verdict row: ``value(metrics)`` of the jobs ``a`` (reference arm) against ``b``; ``before(metrics)``
    gives the unpruned value, for the share of the damage (PPL); ``control(metrics)``, where every job of the
    reference arm has one, replaces it: the dense model recovered the same way (``prune.recovery_control``)."""
    size, log = margin(kind)
    c = compare(_arm(a, value), _arm(b, value), paired, size, log)
    damage = None
    if c is not None and control is not None and all(control(j["metrics"]) is not None for j in a):
        damage = (mean_sd([control(j["metrics"]) for j in a])[0], c.ref_mean, "control")
    elif c is not None and before is not None:
        b_mean = mean_sd([before(j["metrics"]) for j in a])[0]
        damage = (b_mean, c.ref_mean)
    return judge(what, x_key, ref, other, c, kind, lower_is_better, damage, metric, at)


def _items(job: dict, task: str) -> dict[int, int]:
    """A job's per-item correctness on ``task`` after pruning, in the metric the task reports."""
    result = ((((job["metrics"].get("downstream") or {}).get("after") or {}).get("tasks") or {}).get(task)) or {}
    return correct_by_item(result.get("items") or {}, result.get("metric", "acc"))


def item_comparison(label, x_key, ref, other, a, b, task) -> dict | None:
    """The accuracy on ``task`` of arm ``b`` against arm ``a``, paired by item and pooled over seeds
    (``prune.stats.items``); None where the jobs kept no per-item record."""
    arms = [{setting(j, "seed"): _items(j, task) for j in jobs} for jobs in (a, b)]
    size, log = margin("accuracy")
    c = compare_items(*arms, size)
    seeds = sorted({s for arm in arms for s, v in arm.items() if v}, key=str)
    what = f"[{label}] {task} accuracy after pruning, paired by item (pooled over {len(seeds)} seeds)"
    row = judge(what, x_key, ref, other, c, "accuracy", False, None, "acc_items", task)
    if row is not None:
        row["bootstrap_ci90"] = bootstrap_ci(*arms, level=0.90)  # a check of the t interval, decides nothing
    return row


def verdicts(sweep) -> list[dict]:
    """Every comparison of the reference x value with each other one, within each series (see prune.report.verdicts)."""
    rows = []
    for label, ref, other, groups in arm_pairs(sweep):
        a, b = groups[ref], groups[other]
        paired = pairs_by_seed(a + b, sweep.x_key)

        def add(what, value, kind, lower_is_better, **extra):
            row = comparison(f"[{label}] {what}", sweep.x_key, ref, other, a, b, value, kind, lower_is_better, paired, **extra)
            if row is not None:
                row["series"] = label
                rows.append(row)

        for field, stage in (("ppl_after", "pruning"), ("ppl_recovered", "recovery")):  # recovery: where jobs ran it
            for length in sweep.eval_lengths():
                add(f"PPL after {stage}, eval window {length}", lambda m, L=length, f=field: (m.get(f) or {}).get(L), "ppl", True,
                    before=lambda m, L=length: (m.get("ppl_before") or {}).get(L), metric=field, at=length,
                    control=(lambda m, L=length: (m.get("ppl_dense_recovered") or {}).get(L)) if field == "ppl_recovered" else None)
        tasks = sorted({t for j in a + b for t in (j["metrics"].get("acc_after") or {})})
        if len(tasks) == 2 and "mean" in tasks:  # the mean of one task is that task
            tasks.remove("mean")
        for task in tasks:
            name = "mean downstream accuracy" if task == "mean" else f"{task} accuracy"
            add(f"{name} after pruning", lambda m, t=task: (m.get("acc_after") or {}).get(t), "accuracy", False,
                metric="acc_after", at=task)
            row = item_comparison(label, sweep.x_key, ref, other, a, b, task) if task != "mean" else None
            if row is not None:
                row["series"] = label
                rows.append(row)
        truths = sorted({L for j in a + b for L in ((j["metrics"].get("importance_accuracy") or {}).get("by_truth") or {})}, key=int)
        for truth in truths:
            for block in ("attention", "mlp"):
                for measure, name in (("", "Spearman"), ("_wtau", "weighted tau")):
                    add(f"importance accuracy ({name}, {block}; truth on {truth}-token windows)",
                        lambda m, T=truth, k=f"{block}{measure}": (((m.get("importance_accuracy") or {}).get("by_truth") or {}).get(T) or {}).get(k),
                        "spearman", False, metric="importance_accuracy", at=f"{block}{measure}@{truth}")
        plans = [j["plan"] for j in a + b if j["plan"]]
        n_layers = min((len(p["dense_counts"]["attention"]) for p in plans), default=0)
        equal_batches = _tokens_per_batch(a) == _tokens_per_batch(b) is not None  # else a lower CV may be just bigger batches
        if sweep.x_key in ("seq_len", "lengths.taylor") and equal_batches:  # the note's "more stable gradients"
            depth = min((len(j["metrics"].get("by_layer") or []) for j in a + b), default=0)
            for band in layer_bands(depth) or ([(0, depth - 1)] if depth else []):
                add(f"batch-to-batch CV of mean |grad|, layers {band[0]}-{band[1]} (mean over layers; "
                    f"{_tokens_per_batch(a)} tokens per batch in both)", lambda m, B=band: _band_cv(m, B), "grad_cv", True,
                    metric="grad_cv", at=f"L{band[0]}-{band[1]}")
        for band in [None, *layer_bands(n_layers)]:  # the whole model, then shallow / middle / deep thirds
            for block in ("attention", "mlp"):
                arms = [{setting(j, "seed"): in_band(removed_sets(j["plan"])[block], band) for j in g if j["plan"]} for g in (a, b)]
                row = overlap_row(label, block, sweep.x_key, ref, other, *arms, band=band)
                if row is not None:
                    row["series"] = label
                    row["metric"], row["at"] = "removed", block if band is None else f"{block}@L{band[0]}-{band[1]}"
                    rows.append(row)
    return rows


def _tokens_per_batch(jobs: list[dict]) -> int | None:
    """The calibration tokens per batch of an arm (seq_len x batch_size), None unless one value for all."""
    values = {(setting(j, "seq_len") or 0) * (setting(j, "batch_size") or 0) for j in jobs}
    return values.pop() if len(values) == 1 and 0 not in values else None


def _band_cv(metrics: dict, band: tuple[int, int]) -> float | None:
    """Mean over the band's layers of the batch-to-batch CV of each layer's mean |grad| (``by_layer``)."""
    values = [r.get("grad_abs_mean_batch_cv") for r in metrics.get("by_layer") or [] if band[0] <= r["layer"] <= band[1]]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values and len(values) == band[1] - band[0] + 1 else None


def layer_bands(n_layers: int, parts: int = 3) -> list[tuple[int, int]]:
    """Consecutive thirds of the layers (0-9, 10-19, 20-29 for 30): the seed note says 128 tokens bias the
    deep layers and barely the shallow ones, a claim about where the removed groups differ. None for
    models of fewer than 3 layers per band (a testbed's 2-4 layers have no shallow and deep to tell apart)."""
    if n_layers < 3 * parts:
        return []
    edges = [round(i * n_layers / parts) for i in range(parts + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(parts)]


def in_band(groups: set, band: tuple[int, int] | None) -> set:
    return groups if band is None else {g for g in groups if band[0] <= g[0] <= band[1]}
