"""Importance by removal: how much the mean next-token loss rises when one unit is taken out.

A unit is an attention group, an MLP channel, a whole decoder layer, or one layer's attention or MLP
block. Removing a block means it adds *exactly nothing* to the residual stream (its output is zero);
removing a layer makes its output equal its input.

Cost: a naive loop runs one full forward per unit. With ``prefix_cache`` (default) the intact model is
walked once, layer by layer, and a unit of layer ``l`` only runs what follows it: a removed layer or block
starts from the cached residual stream (a removed MLP block reuses the layer's attention output, a
removed attention block runs only the MLP block) and then layers ``l+1..L-1``; a removed group re-runs
layer ``l`` with the group masked. The intact walk's final state gives the baseline loss for free.
``prune-bench`` measures the saving against the naive loop.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from prune.errors import ConfigError
from prune.eval.losses import next_token_nll, sequence_nll
from prune.structure import ATTENTION, MLP, GroupScores, decoder_layers, model_shape

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
            raise ConfigError(
                f"prefix caching needs causal-by-default attention: model.attn_implementation={impl}; use sdpa or importance.prefix_cache=false"
            )

    def start(self, input_ids: torch.Tensor):
        hidden = self.inner.embed_tokens(input_ids)
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand(input_ids.shape[0], -1)
        return hidden, {"position_ids": position_ids, "position_embeddings": self.inner.rotary_emb(hidden, position_ids)}

    def layer(self, index: int, hidden: torch.Tensor, ctx: dict) -> torch.Tensor:
        out = self.layers[index](hidden, attention_mask=None, **ctx)
        return out[0] if isinstance(out, tuple) else out

    def attention_block(self, index: int, hidden: torch.Tensor, ctx: dict) -> torch.Tensor:
        """The attention block's contribution to the residual stream (pre-norm LLaMA layer)."""
        layer = self.layers[index]
        out = layer.self_attn(layer.input_layernorm(hidden), attention_mask=None, **ctx)
        return out[0] if isinstance(out, tuple) else out

    def mlp_block(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        layer = self.layers[index]
        return layer.mlp(layer.post_attention_layernorm(hidden))

    def run_from(self, index: int, hidden: torch.Tensor, ctx: dict) -> torch.Tensor:
        for i in range(index, len(self.layers)):
            hidden = self.layer(i, hidden, ctx)
        return hidden

    def sequence_nll(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return next_token_nll(self.model.lm_head(self.inner.norm(hidden)), input_ids).mean(dim=1)


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
                for layer in range(len(runner.layers)):
                    mid = hidden + runner.attention_block(layer, hidden, ctx)
                    for unit in by_layer.get(layer, []):
                        if unit.kind == "layer":
                            out = runner.run_from(layer + 1, hidden, ctx)
                        elif unit.kind == "attention":
                            out = runner.run_from(layer + 1, hidden + runner.mlp_block(layer, hidden), ctx)
                        elif unit.kind == "mlp":
                            out = runner.run_from(layer + 1, mid, ctx)
                        else:
                            with removed(model, unit):
                                out = runner.run_from(layer, hidden, ctx)
                        sums[unit] += float(runner.sequence_nll(out, batch).sum())
                        bar.update(1)
                    hidden = mid + runner.mlp_block(layer, mid)
                base_sum += float(runner.sequence_nll(hidden, batch).sum())
            else:
                base_sum += float(sequence_nll(model, batch).sum())
                for unit in units:
                    with removed(model, unit):
                        sums[unit] += float(sequence_nll(model, batch).sum())
                    bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    n = len(windows)
    return base_sum / n, {u: s / n for u, s in sums.items()}


def sampled_mlp_channels(shape, n: int, seed: int) -> list[tuple[int, int]]:
    everything = [(layer, c) for layer, s in enumerate(shape.layers) for c in range(s.intermediate_size)]
    if n is None or n >= len(everything):
        return everything
    generator = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(everything), generator=generator)[:n].sort().values.tolist()
    return [everything[i] for i in idx]


def removal_ground_truth(model: nn.Module, windows: torch.Tensor, mlp_sample: int | None, seed: int, batch_size: int = 4,
                         progress: bool = False, prefix_cache: bool = True) -> GroupScores:
    """Loss increase per group; unsampled MLP channels are NaN."""
    shape = model_shape(model)
    units = [Unit("attention_group", l, g) for l, s in enumerate(shape.layers) for g in range(s.num_kv_heads)]
    units += [Unit("mlp_channel", l, c) for l, c in sampled_mlp_channels(shape, mlp_sample, seed)]
    base, losses = removal_losses(model, windows, units, batch_size=batch_size, prefix_cache=prefix_cache, progress=progress)
    truth = GroupScores.zeros(shape).map(lambda t: t.fill_(float("nan")))
    for unit, loss in losses.items():
        truth.block(ATTENTION if unit.kind == "attention_group" else MLP)[unit.layer][unit.index] = loss - base
    truth.meta = {"base_loss": base, "windows": list(windows.shape), "mlp_sample": mlp_sample, "seed": seed}
    return truth
