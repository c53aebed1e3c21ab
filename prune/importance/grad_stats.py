"""Per-layer |gradient| statistics of a gradient pass: mean and std of |g| over each block's prunable weights."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prune.structure import ATTENTION, MLP


@dataclass
class LayerGradMoments:
    """Sums that give mean and std of |g| over a set of weights.

    The sums stay on the gradient's device (as fp64 0-d tensors) until ``summary``, so the hooks never
    force a GPU synchronisation.
    """

    abs_sum: torch.Tensor | float = 0.0
    sq_sum: torch.Tensor | float = 0.0
    count: int = 0

    def add(self, grad: torch.Tensor) -> None:
        g = grad.detach()
        # norms reduce in fp32 without materialising an fp32 copy of the gradient
        l1 = torch.linalg.vector_norm(g, ord=1, dtype=torch.float32).double()
        l2 = torch.linalg.vector_norm(g, ord=2, dtype=torch.float32).double()
        self.abs_sum = self.abs_sum + l1
        self.sq_sum = self.sq_sum + l2 * l2
        self.count += g.numel()

    def add_sums(self, abs_sum: torch.Tensor, sq_sum: torch.Tensor, count: int) -> None:
        """Add sums already reduced elsewhere (the fused per-gradient pass)."""
        self.abs_sum = self.abs_sum + abs_sum
        self.sq_sum = self.sq_sum + sq_sum
        self.count += count

    def merged(self, other: "LayerGradMoments") -> "LayerGradMoments":
        return LayerGradMoments(
            _to_cpu(self.abs_sum) + _to_cpu(other.abs_sum), _to_cpu(self.sq_sum) + _to_cpu(other.sq_sum), self.count + other.count
        )

    def summary(self) -> dict:
        if not self.count:
            return {"abs_mean": 0.0, "abs_std": 0.0}
        mean = float(self.abs_sum) / self.count
        var = max(float(self.sq_sum) / self.count - mean * mean, 0.0)
        return {"abs_mean": mean, "abs_std": var**0.5}


def _to_cpu(value) -> float:
    return float(value)


def summarize_moments(moments: dict[tuple[int, str], LayerGradMoments], n_layers: int) -> list[dict]:
    rows = []
    for i in range(n_layers):
        a, m = moments.get((i, ATTENTION), LayerGradMoments()), moments.get((i, MLP), LayerGradMoments())
        rows.append({"layer": i, ATTENTION: a.summary(), MLP: m.summary(), "all": a.merged(m).summary()})
    return rows
