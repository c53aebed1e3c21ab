"""Width strategies: remove attention groups and MLP channels, ranked globally or the same fraction per layer."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prune.errors import PruningError
from prune.pruning.plan import PruningPlan
from prune.pruning.strategies import Strategy, normalize_per_layer
from prune.structure import ATTENTION, MLP, GroupScores, ModelShape


@dataclass
class Global(Strategy):
    """Rank every group of every layer by importance / parameter cost; remove the lowest until the target."""

    normalize: str = "none"
    name: str = "global"

    def plan(self, scores: GroupScores, shape: ModelShape, layer_scores: dict | None = None) -> PruningPlan:
        self._require_groups(scores)
        self.check(shape)
        keep = self._keep_all(shape)
        target = self.ratio * shape.prunable_params
        removed = self._width(normalize_per_layer(scores, self.normalize), shape, keep, {None: target})
        if removed < target:
            raise PruningError(f"pruning.ratio={self.ratio} is unreachable under the protections; lower the ratio")
        self._round_widths(keep, scores, shape)
        return self._plan(keep)


@dataclass
class Uniform(Strategy):
    """Remove the same fraction of attention groups and of MLP channels in every unprotected layer.

    Per layer ``round(ratio * n)`` groups of each kind go (lowest scores first; ``min_*`` always stay), so
    with few KV heads per layer the achieved ratio can differ from the target; it is reported.
    """

    name: str = "uniform"

    def check(self, shape: ModelShape) -> None:
        if not 0 < self.ratio < 1:
            raise PruningError(f"pruning.ratio={self.ratio} must lie strictly between 0 and 1")
        if self.ratio > self.max_layer_fraction:
            raise PruningError(
                f"pruning=uniform removes pruning.ratio={self.ratio} of every layer, above "
                f"pruning.max_layer_fraction={self.max_layer_fraction}; lower the ratio or raise the cap"
            )

    def plan(self, scores: GroupScores, shape: ModelShape, layer_scores: dict | None = None) -> PruningPlan:
        self._require_groups(scores)
        self.check(shape)
        protected = self.protected(len(shape.layers))
        keep = {}
        for block, minimum in ((ATTENTION, self.min_attention_groups), (MLP, self.min_mlp_channels)):
            keep[block] = []
            for layer, layer_scores_ in enumerate(scores.block(block)):
                n = layer_scores_.numel()
                n_remove = 0 if layer in protected else min(round(self.ratio * n), max(n - minimum, 0))
                order = torch.argsort(layer_scores_, stable=True).tolist()
                keep[block].append(set(order[n_remove:]))
        self._round_widths(keep, scores, shape)
        return self._plan(keep)
