"""Data-free baselines: weight magnitude and seeded random scores."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from prune.importance.base import Calibration, ImportanceMethod, ImportanceResult, register
from prune.structure import GroupScores, model_shape, reduce_to_groups


@register("magnitude")
@dataclass
class Magnitude(ImportanceMethod):
    """``sum_group |w|``."""

    uses: ClassVar[str | None] = None

    def score(self, model: nn.Module, calibration: Calibration) -> ImportanceResult:
        return ImportanceResult(reduce_to_groups(model, lambda proj, kind: getattr(proj.module, kind).detach().abs()))


@register("random")
@dataclass
class Random(ImportanceMethod):
    """A random choice of groups, seeded by the run's ``seed`` (the floor that real methods must beat).

    Every group gets ``u * cost`` with ``u`` uniform in [0, 1) and ``cost`` its parameter count. Strategies
    rank by ``score / cost`` (global) or within one block type (uniform), so either way the order is a
    uniformly random permutation of the groups: each parameter is equally likely to go, and the expected
    share removed from attention equals the share removed from the MLPs. Plain uniform scores would
    instead put every attention group (tens of times an MLP channel's cost) first in a ``score / cost``
    ranking: "remove most of the attention", not a random choice. (``pruning.normalize`` other than
    ``none`` rescales each layer's scores to unitless numbers, which a ``score / cost`` ranking then weighs
    against attention for every criterion; keep the default ``none`` for a random baseline.)
    """

    uses: ClassVar[str | None] = None

    def score(self, model: nn.Module, calibration: Calibration) -> ImportanceResult:
        generator = torch.Generator().manual_seed(int(calibration.seed))
        shape = model_shape(model)
        scores = GroupScores(
            [torch.rand(s.num_kv_heads, generator=generator, dtype=torch.float64) * shape.attention_group_params
             for s in shape.layers],
            [torch.rand(s.intermediate_size, generator=generator, dtype=torch.float64) * shape.mlp_channel_params
             for s in shape.layers],
        )
        return ImportanceResult(scores)
