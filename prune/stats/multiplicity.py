"""Holm's step-down adjustment: the secondary comparisons of a study, adjusted within the study.

A study names one primary endpoint before it runs (``study.primary``); it is tested at alpha as is.
Every other comparison is secondary, and its p is adjusted over the family of secondary p values so
that the chance of any false "differs" among them stays at most alpha (family-wise error, any
dependence between the tests). Holm is uniformly more powerful than Bonferroni and needs no assumption.
"""
from __future__ import annotations

import math


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p values, in the input order. NaN entries (no test) stay NaN and do not count.

    Sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))`` with m the number of
    tests: the i-th smallest is compared with alpha / (m - i + 1).
    """
    order = sorted((p, i) for i, p in enumerate(pvalues) if p is not None and not math.isnan(p))
    m = len(order)
    out = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
