"""Width strategies: remove attention groups and MLP channels, ranked globally or the same fraction per layer."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prune.errors import PruningError
from prune.pruning.plan import PruningPlan
from prune.pruning.strategies import Strategy, normalize_per_layer
from prune.settings import GlobalSettings
from prune.structure import ATTENTION, MLP, GroupScores, ModelShape


@dataclass
class Global(GlobalSettings, Strategy):
    """Rank every group of every layer by importance / parameter cost; remove the lowest until the target.

    With ``uniform_widths`` the ranking only decides how many attention groups and MLP channels a layer keeps
    on average; every layer then keeps that many, its best-scored ones, so that all layers have one shape
    (a standard model of the source family, see ``prune.checkpoint``)."""

    name: str = "global"

    def check(self, shape: ModelShape) -> None:
        super().check(shape)
        if self.uniform_widths and (self.keep_first or self.keep_last):
            raise PruningError(f"pruning.uniform_widths=true keeps every layer's width equal, which protected layers "
                               f"(keep_first={self.keep_first}, keep_last={self.keep_last}) cannot; set both to 0")

    def plan(self, scores: GroupScores, shape: ModelShape, layer_scores: dict | None = None) -> PruningPlan:
        self._require_groups(scores)
        self.check(shape)
        keep = self._keep_all(shape)
        target = self.ratio * shape.prunable_params
        removed = self._width(normalize_per_layer(scores, self.normalize), shape, keep, {None: target})
        if removed < target:
            raise PruningError(f"pruning.ratio={self.ratio} is unreachable under the protections; lower the ratio")
        if self.uniform_widths:
            self._equalize(keep, scores, shape)
        else:
            self._round_widths(keep, scores, shape)
        return self._plan(keep)

    def _equalize(self, keep: dict, scores: GroupScores, shape: ModelShape) -> None:
        """Every layer keeps the mean kept count of each block (MLP rounded to ``width_multiple``), best scores first."""
        m = int(self.width_multiple or 1)
        for block, minimum in ((ATTENTION, self.min_attention_groups), (MLP, self.min_mlp_channels)):
            dense = min(shape.group_counts(block))
            width = sum(len(k) for k in keep[block]) / len(keep[block])
            width = round(width / m) * m if block == MLP and m > 1 else round(width)
            width = min(max(width, minimum, 1), dense)
            for layer, layer_scores in enumerate(scores.block(block)):
                keep[block][layer] = set(torch.argsort(layer_scores, descending=True, stable=True)[:width].tolist())


@dataclass
class Uniform(Strategy):
    """Remove the same fraction of attention groups and of MLP channels in every unprotected layer.

    Per layer ``round(ratio * n)`` groups of each kind go (lowest scores first; ``min_*`` always stay), so
    with few KV heads per layer the achieved ratio can differ from the target; it is reported.
    """

    name: str = "uniform"

    def check(self, shape: ModelShape) -> None:
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
