"""Training for the positive-control testbed: long-range work in one known attention group, by construction.

The default testbed learns its long-range copy in groups that also serve ordinary tokens, so a
128-token calibration keeps them anyway and no length effect can show. A positive control needs the
opposite: groups that serve dependencies longer than 128 tokens *and nothing else*. This curriculum makes
exactly one KV group (``dedicated_layer``, ``dedicated_group``) that group:

1. *local*: every weight except the dedicated group's is trained on the training split with every fact
   value replaced by a random value of its attribute (``scramble_facts``): the local statistics stay, but
   there is nothing to copy, at any distance, so no group can learn to. The dedicated group's output
   columns are zero and receive no gradient.
2. *copy warm-up*: only the dedicated group's q/k/v rows and o columns train (everything else frozen),
   on dense documents whose facts recur 16-96 tokens apart, until held-out recall reaches the target;
3. *long*: the same, on ``long_window``-token windows of the training split.

So the rest of the model is exactly what a local-only model would be, and the long-range recall lives in
one group whose removal costs nothing on local tokens: calibration at 128 tokens (below ``min_gap``)
cannot see its value, calibration at 512 can. The known answer is the point of the control.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from prune.errors import ConfigError
from prune.structure import channel_to_group, model_shape, projections
from prune.testbed.corpus import SPECIAL_TOKENS


def group_masks(model: nn.Module, layer: int, group: int) -> dict[nn.Parameter, torch.Tensor]:
    """Boolean masks (same shape as each weight) of the entries that belong to one attention group."""
    shape = model_shape(model)
    masks = {}
    for proj in projections(model):
        if proj.layer != layer or proj.block != "attention":
            continue
        weight = proj.module.weight
        n = weight.shape[proj.channel_dim]
        in_group = channel_to_group(shape, proj.name, n) == group
        mask = in_group[:, None].expand_as(weight) if proj.channel_dim == 0 else in_group[None, :].expand_as(weight)
        masks[weight] = mask.clone()
    return masks


def scramble_facts(stream: torch.Tensor, spec, seed: int) -> torch.Tensor:
    """The stream with every fact value replaced by a uniformly random value of the same attribute."""
    out = stream.clone()
    first, last, n_val = spec.first_value_id, spec.first_word_id, spec.values_per_attribute
    is_value = (out >= first) & (out < last)
    attribute = (out[is_value] - first) // n_val
    generator = torch.Generator().manual_seed(seed)
    out[is_value] = first + attribute * n_val + torch.randint(0, n_val, attribute.shape, generator=generator)
    return out


def _check(spec) -> None:
    t, m = spec.training, spec.model
    if not 0 <= t.dedicated_layer < m.num_layers:
        raise ConfigError(f"testbed.training.dedicated_layer={t.dedicated_layer} must index one of {m.num_layers} layers")
    if not 0 <= t.dedicated_group < m.num_kv_heads:
        raise ConfigError(f"testbed.training.dedicated_group={t.dedicated_group} must index one of {m.num_kv_heads} KV groups")


def train_dedicated(spec, train_stream: torch.Tensor, dense: torch.Tensor, held_out_dense: torch.Tensor,
                    new_model, recall_accuracy, random_windows, progress: bool = True):
    """Train the control testbed (see the module docstring); returns (model, training log)."""
    from tqdm.auto import tqdm

    _check(spec)
    t, c = spec.training, spec.corpus
    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    model = new_model()
    model.train()
    masks = group_masks(model, t.dedicated_layer, t.dedicated_group)
    history: dict = {"phases": [], "dedicated": {"layer": t.dedicated_layer, "group": t.dedicated_group}}
    started = time.time()
    planned = t.local_steps + t.warmup_max_steps + t.long_steps
    bar = tqdm(total=planned, desc="training control testbed", disable=not progress, leave=False)

    o_proj = model.model.layers[t.dedicated_layer].self_attn.o_proj
    columns = masks[o_proj.weight][0]  # the group's head outputs among o_proj's inputs
    captured = {}
    hook = o_proj.register_forward_pre_hook(lambda module, args: captured.__setitem__("x", args[0]))
    marker = slice(len(SPECIAL_TOKENS), c.first_value_id)

    def silence(batch):
        """Mean square of the group's head outputs where the next token is not a fact value: the group
        may speak only at a marker, so it does no local work (and 128-token windows cannot see it)."""
        out = captured["x"][..., columns]
        quiet = ~((batch >= marker.start) & (batch < marker.stop))
        return out[quiet].square().sum(-1).mean()

    def run(params, steps, batches, lr, weight_decay, grad_mask, name, check_recall=False, quiet=False):
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
        loss, acc = float("nan"), None
        for i in range(steps):
            frac = i / max(steps, 1)
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (i + 1) / 30) * (1.0 if frac < 0.6 else 0.1 + 0.45 * (1 + math.cos(math.pi * (frac - 0.6) / 0.4)))
            batch = batches()
            out = model(input_ids=batch, labels=batch).loss
            (out + t.silence_weight * silence(batch) if quiet else out).backward()
            for param, mask in grad_mask.items():
                param.grad.masked_fill_(mask, 0.0)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss = out.item()
            bar.update(1)
            if check_recall and (i + 1) % 25 == 0:
                model.eval()
                acc, _ = recall_accuracy(model, held_out_dense[:, : t.warmup_window], c)
                model.train()
                bar.set_postfix(phase=name, loss=f"{loss:.2f}", recall=f"{acc:.2f}")
                if acc >= t.warmup_target_accuracy:
                    bar.update(steps - i - 1)
                    history["phases"].append({"name": name, "steps": i + 1, "loss": loss, "recall_accuracy": acc})
                    return
        history["phases"].append({"name": name, "steps": steps, "loss": loss, "recall_accuracy": acc})

    # 1. local: everything but the dedicated group, on text with nothing to copy
    with torch.no_grad():
        o_proj.weight.masked_fill_(masks[o_proj.weight], 0.0)
    scrambled = scramble_facts(train_stream, c, t.seed)
    run(list(model.parameters()), t.local_steps, lambda: random_windows(rng, scrambled, t.local_batch, t.local_window),
        t.lr, 0.01, masks, "local")

    # 2-3. the dedicated group alone: copy warm-up on dense documents, then long windows
    frozen = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # a fresh start for the group (the local phase decayed its q/k/v rows)
        for param, mask in masks.items():
            fresh = torch.randn_like(param) * spec.model.init_std
            param.copy_(torch.where(mask, fresh, param))
    trainable = dict(masks)
    if t.copy_embeddings:  # the fact tokens' embeddings may adapt too: they belong to no prunable group
        embedding = model.get_input_embeddings().weight
        rows = torch.zeros(embedding.shape[0], dtype=torch.bool)
        rows[len(SPECIAL_TOKENS): c.first_word_id] = True
        trainable[embedding] = rows[:, None].expand_as(embedding).clone()
    params = list(trainable)
    for p in params:
        p.requires_grad_(True)
    outside = {p: ~m for p, m in trainable.items()}

    def dense_batch():
        starts = rng.integers(0, dense.shape[1] - t.warmup_window + 1, t.warmup_batch)
        rows = rng.integers(0, len(dense), t.warmup_batch)
        return torch.stack([dense[r, s : s + t.warmup_window] for r, s in zip(rows, starts)])

    run(params, t.warmup_max_steps, dense_batch, t.copy_lr, 0.0, outside, "copy_warmup", check_recall=True)
    run(params, t.long_steps, lambda: random_windows(rng, train_stream, t.long_batch, t.long_window),
        t.copy_lr * 0.5, 0.0, outside, "long", quiet=t.silence_weight > 0)
    hook.remove()
    for p, flag in frozen.items():
        p.requires_grad_(flag)
    bar.close()
    model.eval()
    history["seconds"] = round(time.time() - started, 1)
    history["steps"] = sum(p["steps"] for p in history["phases"])
    history["spec"] = asdict(t)
    return model, history
