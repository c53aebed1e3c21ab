"""What can be pruned in a LLaMA-family model, and how parameters map to prunable groups.

Two kinds of group, both defined per decoder layer:

* an **attention group** per KV head ``g``: the rows of ``k_proj`` and ``v_proj`` for that head, the rows
  of ``q_proj`` for the ``heads_per_group`` query heads that share it (GQA), and the matching input columns
  of ``o_proj`` (plus the q/k/v bias entries where the model has them, as Qwen2 does);
* an **MLP channel** ``c``: row ``c`` of ``gate_proj`` and ``up_proj`` and column ``c`` of ``down_proj``.

A group's cost is its parameter count. Every score in prune-lab is a per-layer vector over these
groups (``GroupScores``); everything that reduces per-weight quantities to groups goes through
``to_groups`` so the mapping lives in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from prune.errors import UnsupportedModelError  # re-exported: defined with the other refusals
from prune.modeling_pruned import NullAttention, NullMLP

ATTENTION = "attention"
MLP = "mlp"
# projection -> (block, module attribute path in a decoder layer, axis along which groups are laid out)
PROJECTIONS = {
    "q_proj": (ATTENTION, ("self_attn", "q_proj"), "out"),
    "k_proj": (ATTENTION, ("self_attn", "k_proj"), "out"),
    "v_proj": (ATTENTION, ("self_attn", "v_proj"), "out"),
    "o_proj": (ATTENTION, ("self_attn", "o_proj"), "in"),
    "gate_proj": (MLP, ("mlp", "gate_proj"), "out"),
    "up_proj": (MLP, ("mlp", "up_proj"), "out"),
    "down_proj": (MLP, ("mlp", "down_proj"), "in"),
}
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def base_model_type(config) -> str:
    model_type = getattr(config, "model_type", "?")
    return model_type[len("pruned_"):] if model_type.startswith("pruned_") else model_type


def check_config(config) -> None:
    """Refuse (one line) a model config prune-lab cannot handle, before any weights are loaded."""
    model_type = base_model_type(config)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model type '{getattr(config, 'model_type', '?')}' is not supported: prune-lab prunes "
            f"LLaMA-architecture causal LMs ({', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    heads, kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    if heads % kv:
        raise UnsupportedModelError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no decoder layers at .model.layers: not a LLaMA-architecture causal LM"
        )
    return layers


def check_modules(model: nn.Module) -> None:
    """Refuse a model whose layers lack the q/k/v/o and gate/up/down projections."""
    for i, layer in enumerate(decoder_layers(model)):
        for proj, (block, path, _) in PROJECTIONS.items():
            parent = getattr(layer, path[0], None)
            if isinstance(parent, (NullAttention, NullMLP)):
                continue
            if not isinstance(getattr(parent, path[1], None), nn.Linear):
                raise UnsupportedModelError(
                    f"decoder layer {i} has no Linear '{'.'.join(path)}': not a LLaMA-architecture layer"
                )


@dataclass(frozen=True)
class LayerShape:
    num_heads: int
    num_kv_heads: int
    intermediate_size: int

    def as_list(self) -> list[int]:
        return [self.num_heads, self.num_kv_heads, self.intermediate_size]


@dataclass(frozen=True)
class ModelShape:
    """Widths of every decoder layer plus what a group costs; read from the modules, so pruned models work."""

    hidden_size: int
    head_dim: int
    heads_per_group: int
    attention_bias: bool
    mlp_bias: bool
    layers: tuple[LayerShape, ...]
    vocab_size: int = 0

    @property
    def attention_group_params(self) -> int:
        q_rows = self.heads_per_group * self.head_dim
        weights = (2 * q_rows + 2 * self.head_dim) * self.hidden_size
        return weights + ((q_rows + 2 * self.head_dim) if self.attention_bias else 0)

    @property
    def mlp_channel_params(self) -> int:
        return 3 * self.hidden_size + (2 if self.mlp_bias else 0)

    def layer_params(self, i: int) -> dict[str, int]:
        s = self.layers[i]
        return {
            ATTENTION: s.num_kv_heads * self.attention_group_params,
            MLP: s.intermediate_size * self.mlp_channel_params,
        }

    @property
    def prunable_params(self) -> int:
        return sum(sum(self.layer_params(i).values()) for i in range(len(self.layers)))

    def group_counts(self, block: str) -> list[int]:
        return [s.num_kv_heads if block == ATTENTION else s.intermediate_size for s in self.layers]

    @property
    def matmul_params(self) -> int:
        """Weights that multiply activations: q/k/v/o and gate/up/down of every layer, and the LM head (not
        the input embedding, a lookup; not norms or biases, elementwise)."""
        h, d = self.hidden_size, self.head_dim
        layers = sum(h * d * (2 * s.num_heads + 2 * s.num_kv_heads) + 3 * h * s.intermediate_size for s in self.layers)
        return layers + self.vocab_size * h

    def forward_flops(self, seq_len: int, sequences: int = 1) -> float:
        """FLOPs of a forward pass over ``sequences`` windows of ``seq_len`` tokens: 2 per multiply-add of
        every weight matmul, plus attention's scores and weighted sum (2 x 2 x ``seq_len`` x head_dim per
        query head and token: the whole window, as dense attention kernels compute it)."""
        attention = sum(4 * seq_len * s.num_heads * self.head_dim for s in self.layers)
        return float((2 * self.matmul_params + attention) * seq_len * sequences)


def model_shape(model: nn.Module) -> ModelShape:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    heads_per_group = config.num_attention_heads // (config.num_key_value_heads or config.num_attention_heads)
    shapes, attn_bias, mlp_bias = [], False, False
    for layer in decoder_layers(model):
        attn, mlp = layer.self_attn, layer.mlp
        if isinstance(attn, NullAttention):
            n_heads = n_kv = 0
        else:
            n_heads = attn.q_proj.out_features // head_dim
            n_kv = attn.k_proj.out_features // head_dim
            attn_bias = attn_bias or attn.q_proj.bias is not None
        if isinstance(mlp, NullMLP):
            n_mlp = 0
        else:
            n_mlp = mlp.gate_proj.out_features
            mlp_bias = mlp_bias or mlp.gate_proj.bias is not None
        shapes.append(LayerShape(n_heads, n_kv, n_mlp))
    return ModelShape(config.hidden_size, head_dim, heads_per_group, attn_bias, mlp_bias, tuple(shapes), config.vocab_size)


def shape_from_config(config) -> ModelShape:
    """The shape a model *will* have, from its config alone (dense, or ``layer_shapes`` of a pruned one)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = config.num_key_value_heads or config.num_attention_heads
    per_layer = getattr(config, "layer_shapes", None) or [
        [config.num_attention_heads, kv, config.intermediate_size]
    ] * config.num_hidden_layers
    base = base_model_type(config)
    attention_bias = bool(getattr(config, "attention_bias", False)) or base == "qwen2"
    return ModelShape(
        config.hidden_size, head_dim, config.num_attention_heads // kv, attention_bias,
        bool(getattr(config, "mlp_bias", False)), tuple(LayerShape(*map(int, s)) for s in per_layer), config.vocab_size,
    )


