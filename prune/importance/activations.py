"""Activation-based criteria from one forward pass (no backward).

* ``wanda`` (structured Wanda): ``sum_group |W_ij| * ||X_j||_2``, where ``||X_j||_2`` is the L2 norm of
  input feature ``j`` of that Linear over every calibration token.
* ``block_influence`` (ShortGPT's BI): ``1 - E_t[cos(h_in, h_out)]`` of each layer, and of each block
  (attention: ``h`` vs ``h + attn(h)``; MLP likewise), over calibration tokens.
* ``angular`` (Gromov et al.): the angular distance ``arccos(cos(h_in, h_out)) / pi`` of each layer and
  block, averaged over tokens (the paper uses the last token; all tokens give a less noisy estimate).

Layer and block scores are comparable within a criterion: higher = the unit changes the residual stream
more = more important.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from prune.importance.base import Calibration, ImportanceMethod, ImportanceResult, register
from prune.structure import decoder_layers, projections, reduce_to_groups


@contextlib.contextmanager
def _input_sq_norms(model: nn.Module):
    """Accumulate sum over tokens of x_j^2 for the input of every prunable Linear."""
    sums: dict[int, torch.Tensor] = {}
    handles = []

    def hook(module, args):
        x = args[0].detach().float()
        s = x.square().reshape(-1, x.shape[-1]).sum(0)
        sums[id(module)] = sums.get(id(module), 0) + s

    for proj in projections(model):
        handles.append(proj.module.register_forward_pre_hook(hook))
    try:
        yield sums
    finally:
        for h in handles:
            h.remove()


@register("wanda")
@dataclass
class Wanda(ImportanceMethod):
    """Structured Wanda: weight magnitude times input-feature norm, summed over each group."""

    passes: ClassVar[float | None] = 1.0

    @torch.no_grad()
    def score(self, model: nn.Module, calibration: Calibration) -> ImportanceResult:
        device = next(model.parameters()).device
        windows = calibration.get(self.uses)
        with _input_sq_norms(model) as sums:
            for batch in windows.split(calibration.batch_size):
                model(input_ids=batch.to(device), use_cache=False)

        def elementwise(proj, kind):
            weight = getattr(proj.module, kind).detach().float().abs()
            if kind == "bias":  # a bias sees a constant input of 1 on every token
                return weight * math.sqrt(windows.numel())
            return weight * sums[id(proj.module)].sqrt()[None, :]

        return ImportanceResult(reduce_to_groups(model, elementwise))


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1).flatten()


class _ResidualProbe:
    """Hooks that record, per layer, the residual stream before/after the attention and MLP blocks."""

    def __init__(self, model: nn.Module):
        self.layers = decoder_layers(model)
        n = len(self.layers)
        self.sums = {key: [0.0] * n for key in ("layer", "attention", "mlp")}
        self.count = [0] * n
        self.kind = "cos"

    def measure(self, values: torch.Tensor) -> float:
        if self.kind == "cos":
            return float((1 - values).sum())
        return float((values.clamp(-1, 1).acos() / math.pi).sum())

    @contextlib.contextmanager
    def attach(self):
        handles, state = [], {}
        for i, layer in enumerate(self.layers):
            def layer_pre(module, args, kwargs, i=i):
                state[i] = args[0] if args else kwargs["hidden_states"]

            def attn_out(module, args, output, i=i):
                out = output[0] if isinstance(output, tuple) else output
                h = state[i]
                state[(i, "mid")] = h + out
                self.sums["attention"][i] += self.measure(_cosines(h, h + out))

            def mlp_out(module, args, output, i=i):
                mid = state[(i, "mid")]
                self.sums["mlp"][i] += self.measure(_cosines(mid, mid + output))

            def layer_out(module, args, kwargs, output, i=i):
                out = output[0] if isinstance(output, tuple) else output
                h = state.pop(i)
                state.pop((i, "mid"), None)
                self.sums["layer"][i] += self.measure(_cosines(h, out))
                self.count[i] += h.shape[0] * h.shape[1]

            handles.append(layer.register_forward_pre_hook(layer_pre, with_kwargs=True))
            handles.append(layer.self_attn.register_forward_hook(attn_out))
            handles.append(layer.mlp.register_forward_hook(mlp_out))
            handles.append(layer.register_forward_hook(layer_out, with_kwargs=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def scores(self) -> dict[str, list[float]]:
        return {key: [s / max(c, 1) for s, c in zip(values, self.count)] for key, values in self.sums.items()}


@dataclass
class _ResidualCriterion(ImportanceMethod):
    uses: ClassVar[str | None] = "layer"
    provides: ClassVar[str] = "layers"
    passes: ClassVar[float | None] = 1.0
    kind: ClassVar[str] = "cos"

    @torch.no_grad()
    def score(self, model: nn.Module, calibration: Calibration) -> ImportanceResult:
        device = next(model.parameters()).device
        probe = _ResidualProbe(model)
        probe.kind = self.kind
        with probe.attach():
            for batch in calibration.get(self.uses).split(calibration.batch_size):
                model(input_ids=batch.to(device), use_cache=False)
        return ImportanceResult(scores=None, layer_scores=probe.scores())


@register("block_influence")
@dataclass
class BlockInfluence(_ResidualCriterion):
    """ShortGPT block influence: 1 - mean cosine similarity of the residual stream before and after."""

    kind: ClassVar[str] = "cos"


@register("angular")
@dataclass
class Angular(_ResidualCriterion):
    """Gromov et al.'s angular distance arccos(cos)/pi of the residual stream before and after."""

    kind: ClassVar[str] = "angle"
