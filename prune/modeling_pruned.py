"""Hugging Face classes for structurally pruned LLaMA-family models (layers of different widths).

A pruned model is saved as an ordinary Hugging Face folder whose ``config.json`` has
``model_type: pruned_<base>`` (``pruned_llama``, ``pruned_mistral``, ``pruned_qwen2``) and a
``layer_shapes`` list: for every decoder layer ``[num_heads, num_kv_heads, intermediate_size]``. A layer
with ``num_kv_heads == 0`` has no attention block and one with ``intermediate_size == 0`` has no MLP: the
block adds exactly nothing to the residual stream.

Loading, with identical weights (nothing is re-initialised; sizes never need ``ignore_mismatched_sizes``):

* ``import prune`` then ``AutoModelForCausalLM.from_pretrained(folder)`` (importing prune registers the
  classes), or ``prune.load_pruned(folder)``;
* without prune-lab installed: ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``,
  since this file is copied into every saved folder and named in its ``auto_map``.

This file is self-contained on purpose (it imports only torch and transformers).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)


class NullAttention(nn.Module):
    """An attention block that was pruned away: it contributes exactly zero to the residual stream.

    It still records the sequence length in the KV cache (with zero heads), so generation positions stay
    right when the first layer's attention is the one removed.
    """

    def __init__(self, layer_idx: int, head_dim: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = head_dim
        self.num_key_value_groups = 1

    def forward(self, hidden_states: torch.Tensor, *args, cache=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            b, t, _ = hidden_states.shape
            empty = hidden_states.new_zeros(b, 0, t, self.head_dim)
            cache.update(empty, empty, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class NullMLP(nn.Module):
    """An MLP block that was pruned away: it contributes exactly zero to the residual stream."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def _linear_like(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(
        in_features, out_features, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype
    )


def apply_layer_shapes(model: nn.Module, layer_shapes) -> None:
    """Resize the projections of every decoder layer to ``layer_shapes`` (weights are loaded afterwards)."""
    if not layer_shapes:
        return
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layers = model.model.layers
    if len(layer_shapes) != len(layers):
        raise ValueError(f"layer_shapes has {len(layer_shapes)} entries for {len(layers)} decoder layers")
    for i, (layer, (n_heads, n_kv, n_mlp)) in enumerate(zip(layers, layer_shapes)):
        attn = layer.self_attn
        if n_kv == 0:
            layer.self_attn = NullAttention(i, head_dim)
        else:
            hidden = config.hidden_size
            attn.q_proj = _linear_like(attn.q_proj, hidden, n_heads * head_dim)
            attn.k_proj = _linear_like(attn.k_proj, hidden, n_kv * head_dim)
            attn.v_proj = _linear_like(attn.v_proj, hidden, n_kv * head_dim)
            attn.o_proj = _linear_like(attn.o_proj, n_heads * head_dim, hidden)
            attn.num_key_value_groups = n_heads // n_kv
        if n_mlp == 0:
            layer.mlp = NullMLP()
        else:
            mlp = layer.mlp
            mlp.gate_proj = _linear_like(mlp.gate_proj, config.hidden_size, n_mlp)
            mlp.up_proj = _linear_like(mlp.up_proj, config.hidden_size, n_mlp)
            mlp.down_proj = _linear_like(mlp.down_proj, n_mlp, config.hidden_size)
            mlp.intermediate_size = n_mlp


class PrunedLlamaConfig(LlamaConfig):
    model_type = "pruned_llama"
    layer_shapes: list | None = None


class PrunedMistralConfig(MistralConfig):
    model_type = "pruned_mistral"
    layer_shapes: list | None = None


class PrunedQwen2Config(Qwen2Config):
    model_type = "pruned_qwen2"
    layer_shapes: list | None = None


class PrunedLlamaForCausalLM(LlamaForCausalLM):
    config_class = PrunedLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        apply_layer_shapes(self, config.layer_shapes)


class PrunedMistralForCausalLM(MistralForCausalLM):
    config_class = PrunedMistralConfig

    def __init__(self, config):
        super().__init__(config)
        apply_layer_shapes(self, config.layer_shapes)


class PrunedQwen2ForCausalLM(Qwen2ForCausalLM):
    config_class = PrunedQwen2Config

    def __init__(self, config):
        super().__init__(config)
        apply_layer_shapes(self, config.layer_shapes)


# base model_type -> (pruned config class, pruned model class)
PRUNED_CLASSES = {
    "llama": (PrunedLlamaConfig, PrunedLlamaForCausalLM),
    "mistral": (PrunedMistralConfig, PrunedMistralForCausalLM),
    "qwen2": (PrunedQwen2Config, PrunedQwen2ForCausalLM),
}


def register_auto_classes() -> None:
    """Let ``AutoConfig`` / ``AutoModelForCausalLM`` resolve ``pruned_*`` model types (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for config_cls, model_cls in PRUNED_CLASSES.values():
        try:
            AutoConfig.register(config_cls.model_type, config_cls)
        except ValueError:  # already registered
            pass
        try:
            AutoModelForCausalLM.register(config_cls, model_cls)
        except ValueError:
            pass