@dataclass
class Projection:
    """One prunable Linear of one layer."""

    layer: int
    name: str  # q_proj, ..., down_proj
    module: nn.Linear

    @property
    def block(self) -> str:
        return PROJECTIONS[self.name][0]

    @property
    def axis(self) -> str:
        return PROJECTIONS[self.name][2]

    @property
    def channel_dim(self) -> int:
        """Weight dimension that indexes channels (rows for 'out' projections, columns for 'in')."""
        return 0 if self.axis == "out" else 1

    @property
    def grouped_bias(self) -> bool:
        """Whether the bias belongs to the groups (q/k/v and gate/up biases do; o/down biases do not)."""
        return self.axis == "out" and self.module.bias is not None


def projections(model: nn.Module) -> Iterator[Projection]:
    for i, layer in enumerate(decoder_layers(model)):
        for name, (_, (parent, child), _) in PROJECTIONS.items():
            block = getattr(layer, parent)
            if isinstance(block, (NullAttention, NullMLP)):
                continue
            yield Projection(i, name, getattr(block, child))


def channel_to_group(shape: ModelShape, proj: str, n_channels: int) -> torch.Tensor:
    """Group index of every channel of projection ``proj``."""
    block = PROJECTIONS[proj][0]
    channels = torch.arange(n_channels)
    if block == MLP:
        return channels
    if proj in ("k_proj", "v_proj"):
        return channels // shape.head_dim
    return channels // (shape.head_dim * shape.heads_per_group)  # q_proj rows, o_proj columns


@dataclass
class GroupScores:
    """One score per prunable group: ``attention[layer][kv_group]`` and ``mlp[layer][channel]``."""

    attention: list[torch.Tensor]
    mlp: list[torch.Tensor]
    meta: dict = field(default_factory=dict)

    @classmethod
    def zeros(cls, shape: ModelShape) -> "GroupScores":
        return cls(
            [torch.zeros(s.num_kv_heads, dtype=torch.float64) for s in shape.layers],
            [torch.zeros(s.intermediate_size, dtype=torch.float64) for s in shape.layers],
        )

    def block(self, block: str) -> list[torch.Tensor]:
        return self.attention if block == ATTENTION else self.mlp

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "GroupScores":
        return GroupScores([fn(t) for t in self.attention], [fn(t) for t in self.mlp], dict(self.meta))

    def __add__(self, other: "GroupScores") -> "GroupScores":
        return GroupScores(
            [a + b for a, b in zip(self.attention, other.attention)],
            [a + b for a, b in zip(self.mlp, other.mlp)],
            dict(self.meta),
        )

    def flat(self, block: str) -> torch.Tensor:
        return torch.cat([t.flatten() for t in self.block(block)]) if self.block(block) else torch.zeros(0)

    def to_dict(self) -> dict:
        return {ATTENTION: [t.tolist() for t in self.attention], MLP: [t.tolist() for t in self.mlp]}


def add_channel_values(scores: GroupScores, shape: ModelShape, proj: Projection, channel_values: torch.Tensor) -> None:
    """Add per-channel values of ``proj`` into the right groups of ``scores`` (in place)."""
    target = scores.block(proj.block)[proj.layer]
    gid = channel_to_group(shape, proj.name, channel_values.numel()).to(channel_values.device)
    target.index_add_(0, gid.cpu(), channel_values.detach().to("cpu", torch.float64))


def reduce_to_groups(model: nn.Module, elementwise: Callable[[Projection, str], torch.Tensor | None]) -> GroupScores:
    """Sum a per-element quantity over each group.

    ``elementwise(proj, "weight" | "bias")`` returns a tensor shaped like that parameter (or None for a
    missing bias); it is summed over the non-channel axis and then over the channels of each group.
    """
    shape = model_shape(model)
    scores = GroupScores.zeros(shape)
    for proj in projections(model):
        values = elementwise(proj, "weight").float()
        per_channel = values.sum(dim=1 - proj.channel_dim)
        if proj.grouped_bias:
            per_channel = per_channel + elementwise(proj, "bias").float()
        add_channel_values(scores, shape, proj, per_channel)
    return scores
