"""Wiring for the positive-control testbed: long-range recall has exactly one path, one known KV group.

A positive control needs attention groups that serve dependencies longer than 128 tokens *and nothing
else*. Training alone does not give that (measured: a group trained to copy also picks up local work, so
128-token calibration still sees it). So the control fixes the model's wiring and trains under it: a
handful of residual dimensions are reserved, and weights that would open another path are held at zero.

* ``codes`` (``values_per_attribute`` dims): a fact value token ``A07:3`` enters the residual as its
  attribute's shared vector in the ordinary dims (every value of attribute 7 has the same one) plus a fixed
  one-hot code of its value index in ``codes``. Nothing writes ``codes``, and only the dedicated group's
  value projection reads it, so no other weight can tell ``A07:3`` from ``A07:5``. The codes all have
  the same norm, so RMSNorm does not leak the value index through the scale either.
* ``readout`` (``values_per_attribute`` dims): only the dedicated group's output projection writes it,
  and only the (untied) output head reads it.

So the value index of any earlier token reaches the logits through the dedicated group alone. Facts recur
at least ``min_gap`` (150) tokens apart, so in a 128-token window the group has nothing it can copy, in a
512-token window it does: calibration at 128 cannot see the group's worth, calibration at 512 can. The
rest of the model is an ordinary small LLaMA trained on the same text; nothing here changes the model's
architecture, and the pruned model is a plain ``LlamaForCausalLM``. ``value_information_leak`` checks
the wiring on any model: with the dedicated group removed, the logits do not depend on value indices.
"""
from __future__ import annotations

import torch
from torch import nn

from prune.errors import ConfigError
from prune.structure import channel_to_group, model_shape, projections
from prune.testbed.corpus import CorpusSpec

READERS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # take the residual as input (columns)
WRITERS = ("o_proj", "down_proj")  # add to the residual (rows)


def reserved_dims(spec) -> tuple[slice, slice]:
    """(codes, readout): the two blocks of residual dimensions the control reserves, at the end."""
    h, r = spec.model.hidden_size, spec.corpus.values_per_attribute
    return slice(h - 2 * r, h - r), slice(h - r, h)


def check(spec) -> None:
    t, m, c = spec.training, spec.model, spec.corpus
    if not 0 <= t.dedicated_layer < m.num_layers:
        raise ConfigError(f"testbed.training.dedicated_layer={t.dedicated_layer} must index one of {m.num_layers} layers")
    if not 0 <= t.dedicated_group < m.num_kv_heads:
        raise ConfigError(f"testbed.training.dedicated_group={t.dedicated_group} must index one of {m.num_kv_heads} KV groups")
    if 4 * c.values_per_attribute > m.hidden_size:
        raise ConfigError(
            f"testbed.model.hidden_size={m.hidden_size} leaves too few ordinary dims beside the control's "
            f"2 x values_per_attribute={2 * c.values_per_attribute} reserved ones; use hidden_size >= {4 * c.values_per_attribute}"
        )


class Wiring:
    """The control's constraints on one model: zero masks, fixed value codes, tied attribute vectors.

    Use ``project()`` once after initialisation and after every optimiser step, ``constrain_grads()``
    after every backward pass. AdamW then never moves a held weight (its gradient and moments stay 0).
    """

    def __init__(self, model: nn.Module, spec, code_scale: float = 0.5):
        check(spec)
        self.corpus = spec.corpus
        layer, group = spec.training.dedicated_layer, spec.training.dedicated_group
        codes, readout = reserved_dims(spec)
        reserved = slice(codes.start, readout.stop)
        shape = model_shape(model)
        self.zero: dict[nn.Parameter, torch.Tensor] = {}
        for proj in projections(model):
            weight = proj.module.weight
            mask = torch.zeros_like(weight, dtype=torch.bool)
            dedicated = torch.zeros(weight.shape[proj.channel_dim], dtype=torch.bool)
            if proj.layer == layer and proj.block == "attention":
                dedicated = channel_to_group(shape, proj.name, len(dedicated)) == group
            if proj.name in READERS:  # rows are output channels, columns read the residual
                mask[~dedicated, reserved] = True
                mask[dedicated, readout] = True
                if proj.name == "v_proj":  # the dedicated group's values: the value codes alone
                    mask[dedicated, : codes.start] = True
            else:  # o_proj / down_proj: rows write the residual, columns are channels
                mask[reserved, ~dedicated] = True  # nothing else writes the reserved dims
                mask[: readout.start, dedicated] = True  # the dedicated group writes the readout alone
            self.zero[weight] = mask
        embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        if embed.data_ptr() == head.data_ptr():
            raise ConfigError("the control testbed needs untied input and output embeddings")
        c = spec.corpus
        self.values = slice(c.first_value_id, c.first_word_id)
        embed_mask = torch.zeros_like(embed, dtype=torch.bool)
        embed_mask[:, reserved] = True  # codes are set, not learned; nothing enters readout
        head_mask = torch.zeros_like(head, dtype=torch.bool)
        head_mask[:, codes] = True
        head_mask[:, readout] = True
        head_mask[self.values, readout] = False  # only value logits read the readout
        self.zero[embed], self.zero[head] = embed_mask, head_mask
        self.code_cols = codes
        self.code_values = code_scale * torch.eye(c.values_per_attribute).repeat(c.num_attributes, 1).to(embed.dtype)
        self.embed = embed
        self.project()

    def _tie(self, tensor: torch.Tensor) -> None:
        """Every value of one attribute gets the attribute's mean in the ordinary dims."""
        c = self.corpus
        block = tensor[self.values, : self.code_cols.start].view(c.num_attributes, c.values_per_attribute, -1)
        block.copy_(block.mean(1, keepdim=True).expand_as(block))

    @torch.no_grad()
    def project(self) -> None:
        for param, mask in self.zero.items():
            param.masked_fill_(mask, 0.0)
        self.embed[self.values, self.code_cols] = self.code_values.to(self.embed.device)
        self._tie(self.embed)

    @torch.no_grad()
    def constrain_grads(self) -> None:
        for param, mask in self.zero.items():
            if param.grad is not None:
                param.grad.masked_fill_(mask, 0.0)
        if self.embed.grad is not None:
            self._tie(self.embed.grad)


def remove_group(model: nn.Module, layer: int, group: int) -> None:
    """Zero one KV group's output columns: the group's contribution to the residual is gone."""
    shape = model_shape(model)
    o_proj = model.model.layers[layer].self_attn.o_proj
    columns = channel_to_group(shape, "o_proj", o_proj.weight.shape[1]) == group
    with torch.no_grad():
        o_proj.weight[:, columns] = 0.0


@torch.no_grad()
def value_information_leak(model: nn.Module, spec, ids: torch.Tensor, seed: int = 0) -> float:
    """Largest logit change when every value token's index is redrawn (attribute kept).

    On a correctly wired control with the dedicated group removed this is exactly 0: no other path
    carries a value index. With the group present it is large wherever the group copies.
    """
    c: CorpusSpec = spec.corpus
    is_value = (ids >= c.first_value_id) & (ids < c.first_word_id)
    attribute = (ids[is_value] - c.first_value_id) // c.values_per_attribute
    generator = torch.Generator().manual_seed(seed)
    redrawn = ids.clone()
    redrawn[is_value] = c.first_value_id + attribute * c.values_per_attribute + torch.randint(
        0, c.values_per_attribute, attribute.shape, generator=generator)
    return (model(input_ids=ids).logits - model(input_ids=redrawn).logits).abs().max().item()
