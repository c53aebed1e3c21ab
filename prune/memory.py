"""A rough estimate of the memory a job needs, printed before it starts (so an OOM is no surprise).

Counts, in bytes: the weights; the gradient of the largest prunable weight (the pass frees each gradient
as soon as it is reduced; with micro-batches all prunable gradients live until the batch ends) and the
fp32 running mean of every prunable gradient; the activations autograd keeps for one (micro-)batch; and the fp32 logits.
Activations per token and layer are about ``(6 * hidden + 4 * intermediate) * dtype_bytes`` for a
LLaMA layer with SDPA (no attention matrix is stored), or ``2 * hidden`` with gradient checkpointing.
It is an estimate for planning; the measured peaks per phase are in ``metrics.json``.
"""
from __future__ import annotations

import torch

from prune.structure import ModelShape


def estimate_bytes(config, shape: ModelShape, seq_len: int, batch_size: int, dtype: torch.dtype, gradient_checkpointing: bool = False, micro_batches: bool = False) -> dict[str, int]:
    elem = torch.empty((), dtype=dtype).element_size()
    vocab = int(config.vocab_size)
    hidden = shape.hidden_size
    embed = vocab * hidden * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    weights = (shape.prunable_params + embed + (2 * len(shape.layers) + 1) * hidden) * elem
    widest = max((s.intermediate_size for s in shape.layers), default=0)
    grads = (shape.prunable_params if micro_batches else hidden * max(widest, hidden)) * elem
    running_mean = shape.prunable_params * 4
    tokens = seq_len * batch_size
    per_token_layer = (2 * hidden) if gradient_checkpointing else (6 * hidden + 4 * widest)
    activations = tokens * len(shape.layers) * per_token_layer * elem
    logits = tokens * vocab * (elem + 4 + 4)  # model-dtype logits, fp32 copy, fp32 softmax grad
    parts = {"weights": weights, "gradients": grads, "fp32_running_mean": running_mean, "activations": activations, "logits": logits}
    parts["total"] = sum(parts.values())
    return parts


def describe(parts: dict[str, int]) -> str:
    gib = 2**30
    body = ", ".join(f"{k} {v / gib:.2f}" for k, v in parts.items() if k != "total")
    return f"estimated peak memory of the importance pass: {parts['total'] / gib:.2f} GiB ({body} GiB)"
