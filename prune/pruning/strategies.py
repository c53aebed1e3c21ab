"""Allocation strategies: from group scores to a pruning plan that meets a parameter target.

``pruning.ratio`` is the fraction of *prunable* parameters (the attention and MLP projections of the
decoder layers) to remove. Groups are discrete, so the achieved fraction overshoots the target by less
than one group's cost; the run reports the exact figure.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prune.pruning.plan import PruningPlan
from prune.structure import ATTENTION, MLP, GroupScores, ModelShape

NORMALIZATIONS = ("none", "mean", "max", "zscore")


class PruningError(ValueError):
    """A pruning target that cannot be met under the given constraints."""


def normalize_per_layer(scores: GroupScores, how: str) -> GroupScores:
    """Rescale each layer's scores of each block type before a global ranking.

    * ``none``: raw scores (comparable across layers only if the criterion is; Taylor scores are).
    * ``mean`` / ``max``: divide by the layer's mean / max, so every layer's groups compete relative to
      their own layer; it equalises layers whose raw scores differ in scale.
    * ``zscore``: subtract the mean and divide by the standard deviation of the layer.
    """
    if how not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization '{how}': choose one of {', '.join(NORMALIZATIONS)}")
    if how == "none":
        return scores

    def norm(t: torch.Tensor) -> torch.Tensor:
        if t.numel() == 0:
            return t
        if how == "mean":
            return t / t.mean().clamp_min(1e-30)
        if how == "max":
            return t / t.max().clamp_min(1e-30)
        return (t - t.mean()) / t.std(unbiased=False).clamp_min(1e-30)

    return scores.map(norm)


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio < 1:
        raise PruningError(f"pruning.ratio={ratio} must lie strictly between 0 and 1")


@dataclass
class Global:
    """Rank every group of every layer by importance / parameter cost; remove the lowest until the target.

    Every layer keeps at least ``min_attention_groups`` attention groups and ``min_mlp_channels`` MLP
    channels.
    """

    ratio: float = 0.3
    normalize: str = "none"
    min_attention_groups: int = 1
    min_mlp_channels: int = 1
    name: str = "global"

    def plan(self, scores: GroupScores, shape: ModelShape) -> PruningPlan:
        _check_ratio(self.ratio)
        scores = normalize_per_layer(scores, self.normalize)
        costs = {ATTENTION: shape.attention_group_params, MLP: shape.mlp_channel_params}
        keys, values = [], []
        for block in (ATTENTION, MLP):
            for layer, layer_scores in enumerate(scores.block(block)):
                for g, value in enumerate(layer_scores.tolist()):
                    keys.append((block, layer, g))
                    values.append(value / costs[block])
        order = sorted(range(len(keys)), key=lambda k: (values[k], k))
        keep = {b: [set(range(n)) for n in shape.group_counts(b)] for b in (ATTENTION, MLP)}
        minimum = {ATTENTION: self.min_attention_groups, MLP: self.min_mlp_channels}
        target = self.ratio * shape.prunable_params
        removed = 0
        for k in order:
            if removed >= target:
                break
            block, layer, g = keys[k]
            if len(keep[block][layer]) <= minimum[block]:
                continue
            keep[block][layer].discard(g)
            removed += costs[block]
        if removed < target:
            raise PruningError(
                f"pruning.ratio={self.ratio} is unreachable while every layer keeps {self.min_attention_groups} "
                f"attention group(s) and {self.min_mlp_channels} MLP channel(s); lower the ratio"
            )
        return PruningPlan(
            [sorted(s) for s in keep[ATTENTION]], [sorted(s) for s in keep[MLP]], strategy=self.name
        )


@dataclass
class Uniform:
    """Remove the same fraction of attention groups and of MLP channels in every layer (lowest scores first).

    Per layer ``round(ratio * n)`` groups go (at least one group of each kind stays), so with few KV heads
    per layer the achieved ratio can differ from the target; it is reported.
    """

    ratio: float = 0.3
    min_attention_groups: int = 1
    min_mlp_channels: int = 1
    name: str = "uniform"

    def plan(self, scores: GroupScores, shape: ModelShape) -> PruningPlan:
        _check_ratio(self.ratio)
        keep = {}
        for block, minimum in ((ATTENTION, self.min_attention_groups), (MLP, self.min_mlp_channels)):
            keep[block] = []
            for layer_scores in scores.block(block):
                n = layer_scores.numel()
                n_remove = min(round(self.ratio * n), max(n - minimum, 0))
                order = torch.argsort(layer_scores, stable=True).tolist()
                keep[block].append(sorted(order[n_remove:]))
        return PruningPlan(keep[ATTENTION], keep[MLP], strategy=self.name)
