"""Two arms' task accuracy compared item by item, pooled over seeds.

A job keeps which items of a task it answered right (``prune.eval.downstream.evaluate``: doc ids and a '0'/'1'
string). Every job of a study evaluates the same items (``eval.tasks_items``: a subset fixed by task, not
by seed), so two arms can be compared on each item rather than only on their per-seed accuracies.

``compare_items(ref, other, margin)``: for every item evaluated in all jobs of both arms, the item's score
in an arm is the fraction of that arm's seeds that got it right; the test is the paired t-test over items
of these scores (scipy's ``ttest_rel`` through ``prune.stats.compare``: difference, two-sided p, 90 % CI,
TOST against ``±margin``). Where the seeds pair (the same seeds in both arms), the item's difference is
the mean of its per-seed differences. With one seed per arm the differences are -1, 0 or +1 and the test
is the large-sample form of McNemar's test; ``mcnemar_exact`` gives the exact one for that case.
``bootstrap_ci`` is scipy's paired bootstrap over items of the same difference, a distribution-free check
of the t interval (the study row carries it; it decides nothing).

Why the item, not the (seed, item) pair, is the unit: the same items recur in every seed, and an item that
one arm's pruning breaks tends to break at every seed; McNemar over all pooled (seed, item) pairs would
count such an item once per seed as if independent and understate the uncertainty. Averaging over seeds
within an item keeps the items independent (they are a random sample of the benchmark).

What it answers: "on the pruned models of these seeds, does one arm answer more of these items right?"
The seed-to-seed spread of whole models is not in it; the per-seed comparison of the same accuracy
(``acc_after``, paired by seed) is the one that generalizes over calibration draws. The two are reported
side by side.
"""
from __future__ import annotations

import dataclasses

from prune.stats.compare import Comparison, compare


def correct_by_item(record: dict, metric: str) -> dict[int, int]:
    """A job's per-item record (``{"doc_ids": [...], metric: "0110..."}``) as doc id -> 0/1."""
    bits = record.get(metric) or ""
    ids = record.get("doc_ids") or []
    if len(bits) != len(ids):
        return {}
    return {int(i): int(b) for i, b in zip(ids, bits)}


def _item_scores(arm: dict[object, dict[int, int]], items: list[int]) -> dict[int, float]:
    return {i: sum(job[i] for job in arm.values()) / len(arm) for i in items}


def compare_items(ref: dict, other: dict, margin: float) -> Comparison | None:
    """``ref`` / ``other``: seed -> {doc id: 0/1}. None without a job on each side or an item common to all."""
    ref = {s: v for s, v in ref.items() if v}
    other = {s: v for s, v in other.items() if v}
    if not ref or not other:
        return None
    common = set.intersection(*(set(v) for v in [*ref.values(), *other.values()]))
    if not common:
        return None
    items = sorted(common)
    c = compare(_item_scores(ref, items), _item_scores(other, items), paired=True, margin=margin)
    return dataclasses.replace(c, test="items") if c is not None else None


def bootstrap_ci(ref: dict, other: dict, level: float = 0.95, n_resamples: int = 2000) -> tuple[float, float] | None:
    """A distribution-free check of the t interval: scipy's paired bootstrap over items (percentile, fixed
    random state) of the mean item difference, on the same item scores as ``compare_items``."""
    import numpy as np
    from scipy.stats import bootstrap

    ref = {s: v for s, v in ref.items() if v}
    other = {s: v for s, v in other.items() if v}
    if not ref or not other:
        return None
    items = sorted(set.intersection(*(set(v) for v in [*ref.values(), *other.values()])))
    a = np.array(list(_item_scores(ref, items).values()))
    b = np.array(list(_item_scores(other, items).values()))
    if len(items) < 2 or np.all(a == b):
        return None
    res = bootstrap((a, b), lambda x, y, axis=-1: np.mean(y - x, axis=axis), paired=True, vectorized=True,
                    confidence_level=level, n_resamples=n_resamples, method="percentile",
                    random_state=np.random.default_rng(0))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mcnemar_exact(ref: dict[int, int], other: dict[int, int]) -> dict:
    """One job against one job on their common items: the discordant counts and the exact McNemar p, i.e.
    scipy's two-sided binomial test of one kind of discordant item among all discordant ones at 1/2
    (1.0 when no item is discordant)."""
    from scipy.stats import binomtest

    items = sorted(ref.keys() & other.keys())
    ref_only = sum(1 for i in items if ref[i] and not other[i])
    other_only = sum(1 for i in items if other[i] and not ref[i])
    p = binomtest(ref_only, ref_only + other_only, 0.5).pvalue if ref_only + other_only else 1.0
    return {"items": len(items), "ref_only": ref_only, "other_only": other_only, "p": float(p)}
