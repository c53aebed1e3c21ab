"""Physical pruning (shrinking Linear layers, dropping blocks and layers) and its masked equivalent.

``apply_plan`` really removes rows and columns: the pruned model is smaller and faster, and its forward,
``generate`` and backward work as before. ``masked`` zeroes the same groups in the dense model through
hooks; the two must give the same logits, which the tests check.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from prune.modeling_pruned import NullAttention, NullMLP
from prune.pruning.plan import PruningPlan
from prune.structure import ModelShape, decoder_layers, model_shape


def _rows_of_groups(groups: list[int], rows_per_group: int, device) -> torch.Tensor:
    return torch.cat([torch.arange(g * rows_per_group, (g + 1) * rows_per_group) for g in groups]).to(device)


def _select(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along weight dim ``dim`` (0 = outputs, 1 = inputs)."""
    weight = linear.weight.detach().index_select(dim, index)
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=linear.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach().index_select(0, index) if dim == 0 else linear.bias.detach())
    new.weight.requires_grad_(linear.weight.requires_grad)
    return new


def _prune_attention(layer: nn.Module, keep: list[int], shape: ModelShape, layer_idx: int) -> None:
    attn = layer.self_attn
    if not keep:
        layer.self_attn = NullAttention(layer_idx, shape.head_dim)
        return
    device = attn.q_proj.weight.device
    q_rows = _rows_of_groups(keep, shape.head_dim * shape.heads_per_group, device)
    kv_rows = _rows_of_groups(keep, shape.head_dim, device)
    attn.q_proj = _select(attn.q_proj, q_rows, 0)
    attn.k_proj = _select(attn.k_proj, kv_rows, 0)
    attn.v_proj = _select(attn.v_proj, kv_rows, 0)
    attn.o_proj = _select(attn.o_proj, q_rows, 1)
    attn.num_key_value_groups = shape.heads_per_group  # unchanged: whole GQA groups go together


def _prune_mlp(layer: nn.Module, keep: list[int]) -> None:
    mlp = layer.mlp
    if not keep:
        layer.mlp = NullMLP()
        return
    index = torch.tensor(keep, device=mlp.gate_proj.weight.device)
    mlp.gate_proj = _select(mlp.gate_proj, index, 0)
    mlp.up_proj = _select(mlp.up_proj, index, 0)
    mlp.down_proj = _select(mlp.down_proj, index, 1)
    mlp.intermediate_size = len(keep)


def _drop_layers(model: nn.Module, remove: list[int]) -> None:
    layers = decoder_layers(model)
    kept = [layer for i, layer in enumerate(layers) if i not in set(remove)]
    model.model.layers = nn.ModuleList(kept)
    for new_idx, layer in enumerate(kept):
        for module in (layer, layer.self_attn):
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        config.layer_types = [t for i, t in enumerate(layer_types) if i not in set(remove)]
    config.num_hidden_layers = len(kept)


def apply_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Prune ``model`` in place following ``plan``; records the new per-layer shapes in ``model.config``."""
    shape = model_shape(model)
    layers = decoder_layers(model)
    if len(plan.keep_attention) != len(layers):
        raise ValueError(f"plan covers {len(plan.keep_attention)} layers, model has {len(layers)}")
    for i, layer in enumerate(layers):
        if len(plan.keep_attention[i]) < shape.layers[i].num_kv_heads:
            _prune_attention(layer, sorted(plan.keep_attention[i]), shape, i)
        if len(plan.keep_mlp[i]) < shape.layers[i].intermediate_size:
            _prune_mlp(layer, sorted(plan.keep_mlp[i]))
    if plan.removed_layers:
        _drop_layers(model, plan.removed_layers)
    model.config.layer_shapes = [s.as_list() for s in model_shape(model).layers]
    return model


@contextlib.contextmanager
def masked(model: nn.Module, plan: PruningPlan):
    """Zero the groups ``plan`` removes, in the dense model, without changing any weight.

    Removing a head is the same as zeroing its slice of ``o_proj``'s input; removing an MLP channel is
    the same as zeroing its ``down_proj`` input; removing a layer makes its output equal its input.
    """
    shape = model_shape(model)
    handles = []

    def zero_inputs(mask: torch.Tensor):
        def hook(module, args):
            return (args[0] * mask.to(args[0].dtype),)

        return hook

    def zero_output(module, args, output):  # an emptied block adds nothing, not even its output bias
        return torch.zeros_like(output)

    try:
        for i, layer in enumerate(decoder_layers(model)):
            if i in plan.removed_layers:
                handles.append(layer.register_forward_hook(_skip_layer, with_kwargs=True))
                continue
            s = shape.layers[i]
            if len(plan.keep_attention[i]) < s.num_kv_heads:
                mask = torch.zeros(s.num_heads * shape.head_dim, device=layer.self_attn.o_proj.weight.device)
                if plan.keep_attention[i]:
                    mask[_rows_of_groups(plan.keep_attention[i], shape.head_dim * shape.heads_per_group, mask.device)] = 1
                handles.append(layer.self_attn.o_proj.register_forward_pre_hook(zero_inputs(mask)))
                if not plan.keep_attention[i]:
                    handles.append(layer.self_attn.o_proj.register_forward_hook(zero_output))
            if len(plan.keep_mlp[i]) < s.intermediate_size:
                mask = torch.zeros(s.intermediate_size, device=layer.mlp.down_proj.weight.device)
                mask[plan.keep_mlp[i]] = 1
                handles.append(layer.mlp.down_proj.register_forward_pre_hook(zero_inputs(mask)))
                if not plan.keep_mlp[i]:
                    handles.append(layer.mlp.down_proj.register_forward_hook(zero_output))
        yield model
    finally:
        for h in handles:
            h.remove()


def _skip_layer(module, args, kwargs, output):
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
