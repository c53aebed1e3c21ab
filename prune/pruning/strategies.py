"""Allocation strategies: from importance scores to a pruning plan that meets a parameter target.

``ratio`` is always the fraction of *prunable* parameters (attention and MLP projections of the decoder
layers) to remove. Groups, blocks and layers are discrete, so the achieved fraction overshoots the target
by less than one unit's cost, and ``width_multiple`` rounding moves it by up to half a multiple of MLP
channels per layer either way; the run reports the exact figure.

Width strategies need group scores (``taylor_*``, ``magnitude``, ``random``, ``wanda``, ``removal``);
``depth`` needs layer or block scores (``layer``, ``block``, ``angular``, ``block_influence``);
``layer_weighted`` and ``hybrid`` need both and compute the layer scores with ``layer_importance``.

Protections shared by all strategies: the first ``keep_first`` and last ``keep_last`` layers are never
pruned, and no layer loses more than ``max_layer_fraction`` of its prunable parameters (width
strategies). ``width_multiple`` rounds every layer's kept MLP width to a multiple (e.g. 128 on GPUs:
matrix kernels run much slower on odd widths; measured in ``prune-bench``), restoring or removing the
channels nearest the cut by score. A width strategy with ``min_attention_groups=0`` / ``min_mlp_channels=0`` may empty a block;
an emptied block is removed physically, and a layer with both blocks empty is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prune.errors import PruningError  # re-exported: defined with the other refusals
from prune.pruning.plan import PruningPlan
from prune.structure import ATTENTION, MLP, GroupScores, ModelShape

NORMALIZATIONS = ("none", "mean", "max", "zscore")
BLOCKS = (ATTENTION, MLP)


def ratio_deviation(target: float | None, achieved: float, shape: ModelShape, what: str) -> str | None:
    """One line when the achieved fraction misses ``target`` by more than the smallest unit's cost (else None).

    Within one MLP channel the difference is mere granularity; beyond it (a whole attention group, layer
    or block, the protections, ``width_multiple`` rounding) the user is told: 0.3 asked, 0.333 removed.
    """
    if target is None or not shape.prunable_params:
        return None
    unit = min(shape.attention_group_params, shape.mlp_channel_params) / shape.prunable_params
    if abs(achieved - target) <= unit:
        return None
    return (f"{what}: pruning.ratio={target} asked, {achieved:.3f} of the prunable parameters removed "
            "(whole groups, blocks or layers, within the protections)")


def normalize_per_layer(scores: GroupScores, how: str) -> GroupScores:
    """Rescale each layer's scores of each block type before a global ranking.

    * ``none``: raw scores; right when the criterion is comparable across layers (Taylor scores estimate a
      loss change, so they are).
    * ``mean`` / ``max``: divide by the layer's mean / max magnitude: each layer's groups compete relative to their own
      layer; use it when raw scales differ by layer (magnitude, Wanda) and you want every layer pruned.
    * ``zscore``: subtract the layer mean and divide by its standard deviation: also equalises spread.
    """
    if how not in NORMALIZATIONS:
        raise PruningError(f"unknown normalization '{how}': choose one of {', '.join(NORMALIZATIONS)}")
    if how == "none":
        return scores

    def norm(t: torch.Tensor) -> torch.Tensor:
        if t.numel() == 0:
            return t
        # by magnitude: a layer whose scores are negative (removal can lower the loss) keeps its order
        if how == "mean":
            return t / t.abs().mean().clamp_min(1e-30)
        if how == "max":
            return t / t.abs().max().clamp_min(1e-30)
        return (t - t.mean()) / t.std(unbiased=False).clamp_min(1e-30)

    return scores.map(norm)


@dataclass
class Strategy:
    """Fields and checks shared by every strategy."""

    ratio: float = 0.3
    keep_first: int = 0
    keep_last: int = 0
    max_layer_fraction: float = 1.0
    min_attention_groups: int = 1
    min_mlp_channels: int = 1
    width_multiple: int = 1
    name: str = ""
    needs_groups = True
    needs_layers = False

    # -- protections
    def protected(self, n_layers: int) -> set[int]:
        return set(range(min(self.keep_first, n_layers))) | set(range(max(n_layers - self.keep_last, 0), n_layers))

    def check(self, shape: ModelShape) -> None:
        """Refuse impossible settings before any model work (one line each)."""
        if not 0 < self.ratio < 1:
            raise PruningError(f"pruning.ratio={self.ratio} must lie strictly between 0 and 1")
        if not 0 < self.max_layer_fraction <= 1:
            raise PruningError(f"pruning.max_layer_fraction={self.max_layer_fraction} must lie in (0, 1]")
        reachable = self.max_removable(shape)
        if reachable < self.ratio * shape.prunable_params:
            raise PruningError(
                f"pruning.ratio={self.ratio} is unreachable: the protections (keep_first={self.keep_first}, "
                f"keep_last={self.keep_last}, max_layer_fraction={self.max_layer_fraction}, minimum groups per layer) "
                f"allow removing at most {reachable / shape.prunable_params:.3f} of the prunable parameters"
            )

    def max_removable(self, shape: ModelShape) -> int:
        protected = self.protected(len(shape.layers))
        total = 0
        for i, s in enumerate(shape.layers):
            if i in protected:
                continue
            width = max(s.num_kv_heads - self.min_attention_groups, 0) * shape.attention_group_params
            width += max(s.intermediate_size - self.min_mlp_channels, 0) * shape.mlp_channel_params
            total += min(width, int(self.max_layer_fraction * sum(shape.layer_params(i).values())))
        return total

    # -- shared width pass
    def _width(self, scores: GroupScores, shape: ModelShape, keep: dict, targets: dict[int | None, float]) -> int:
        """Remove groups by ascending score / cost until each target is met.

        ``targets`` maps a layer index to that layer's parameter target, or ``None`` to one global target.
        Returns the parameters removed.
        """
        costs = {ATTENTION: shape.attention_group_params, MLP: shape.mlp_channel_params}
        minimum = {ATTENTION: self.min_attention_groups, MLP: self.min_mlp_channels}
        protected = self.protected(len(shape.layers))
        cap = {i: self.max_layer_fraction * sum(shape.layer_params(i).values()) for i in range(len(shape.layers))}
        candidates = []
        for block in BLOCKS:
            for layer, layer_scores in enumerate(scores.block(block)):
                if layer in protected or (None not in targets and layer not in targets):
                    continue
                for g, value in enumerate(layer_scores.tolist()):
                    if g in keep[block][layer]:
                        candidates.append((value / costs[block], block, layer, g))
        candidates.sort(key=lambda c: (c[0], c[1], c[2], c[3]))
        removed_per_layer = {i: 0 for i in range(len(shape.layers))}
        removed = 0
        for _, block, layer, g in candidates:
            goal = targets.get(None, targets.get(layer))
            done = removed if None in targets else removed_per_layer[layer]
            if goal is None or done >= goal:
                if None in targets:
                    break
                continue
            if len(keep[block][layer]) <= minimum[block] or removed_per_layer[layer] + costs[block] > cap[layer] + 1e-9:
                continue
            keep[block][layer].discard(g)
            removed += costs[block]
            removed_per_layer[layer] += costs[block]
        return removed

    @staticmethod
    def _keep_all(shape: ModelShape) -> dict:
        return {b: [set(range(n)) for n in shape.group_counts(b)] for b in BLOCKS}

    def _round_widths(self, keep: dict, scores: GroupScores | None, shape: ModelShape) -> None:
        """Round each layer's kept MLP channel count to the nearest multiple of ``width_multiple``."""
        m = int(self.width_multiple or 1)
        if m <= 1 or scores is None:
            return
        for layer, kept in enumerate(keep[MLP]):
            n, k = shape.layers[layer].intermediate_size, len(kept)
            if k == 0 or k == n or k % m == 0:
                continue
            down, up = (k // m) * m, min(-(-k // m) * m, n)
            # rounding down must respect the minimum width and the per-layer cap; rounding up always does
            removed_down = (shape.layers[layer].num_kv_heads - len(keep[ATTENTION][layer])) * shape.attention_group_params
            removed_down += (n - down) * shape.mlp_channel_params
            down_allowed = down >= max(self.min_mlp_channels, 1) and removed_down <= (
                self.max_layer_fraction * sum(shape.layer_params(layer).values()) + 1e-9)
            goal = up if (up - k <= k - down or not down_allowed) else down
            order = torch.argsort(scores.mlp[layer], descending=True, stable=True).tolist()
            if goal > k:  # restore the best removed channels
                restore = [c for c in order if c not in kept][: goal - k]
                kept.update(restore)
            else:  # remove the worst kept channels
                drop = [c for c in reversed(order) if c in kept][: k - goal]
                kept.difference_update(drop)

    def _plan(self, keep: dict, **meta) -> PruningPlan:
        return PruningPlan([sorted(s) for s in keep[ATTENTION]], [sorted(s) for s in keep[MLP]], strategy=self.name, meta=meta)

    def _require_groups(self, scores) -> None:
        if scores is None:
            raise PruningError(
                f"pruning={self.name} needs group scores: use importance=taylor_1st|taylor_2nd|magnitude|random|wanda|removal"
            )


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


@dataclass
class Depth(Strategy):
    """Remove whole layers (``unit=layer``) or attention / MLP blocks (``unit=block``), least important first.

    Scores come from ``importance=layer|block|angular|block_influence``; units are removed in ascending
    score until ``ratio`` of the prunable parameters is gone.
    """

    unit: str = "layer"
    name: str = "depth"
    needs_groups = False
    needs_layers = True

    def check(self, shape: ModelShape) -> None:
        if not 0 < self.ratio < 1:
            raise PruningError(f"pruning.ratio={self.ratio} must lie strictly between 0 and 1")
        if self.unit not in ("layer", "block"):
            raise PruningError(f"pruning.unit={self.unit} must be 'layer' or 'block'")
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
class LayerWeighted(Strategy):
    """Per-layer width targets from layer importance, then width pruning inside each layer by group scores.

    With layer importance ``s_l`` (``layer_importance`` criterion, clipped at 0 and divided by its mean) and
    ``P_l`` prunable parameters per layer, the fraction removed from layer ``l`` is

        r_l = R * w_l * sum(P) / sum(w * P),   w_l = (s_l + eps) ** (-strength)

    so that ``sum(r_l P_l) = R sum(P)``: less important layers lose more (``strength=0`` is uniform).
    ``r_l`` is capped at ``max_layer_fraction`` and at what the layer can lose while keeping its minimum
    groups (protected layers get 0); what a cap cuts off is redistributed over the other layers in
    proportion to their weights.
    """

    layer_importance: str = "layer"
    strength: float = 1.0
    eps: float = 0.05
    max_layer_fraction: float = 0.8
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
            raise PruningError("pruning=layer_weighted needs layer scores (pruning.layer_importance=layer|angular|block_influence)")
        r = self.fractions(layer_scores["layer"], shape)
        keep = self._keep_all(shape)
        targets = {i: r[i] * sum(shape.layer_params(i).values()) for i in range(len(shape.layers)) if r[i] > 0}
        self._width(scores, shape, keep, targets)
        self._round_widths(keep, scores, shape)
        return self._plan(keep, layer_fractions=r)


@dataclass
class Hybrid(Depth):
    """Depth first, then width, to one overall target.

    Whole layers (``unit=layer``) or blocks (``unit=block``) are removed by ``layer_importance`` scores until
    ``depth_share * ratio`` of the prunable parameters is gone; then a global width pass over the remaining
    groups (by the importance method's group scores) removes the rest of ``ratio``.
    """

    layer_importance: str = "layer"
    depth_share: float = 0.5
    normalize: str = "none"
    name: str = "hybrid"
    needs_groups = True
    needs_layers = True

    def check(self, shape: ModelShape) -> None:
        Strategy.check(self, shape)
        if not 0 <= self.depth_share <= 1:
            raise PruningError(f"pruning.depth_share={self.depth_share} must lie in [0, 1]")

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
