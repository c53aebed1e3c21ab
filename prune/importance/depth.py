"""Removal-based importance of layers, blocks and groups (the loss increase when the unit is taken out).

* ``layer``: each decoder layer skipped entirely (output = input), on calibration windows of
  ``lengths.layer``;
* ``block``: each layer's attention block and MLP block set to contribute exactly nothing, on windows of
  ``lengths.block``;
* ``removal``: each attention group and MLP channel removed alone (``mlp_sample`` limits the channels
  measured, the others get the mean score) - exact but costly, one partial forward per group.

All run through ``prune.importance.removal.removal_losses`` with prefix caching.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from prune.importance.base import Calibration, ImportanceMethod, ImportanceResult, register
from prune.importance.removal import Unit, removal_ground_truth, removal_losses
from prune.settings import GroupRemovalSettings, RemovalSettings
from prune.structure import ATTENTION, MLP, GroupScores, model_shape


@register("layer")
@dataclass
class LayerRemoval(RemovalSettings, ImportanceMethod):
    uses: ClassVar[str | None] = "layer"
    provides: ClassVar[str] = "layers"

    def score(self, model: nn.Module, calibration: Calibration) -> ImportanceResult:
        n = len(model_shape(model).layers)
        units = [Unit("layer", i) for i in range(n)]
        base, losses = removal_losses(model, calibration.get(self.uses), units, calibration.batch_size, self.prefix_cache, calibration.progress)
        return ImportanceResult(None, layer_scores={"layer": [losses[u] - base for u in units]}, extra={"base_loss": base})


@register("block")
@dataclass
class BlockRemoval(RemovalSettings, ImportanceMethod):
    uses: ClassVar[str | None] = "block"
    provides: ClassVar[str] = "layers"

    def score(self, model: nn.Module, calibration: Calibration) -> ImportanceResult:
        shape = model_shape(model)
        units = [Unit(kind, i) for i, s in enumerate(shape.layers) for kind, width in ((ATTENTION, s.num_kv_heads), (MLP, s.intermediate_size)) if width]
        base, losses = removal_losses(model, calibration.get(self.uses), units, calibration.batch_size, self.prefix_cache, calibration.progress)
        scores = {ATTENTION: [float("nan")] * len(shape.layers), MLP: [float("nan")] * len(shape.layers)}
        for unit, loss in losses.items():
            scores[unit.kind][unit.layer] = loss - base
        return ImportanceResult(None, layer_scores=scores, extra={"base_loss": base})


@register("removal")
@dataclass
class GroupRemoval(GroupRemovalSettings, ImportanceMethod):
    def score(self, model: nn.Module, calibration: Calibration) -> ImportanceResult:
        truth = removal_ground_truth(model, calibration.get(self.uses), self.mlp_sample, calibration.seed,
                                     calibration.batch_size, calibration.progress, self.prefix_cache)

        def fill(t: torch.Tensor) -> torch.Tensor:
            known = t[~torch.isnan(t)]
            return torch.where(torch.isnan(t), known.mean() if known.numel() else torch.zeros(()), t)

        return ImportanceResult(truth.map(fill), extra={"base_loss": truth.meta["base_loss"]})
