"""The graded positive control: one ordinary KV group learns the long-range copy, by the order of training.

The wired control (``prune.testbed.control``) isolates its mechanism by holding weights at zero; its
group's cost counts weights that do nothing, and the effect it plants is huge. Here nothing is held: the
dedicated group (``training.dedicated_layer`` / ``dedicated_group``, with ``training.wired=false``) is
made the only path by *when* each part learns:

1. **base**: the whole model except the dedicated group (its ``o_proj`` columns stay at zero, so it is
   absent) trains on the corpus with every fact value redrawn at random within its attribute: there is
   no long-range dependency to learn, so no other group learns one. ``doc_steps`` steps on ``doc_window``
   tokens, then ``long_steps`` on ``long_window``;
2. **mechanism**: everything else frozen, the dedicated group (its query, key, value and output weights,
   from ordinary initialisation) trains on the real text: the dense warm-up (facts 16-96 apart, until
   held-out recall reaches ``warmup_target_accuracy``), then ``doc_steps`` on ``doc_window`` tokens. The
   loss is cross-entropy on fact-value tokens and, on every other token, the KL divergence from the base
   model (the same model without the group): the group learns to copy facts and to leave the rest alone.

So at the end every weight is trained and non-zero, of ordinary size, and the group's cost is what it
is; removing it takes the copy away (facts >= ``min_gap`` = 150 tokens back: nothing at 128 tokens) and
changes little else. The effect's *size* is graded by how often facts occur (``corpus.num_attributes``):
``prune/conf/testbed/graded_*.yaml``, measured in ``experiments/results/testbed_graded.md``.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from prune.structure import channel_to_group, model_shape
from prune.testbed.corpus import BOS_ID, CorpusSpec, generate_documents


def group_masks(model, layer: int, group: int) -> dict[torch.nn.Parameter, torch.Tensor]:
    """The entries of the dedicated group: its query/key/value rows and its output columns."""
    shape = model_shape(model)
    attn = model.model.layers[layer].self_attn
    masks = {}
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        weight = getattr(attn, name).weight
        mask = torch.zeros_like(weight, dtype=torch.bool)
        if name == "o_proj":
            mask[:, channel_to_group(shape, name, weight.shape[1]) == group] = True
        else:
            mask[channel_to_group(shape, name, weight.shape[0]) == group] = True
        masks[weight] = mask
    return masks


def scramble_values(batch: torch.Tensor, spec: CorpusSpec, generator: torch.Generator) -> torch.Tensor:
    """Every fact value redrawn uniformly within its attribute: the text keeps its layout, loses its facts."""
    value0, n_val = spec.first_value_id, spec.values_per_attribute
    is_value = (batch >= value0) & (batch < spec.first_word_id)
    attribute = (batch[is_value] - value0) // n_val
    out = batch.clone()
    out[is_value] = value0 + attribute * n_val + torch.randint(0, n_val, attribute.shape, generator=generator)
    return out


GRADED_VERSION = 2  # bump when this training changes what it produces (names the cache folder)
# The "leave the rest alone" term against the copy's cross-entropy: weak while the copy forms (the dense
# warm-up), strong afterwards (at 1 throughout, the group still shifted local predictions by ~0.01 nats;
# at 10 throughout, the copy formed slowly: both measured).
KL_WARMUP, KL_WEIGHT = 1.0, 10.0


def mechanism_loss(logits: torch.Tensor, base_logits: torch.Tensor, batch: torch.Tensor, spec: CorpusSpec,
                   kl_weight: float = KL_WEIGHT) -> torch.Tensor:
    """Cross-entropy on fact-value targets, ``kl_weight`` x KL(base || model) on every other target, averaged
    over positions."""
    logits, base_logits, targets = logits[:, :-1], base_logits[:, :-1], batch[:, 1:]
    is_value = (targets >= spec.first_value_id) & (targets < spec.first_word_id)
    logp = F.log_softmax(logits.float(), -1)
    ce = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    base_logp = F.log_softmax(base_logits.float(), -1)
    kl = (base_logp.exp() * (base_logp - logp)).sum(-1)
    return torch.where(is_value, ce, kl_weight * kl).mean()


def _lr(base_lr: float, step: int, total: int) -> float:
    frac = step / max(total, 1)
    return base_lr * min(1.0, (step + 1) / 30) * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


def train_graded(spec, train_stream: torch.Tensor, progress: bool = True):
    """Train the graded control (see the module docstring); returns (model, training log)."""
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    from prune.testbed.recall import random_windows, recall_accuracy
    from prune.testbed.spec import model_config

    t, c = spec.training, spec.corpus
    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    generator = torch.Generator().manual_seed(t.seed)
    model = LlamaForCausalLM._from_config(model_config(spec), attn_implementation="sdpa")
    model.train()
    masks = group_masks(model, t.dedicated_layer, t.dedicated_group)
    o_proj = model.model.layers[t.dedicated_layer].self_attn.o_proj.weight
    with torch.no_grad():
        o_proj.masked_fill_(masks[o_proj], 0.0)  # the group is absent while the base trains
    history: dict = {"phases": []}
    started = time.time()
    bar = tqdm(total=2 * t.doc_steps + t.long_steps + t.warmup_max_steps, desc="training graded testbed",
               disable=not progress, leave=False)

    # Stage 1: the base, on text without long-range facts.
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(0.9, 0.98), weight_decay=0.01)
    total, step, loss = t.doc_steps + t.long_steps, 0, float("nan")
    for name, window, n_steps in (("base", t.doc_window, t.doc_steps), ("base_long", t.long_window, t.long_steps)):
        for _ in range(n_steps):
            batch = scramble_values(random_windows(rng, train_stream, t.doc_batch, window), c, generator)
            for group in opt.param_groups:
                group["lr"] = _lr(t.lr, step, total)
            out = model(input_ids=batch, labels=batch).loss
            out.backward()
            o_proj.grad.masked_fill_(masks[o_proj], 0.0)  # AdamW never moves it: zero grad, zero moments
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step, loss = step + 1, out.item()
            bar.update(1)
            bar.set_postfix(phase=name, loss=f"{loss:.2f}")
        history["phases"].append({"name": name, "steps": n_steps, "loss": loss})

    # Stage 2: the dedicated group alone, from ordinary initialisation, on the real text.
    base = copy.deepcopy(model).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        o_proj[masks[o_proj]] = torch.randn(int(masks[o_proj].sum()), generator=generator) * spec.model.init_std
    trained = list(masks)
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in trained))
    opt = torch.optim.AdamW(trained, lr=t.lr, betas=(0.9, 0.98), weight_decay=0.0)
    dense_docs = generate_documents(
        CorpusSpec(**{**asdict(c), "doc_tokens": max(t.doc_window, t.warmup_window)}), t.dense_docs, t.seed + 77,
        min_gap=t.warmup_min_gap, max_gap=t.warmup_max_gap, first_mention_within=32,
    )
    dense = torch.tensor([[BOS_ID] + d[:-1] for d in dense_docs])
    held_out, dense = dense[:4], dense[4:]

    def step_on(batch: torch.Tensor, step: int, total: int, kl_weight: float = KL_WEIGHT) -> float:
        for group in opt.param_groups:
            group["lr"] = _lr(t.lr, step, total)
        with torch.no_grad():
            base_logits = base(input_ids=batch).logits
        out = mechanism_loss(model(input_ids=batch).logits, base_logits, batch, c, kl_weight)
        out.backward()
        for p, mask in masks.items():
            p.grad.masked_fill_(~mask, 0.0)  # only the group's own entries move
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.item()

    acc, total, step = 0.0, t.warmup_max_steps + t.doc_steps, 0
    for i in range(t.warmup_max_steps):
        rows = rng.integers(0, len(dense), t.warmup_batch)
        starts = rng.integers(0, dense.shape[1] - t.warmup_window + 1, t.warmup_batch)
        loss = step_on(torch.stack([dense[r, s: s + t.warmup_window] for r, s in zip(rows, starts)]), step, total, KL_WARMUP)
        step += 1
        bar.update(1)
        if (i + 1) % 25 == 0:
            model.eval()
            acc, _ = recall_accuracy(model, held_out[:, : t.warmup_window], c)
            model.train()
            bar.set_postfix(phase="mechanism warm-up", loss=f"{loss:.3f}", recall=f"{acc:.2f}")
            if acc >= t.warmup_target_accuracy:
                break
    history["phases"].append({"name": "mechanism_warmup", "steps": i + 1, "recall_accuracy": acc, "loss": loss})
    total = step + t.doc_steps
    short_rows = t.doc_batch * t.doc_window // t.warmup_window
    for i in range(t.doc_steps):
        if i % 2:  # every other step the same number of tokens in short windows: nothing to copy there
            batch = random_windows(rng, train_stream, short_rows, t.warmup_window)
        else:
            batch = random_windows(rng, train_stream, t.doc_batch, t.doc_window)
            if t.dense_rows:
                batch[: t.dense_rows] = dense[rng.integers(0, len(dense), t.dense_rows), : t.doc_window]
        loss = step_on(batch, step, total)
        step += 1
        bar.update(1)
        bar.set_postfix(phase="mechanism", loss=f"{loss:.3f}")
    history["phases"].append({"name": "mechanism", "steps": t.doc_steps, "loss": loss})
    bar.close()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    history["seconds"] = round(time.time() - started, 1)
    return model, history
