"""Importance by removal: how much the mean next-token loss rises when one unit is taken out.

A unit is an attention group, an MLP channel, a whole decoder layer, or one layer's attention or MLP
block. Removing a block means it adds *exactly nothing* to the residual stream (its output is zero);
removing a layer makes its output equal its input.

Cost: a naive loop runs one full forward per unit. With ``prefix_cache`` (default) each layer's input
is computed once per batch and a unit in layer ``l`` only re-runs layers ``l..L-1``, which roughly halves
the work when units are spread over the depth (``prune-bench`` measures the ratio).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from prune.structure import decoder_layers, model_shape

KINDS = ("attention_group", "mlp_channel", "layer", "attention", "mlp")


@dataclass(frozen=True)
class Unit:
    kind: str
    layer: int
    index: int = -1


def _zero_output(module, args, output):
    if isinstance(output, tuple):
        return (torch.zeros_like(output[0]),) + tuple(output[1:])
    return torch.zeros_like(output)


def _skip_layer(module, args, kwargs, output):
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


@contextlib.contextmanager
def removed(model: nn.Module, unit: Unit):
    """Temporarily take ``unit`` out of ``model`` (hooks only; weights untouched)."""
    layer = decoder_layers(model)[unit.layer]
    shape = model_shape(model)
    if unit.kind == "layer":
        handle = layer.register_forward_hook(_skip_layer, with_kwargs=True)
    elif unit.kind == "attention":
        handle = layer.self_attn.register_forward_hook(_zero_output)
    elif unit.kind == "mlp":
        handle = layer.mlp.register_forward_hook(_zero_output)
    elif unit.kind in ("attention_group", "mlp_channel"):
        if unit.kind == "attention_group":
            width = shape.head_dim * shape.heads_per_group
            target, size = layer.self_attn.o_proj, shape.layers[unit.layer].num_heads * shape.head_dim
            lo, hi = unit.index * width, (unit.index + 1) * width
        else:
            target, size = layer.mlp.down_proj, shape.layers[unit.layer].intermediate_size
            lo, hi = unit.index, unit.index + 1
        mask = torch.ones(size, device=target.weight.device)
        mask[lo:hi] = 0

        def hook(module, args):
            return (args[0] * mask.to(args[0].dtype),)

        handle = target.register_forward_pre_hook(hook)
    else:
        raise ValueError(f"unknown unit kind '{unit.kind}': one of {', '.join(KINDS)}")
    try:
        yield
    finally:
        handle.remove()


class PrefixRunner:
    """Runs a LLaMA-family model layer by layer, so that a forward can start at any layer."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.inner = model.model
        self.layers = decoder_layers(model)
        impl = getattr(model.config, "_attn_implementation", "sdpa")
        if impl not in ("sdpa", "flash_attention_2", "flash_attention_3"):
            raise ValueError(f"prefix caching needs causal-by-default attention (sdpa), not '{impl}'")

    def start(self, input_ids: torch.Tensor):
        hidden = self.inner.embed_tokens(input_ids)
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand(input_ids.shape[0], -1)
        return hidden, {"position_ids": position_ids, "position_embeddings": self.inner.rotary_emb(hidden, position_ids)}

    def layer(self, index: int, hidden: torch.Tensor, ctx: dict) -> torch.Tensor:
        out = self.layers[index](hidden, attention_mask=None, **ctx)
        return out[0] if isinstance(out, tuple) else out

    def run_from(self, index: int, hidden: torch.Tensor, ctx: dict) -> torch.Tensor:
        for i in range(index, len(self.layers)):
            hidden = self.layer(i, hidden, ctx)
        return hidden

    def sequence_nll(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        logits = self.model.lm_head(self.inner.norm(hidden))[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
        return nll.mean(dim=1)


def _sequence_nll(model, input_ids):
    logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none").mean(dim=1)


@torch.no_grad()
def removal_losses(
    model: nn.Module,
    windows: torch.Tensor,
    units: Iterable[Unit],
    batch_size: int = 4,
    prefix_cache: bool = True,
    progress: bool = False,
) -> tuple[float, dict[Unit, float]]:
    """Mean NLL of the intact model and of the model with each unit removed (one at a time)."""
    from tqdm.auto import tqdm

    units = list(units)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    by_layer: dict[int, list[Unit]] = {}
    for unit in units:
        by_layer.setdefault(unit.layer, []).append(unit)
    base_sum, sums = 0.0, {u: 0.0 for u in units}
    batches = windows.split(batch_size)
    bar = tqdm(total=len(batches) * len(units), desc=f"removal ({len(units)} units)", disable=not progress, leave=False)
    try:
        for batch in batches:
            batch = batch.to(device)
            if prefix_cache:
                runner = PrefixRunner(model)
                hidden, ctx = runner.start(batch)
                base_sum += float(runner.sequence_nll(runner.run_from(0, hidden, ctx), batch).sum())
                for layer in range(len(runner.layers)):
                    for unit in by_layer.get(layer, []):
                        with removed(model, unit):
                            out = runner.run_from(layer, hidden, ctx)
                        sums[unit] += float(runner.sequence_nll(out, batch).sum())
                        bar.update(1)
                    if layer + 1 < len(runner.layers) and any(l > layer for l in by_layer):
                        hidden = runner.layer(layer, hidden, ctx)
            else:
                base_sum += float(_sequence_nll(model, batch).sum())
                for unit in units:
                    with removed(model, unit):
                        sums[unit] += float(_sequence_nll(model, batch).sum())
                    bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    n = len(windows)
    return base_sum / n, {u: s / n for u, s in sums.items()}
