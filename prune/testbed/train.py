"""Training the testbed LLaMA from scratch on CPU: the three-phase curriculum ``prune.testbed.build`` runs once.

1. *warm-up*: 128-token windows of dense documents in which facts recur 16-96 tokens apart, until the
   copy mechanism works (in-window recall accuracy >= ``warmup_target_accuracy``) or ``warmup_max_steps``;
2. *documents*: 512-token windows of the real training split (facts 150-1500 apart), with
   ``dense_rows`` rows per batch still drawn from dense documents so the mechanism is not forgotten
   while the word grammar is learned;
3. *long*: 1024-token windows of the training split, learning rate decaying to 10 %.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import torch

from prune.testbed.corpus import BOS_ID, CorpusSpec, generate_documents
from prune.testbed.recall import random_windows, recall_accuracy  # noqa: F401  (recall_accuracy: re-exported)
from prune.testbed.spec import TestbedSpec, model_config


def train_model(spec: TestbedSpec, train_stream: torch.Tensor, progress: bool = True):
    """Train the testbed LLaMA from scratch on CPU; returns (model, training log)."""
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    t, c = spec.training, spec.corpus
    if t.dedicated_layer is not None and not t.wired:  # the graded control: staged training, nothing held at zero
        from prune.testbed.graded import train_graded

        return train_graded(spec, train_stream, progress)
    dense_spec = {"min_gap": t.warmup_min_gap, "max_gap": t.warmup_max_gap, "first_mention_within": 32}
    dense_docs = generate_documents(
        CorpusSpec(**{**asdict(c), "doc_tokens": max(t.doc_window, t.warmup_window)}), t.dense_docs, t.seed + 77,
        **dense_spec,
    )
    dense = torch.tensor([[BOS_ID] + d[:-1] for d in dense_docs])
    held_out_dense, dense = dense[:4], dense[4:]

    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    model = LlamaForCausalLM._from_config(model_config(spec), attn_implementation="sdpa")
    model.train()
    wiring = None
    if t.dedicated_layer is not None:  # the positive control: one path for long-range recall
        from prune.testbed.control import Wiring

        wiring = Wiring(model, spec)

    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(0.9, 0.98), weight_decay=0.01)
    planned = t.warmup_max_steps + t.doc_steps + t.long_steps
    history: dict = {"phases": []}
    step = 0
    started = time.time()

    def lr_at(step: int, total: int) -> float:
        frac = step / max(total, 1)
        decay = 1.0 if frac < 0.6 else 0.1 + 0.45 * (1 + math.cos(math.pi * (frac - 0.6) / 0.4))
        return t.lr * min(1.0, (step + 1) / 30) * decay

    def train_step(batch: torch.Tensor, total: int) -> float:
        nonlocal step
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        if wiring is not None:
            wiring.constrain_grads()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if wiring is not None:
            wiring.project()
        step += 1
        return loss.item()

    bar = tqdm(total=planned, desc="training testbed", disable=not progress, leave=False)
    # Phase 1: warm-up on dense recall until the copy mechanism works.
    warm_acc, loss = 0.0, float("nan")
    for i in range(t.warmup_max_steps):
        total = planned if i < t.warmup_max_steps else step + t.doc_steps + t.long_steps
        starts = rng.integers(0, dense.shape[1] - t.warmup_window + 1, t.warmup_batch)
        rows = rng.integers(0, len(dense), t.warmup_batch)
        batch = torch.stack([dense[r, s : s + t.warmup_window] for r, s in zip(rows, starts)])
        loss = train_step(batch, total)
        bar.update(1)
        if (i + 1) % 25 == 0:
            model.eval()
            warm_acc, _ = recall_accuracy(model, held_out_dense[:, : t.warmup_window], c)
            model.train()
            bar.set_postfix(loss=f"{loss:.2f}", recall=f"{warm_acc:.2f}")
            if warm_acc >= t.warmup_target_accuracy:
                break
    history["phases"].append({"name": "warmup", "steps": step, "recall_accuracy": warm_acc, "loss": loss})
    bar.total = planned = step + t.doc_steps + t.long_steps
    bar.refresh()

    # Phases 2 and 3: the real documents, first at 512 then at 1024 tokens.
    for name, window, batch_size, n_steps, n_dense in (
        ("documents", t.doc_window, t.doc_batch, t.doc_steps, t.dense_rows),
        ("long", t.long_window, t.long_batch, t.long_steps, 0),
    ):
        for _ in range(n_steps):
            batch = random_windows(rng, train_stream, batch_size, window)
            if n_dense:
                rows = rng.integers(0, len(dense), n_dense)
                batch[:n_dense] = dense[rows, :window]
            loss = train_step(batch, planned)
            bar.update(1)
            bar.set_postfix(phase=name, loss=f"{loss:.2f}")
        history["phases"].append({"name": name, "steps": n_steps, "loss": loss})
    bar.close()
    model.eval()
    history["seconds"] = round(time.time() - started, 1)
    history["steps"] = step
    return model, history
