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
    """Uniform random scores, seeded by the run's ``seed`` (a sanity floor that real methods must beat)."""

    uses: ClassVar[str | None] = None

    def score(self, model: nn.Module, calibration: Calibration) -> ImportanceResult:
        generator = torch.Generator().manual_seed(int(calibration.seed))
        shape = model_shape(model)
        scores = GroupScores(
            [torch.rand(s.num_kv_heads, generator=generator, dtype=torch.float64) for s in shape.layers],
            [torch.rand(s.intermediate_size, generator=generator, dtype=torch.float64) for s in shape.layers],
        )
        return ImportanceResult(scores)
