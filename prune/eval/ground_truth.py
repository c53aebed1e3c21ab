"""Ground truth for "how accurate is an importance estimate": the true loss increase per removed group.

For every attention group and a seeded sample of MLP channels, the mean next-token loss on *held-out*
text (evaluation split) with that group alone removed, minus the intact model's loss. An importance
method's accuracy is the rank agreement between its scores and this truth, per block type, measured at
several held-out window lengths (a 128-token calibration is not only graded against long contexts).
This is what makes the seed note's "more accurate gradient estimates" testable. The truth itself is
measured by ``prune.importance.removal.removal_ground_truth``; this module grades scores against it.
"""
from __future__ import annotations

import math

import torch

from prune.structure import ATTENTION, MLP, GroupScores


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    keep = ~(torch.isnan(a) | torch.isnan(b))
    if keep.sum() < 3:
        return float("nan")
    rho = spearmanr(a[keep].numpy(), b[keep].numpy()).statistic
    return float(rho) if not math.isnan(rho) else float("nan")


def weighted_tau(truth: torch.Tensor, scores: torch.Tensor) -> float:
    """Weighted Kendall tau (scipy), weighting pairs by the truth's rank: agreement on the groups that
    matter most counts most, so noise among the many near-zero groups does not decide it."""
    from scipy.stats import weightedtau

    keep = ~(torch.isnan(truth) | torch.isnan(scores))
    if keep.sum() < 3:
        return float("nan")
    tau = weightedtau(truth[keep].numpy(), scores[keep].numpy(), rank=None).statistic
    return float(tau) if not math.isnan(tau) else float("nan")


def top_spearman(truth: torch.Tensor, scores: torch.Tensor, fraction: float = 0.25) -> float:
    """Spearman among the groups whose true effect is in the top ``fraction``."""
    keep = ~(torch.isnan(truth) | torch.isnan(scores))
    t, s = truth[keep], scores[keep]
    k = max(int(round(fraction * len(t))), 0)
    if k < 3:
        return float("nan")
    top = torch.argsort(t, descending=True)[:k]
    return spearman(s[top], t[top])


def importance_accuracy(scores: GroupScores, truth: GroupScores) -> dict:
    """Rank agreement of scores with the true loss increase, per block type and over both: Spearman over
    all measured groups, Spearman over the top quarter by true effect (``*_top``), weighted tau (``*_wtau``)."""
    out = {}
    for block in (ATTENTION, MLP):
        out[block] = spearman(scores.flat(block), truth.flat(block))
        out[f"{block}_top"] = top_spearman(truth.flat(block), scores.flat(block))
        out[f"{block}_wtau"] = weighted_tau(truth.flat(block), scores.flat(block))
    # across blocks the comparable quantity is the loss change per group (not per parameter)
    both_scores = torch.cat([scores.flat(ATTENTION), scores.flat(MLP)])
    both_truth = torch.cat([truth.flat(ATTENTION), truth.flat(MLP)])
    out["all"] = spearman(both_scores, both_truth)
    out["groups"] = {ATTENTION: int((~torch.isnan(truth.flat(ATTENTION))).sum()), MLP: int((~torch.isnan(truth.flat(MLP))).sum())}
    return out
