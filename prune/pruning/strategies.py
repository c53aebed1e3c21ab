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

This module holds what every strategy shares (``Strategy``, per-layer normalisation, the ratio note);
``width`` holds ``global`` and ``uniform``, ``depth`` holds ``depth``, ``layer_weighted`` and ``hybrid``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prune.errors import PruningError  # re-exported: defined with the other refusals
from prune.pruning.plan import PruningPlan
from prune.settings import NORMALIZATIONS, WidthSettings, validate  # noqa: F401  (NORMALIZATIONS: re-exported)
from prune.structure import ATTENTION, MLP, GroupScores, ModelShape

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
class Strategy(WidthSettings):
    """What every strategy shares: the width settings (``prune.settings.WidthSettings``) and their checks."""

    name: str = ""
    needs_groups = True
    needs_layers = False

    def __post_init__(self):
        validate(self, "pruning")  # the settings declared in prune.settings: their words and ranges

    # -- protections
    def protected(self, n_layers: int) -> set[int]:
        return set(range(min(self.keep_first, n_layers))) | set(range(max(n_layers - self.keep_last, 0), n_layers))

    def check(self, shape: ModelShape) -> None:
        """Refuse a target the protections make unreachable on this model (the ranges: ``__post_init__``)."""
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
