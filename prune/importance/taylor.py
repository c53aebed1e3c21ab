"""Taylor importance of attention groups and MLP channels (first and second order).

Removing a group sets its weights ``w`` to zero; a Taylor expansion of the calibration loss ``L`` gives
the change ``dL ~ -w.G + 1/2 w^2 H`` with ``G`` the gradient of the mean calibration loss and ``H`` the
Hessian diagonal, estimated by the empirical Fisher ``F`` over per-sequence gradients.

* ``order=1``: ``sum_group |w * G|`` (``granularity=element``) or ``|sum_group w * G|`` (``vector``).
* ``order=2``: the first-order score plus ``0.5 * sum_group w^2 * F``.

``G`` averages *every* batch (not the last one), and everything is reduced in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from prune.importance.base import Calibration, ImportanceMethod, ImportanceResult, register
from prune.importance.fused import normalise_setting
from prune.importance.gradients import GradientPass, gradient_pass
from prune.settings import GRANULARITIES, TaylorSettings
from prune.structure import GroupScores, reduce_to_groups


def first_order_scores(model: nn.Module, grads: GradientPass, granularity: str = "element") -> GroupScores:
    def w_times_g(proj, kind):
        param = getattr(proj.module, kind)
        return param.detach().float() * grads.mean_grad[id(param)]

    if granularity == "element":
        return reduce_to_groups(model, lambda proj, kind: w_times_g(proj, kind).abs())
    if granularity == "vector":
        return reduce_to_groups(model, w_times_g).map(lambda t: t.abs())
    raise ValueError(f"unknown granularity '{granularity}': choose one of {', '.join(GRANULARITIES)}")


@register("taylor_1st", order=1)
@register("taylor_2nd", order=2)
@dataclass
class Taylor(TaylorSettings, ImportanceMethod):
    """Settings (order, granularity, fisher, ...): ``prune.settings.TaylorSettings``."""

    passes: ClassVar[float | None] = 3.0  # forward + backward (recomputation under checkpointing not counted)

    def __post_init__(self):
        super().__post_init__()
        self.fused = normalise_setting(self.fused)

    def score(self, model: nn.Module, calibration: Calibration) -> ImportanceResult:
        grads = gradient_pass(
            model,
            calibration.get("taylor"),
            calibration.batch_size,
            fisher=self.fisher if self.order == 2 else None,
            micro_batch_size=calibration.micro_batch("taylor", self.micro_batch_size),
            gradient_checkpointing=self.gradient_checkpointing,
            progress=calibration.progress,
            fused=self.fused,
            mean_grad=self.mean_grad,
        )
        scores = first_order_scores(model, grads, self.granularity)
        extra = {"oom_restarts": grads.oom_restarts, "micro_batch_size": grads.micro_batch_size, **grads.extra}
        if self.order == 2:
            second = grads.second_moment.map(lambda t: 0.5 * t)
            extra["second_order_share"] = _share(second, scores + second)
            scores = scores + second
        return ImportanceResult(scores=scores, grad_stats=grads.grad_stats, extra=extra)


def _share(part: GroupScores, total: GroupScores) -> float:
    """Fraction of the summed score that the second-order term contributes (reported per run)."""
    num = sum(float(t.sum()) for t in part.attention + part.mlp)
    den = sum(float(t.sum()) for t in total.attention + total.mlp)
    return num / den if den else 0.0
