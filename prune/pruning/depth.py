"""Depth strategies: remove whole layers or blocks, alone (``depth``) or with width pruning steered by layer scores."""
from __future__ import annotations

from typing import Any

from dataclasses import dataclass

import torch

from prune.errors import PruningError
from prune.pruning.plan import PruningPlan
from prune.pruning.strategies import BLOCKS, Strategy, normalize_per_layer
from prune.settings import DepthSettings, HybridSettings, LayerWeightedSettings
from prune.structure import ATTENTION, MLP, GroupScores, ModelShape


@dataclass
class Depth(DepthSettings, Strategy):
    """Remove whole layers (``unit=layer``) or attention / MLP blocks (``unit=block``), least important first.

    Scores come from ``importance=layer|block|angular|block_influence``; units are removed in ascending
    score until ``ratio`` of the prunable parameters is gone.
    """

    name: str = "depth"
    needs_groups = False
    needs_layers = True

    def check(self, shape: ModelShape) -> None:
        n = len(shape.layers)
        free = [i for i in range(n) if i not in self.protected(n)]
        target = self.ratio * shape.prunable_params
        available = sum(sum(shape.layer_params(i).values()) for i in free)
        if available < target:
            raise PruningError(
                f"pruning.ratio={self.ratio} is unreachable with depth pruning: keep_first={self.keep_first} and "
                f"keep_last={self.keep_last} leave {len(free)} of {n} layers ({available / shape.prunable_params:.3f} of the parameters)"
            )
        per_layer = sorted(sum(shape.layer_params(i).values()) for i in free)
        if self.unit == "layer" and sum(per_layer[:-1]) < target and len(free) == n:
            raise PruningError(f"pruning.ratio={self.ratio} with depth pruning would remove every one of the {n} layers; lower the ratio")

    def plan(self, scores: GroupScores | None, shape: ModelShape, layer_scores: dict | None = None) -> PruningPlan:
        self.check(shape)
        keys = ["layer"] if self.unit == "layer" else [ATTENTION, MLP]
        if not layer_scores or any(k not in layer_scores for k in keys):
            raise PruningError(
                f"pruning=depth with unit={self.unit} needs {' and '.join(keys)} scores: use "
                + ("importance=layer|angular|block_influence" if self.unit == "layer" else "importance=block|angular|block_influence")
            )
        keep = self._keep_all(shape)
        removed, order = self._remove_units(shape, layer_scores, keys, keep, self.ratio * shape.prunable_params)
        if all(not keep[ATTENTION][i] and not keep[MLP][i] for i in range(len(shape.layers))):
            raise PruningError("depth pruning would remove every layer; lower the ratio")
        return self._plan(keep, removed_units=order)

    def _remove_units(self, shape, layer_scores, keys, keep, target):
        protected = self.protected(len(shape.layers))
        units = [(layer_scores[k][i], k, i) for k in keys for i in range(len(shape.layers))
                 if i not in protected and layer_scores[k][i] == layer_scores[k][i]]  # skip NaN (absent block)
        units.sort()
        removed, order = 0, []
        for _, key, layer in units:
            if removed >= target:
                break
            blocks = BLOCKS if key == "layer" else (key,)
            cost = sum(shape.layer_params(layer)[b] for b in blocks if keep[b][layer])
            if cost == 0:
                continue
            for b in blocks:
                keep[b][layer] = set()
            removed += cost
            order.append({"unit": key, "layer": layer, "params": cost})
        return removed, order


@dataclass
class LayerWeighted(LayerWeightedSettings, Strategy):
    """Per-layer width targets from layer importance, then width pruning inside each layer by group scores.

    With layer importance ``s_l`` (``layer_importance`` criterion, clipped at 0 and divided by its mean) and
    ``P_l`` prunable parameters per layer, the fraction removed from layer ``l`` is

        r_l = R * w_l * sum(P) / sum(w * P),   w_l = (s_l + eps) ** (-strength)

    so that ``sum(r_l P_l) = R sum(P)``: less important layers lose more (``strength=0`` is uniform).
    ``r_l`` is capped at ``max_layer_fraction`` and at what the layer can lose while keeping its minimum
    groups (protected layers get 0); what a cap cuts off is redistributed over the other layers in
    proportion to their weights.
    """

    layer_importance: Any = "layer"  # the pruning/layer_importance group: a built method (or its name)
    name: str = "layer_weighted"
    needs_layers = True

    def fractions(self, layer_scores: list[float], shape: ModelShape) -> list[float]:
        n = len(shape.layers)
        params = [sum(shape.layer_params(i).values()) for i in range(n)]
        s = torch.tensor([max(float(v), 0.0) for v in layer_scores], dtype=torch.float64)
        s = s / s.mean().clamp_min(1e-30)
        w = (s + self.eps) ** (-self.strength)
        free = [i for i in range(n) if i not in self.protected(n)]
        cap = {}
        for i in free:
            s_i = shape.layers[i]
            removable = max(s_i.num_kv_heads - self.min_attention_groups, 0) * shape.attention_group_params
            removable += max(s_i.intermediate_size - self.min_mlp_channels, 0) * shape.mlp_channel_params
            cap[i] = min(self.max_layer_fraction, removable / params[i])
        r = [0.0] * n
        remaining = self.ratio * sum(params)
        open_layers = list(free)
        while open_layers:
            denom = sum(float(w[i]) * params[i] for i in open_layers)
            capped = []
            for i in open_layers:
                r[i] = remaining * float(w[i]) / denom
                if r[i] > cap[i]:
                    capped.append(i)
            if not capped:
                break
            for i in capped:
                r[i] = cap[i]
                remaining -= cap[i] * params[i]
                open_layers.remove(i)
        return r

    def plan(self, scores: GroupScores, shape: ModelShape, layer_scores: dict | None = None) -> PruningPlan:
        self._require_groups(scores)
        self.check(shape)
        if not layer_scores or "layer" not in layer_scores:
            raise PruningError("pruning=layer_weighted needs layer scores (pruning/layer_importance=layer|angular|block_influence)")
        r = self.fractions(layer_scores["layer"], shape)
        keep = self._keep_all(shape)
        targets = {i: r[i] * sum(shape.layer_params(i).values()) for i in range(len(shape.layers)) if r[i] > 0}
        self._width(scores, shape, keep, targets)
        self._round_widths(keep, scores, shape)
        return self._plan(keep, layer_fractions=r)


@dataclass
class Hybrid(HybridSettings, Depth):
    """Depth first, then width, to one overall target.

    Whole layers (``unit=layer``) or blocks (``unit=block``) are removed by ``layer_importance`` scores until
    ``depth_share * ratio`` of the prunable parameters is gone; then a global width pass over the remaining
    groups (by the importance method's group scores) removes the rest of ``ratio``.
    """

    layer_importance: Any = "layer"  # the pruning/layer_importance group: a built method (or its name)
    name: str = "hybrid"
    needs_groups = True
    needs_layers = True

    def check(self, shape: ModelShape) -> None:
        Strategy.check(self, shape)

    def plan(self, scores: GroupScores, shape: ModelShape, layer_scores: dict | None = None) -> PruningPlan:
        self._require_groups(scores)
        self.check(shape)
        keys = ["layer"] if self.unit == "layer" else [ATTENTION, MLP]
        if not layer_scores or any(k not in layer_scores for k in keys):
            raise PruningError(f"pruning=hybrid with unit={self.unit} needs {' and '.join(keys)} scores from pruning.layer_importance")
        keep = self._keep_all(shape)
        total = self.ratio * shape.prunable_params
        depth_removed, order = self._remove_units(shape, layer_scores, keys, keep, self.depth_share * total)
        width_target = total - depth_removed
        if width_target > 0:
            removed = self._width(normalize_per_layer(scores, self.normalize), shape, keep, {None: width_target})
            if removed < width_target:
                raise PruningError(f"pruning.ratio={self.ratio} is unreachable after depth pruning; lower ratio or depth_share")
        self._round_widths(keep, scores, shape)
        return self._plan(keep, removed_units=order, depth_params=depth_removed)
