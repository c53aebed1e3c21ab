"""A rough estimate of the memory a job needs, printed before it starts (so an OOM is no surprise).

Counts, in bytes: the weights; the gradient of the largest prunable weight (the pass frees each gradient
as soon as it is reduced; with micro-batches all prunable gradients live until the batch ends) and the
running mean ``G`` of every prunable gradient (4 bytes per weight in fp32, 3 as bf16 + Kahan compensation,
none on the device with ``mean_grad=cpu``, which keeps it in host memory and adds a few pinned staging
gradients); the activations autograd keeps for one (micro-)batch; the logits (one chunk of positions with
the chunked loss of ``prune.eval.losses``, else all of them, with their fp32 copy and gradient); and on the CPU the
process's resident memory before the model loads (libraries, data), since there the measured peak is the RSS.
Activations per token and layer are about ``(6 * hidden + 4 * intermediate) * dtype_bytes`` for a
LLaMA layer with SDPA (no attention matrix is stored), or ``2 * hidden`` with gradient checkpointing.
It is an estimate for planning; the measured peaks per phase are in ``metrics.json``.
"""
from __future__ import annotations

import torch

from prune.eval.losses import logits_bytes
from prune.importance.mean_grad import DEVICE_BYTES_PER_WEIGHT, HOST_BYTES_PER_WEIGHT, MEAN_GRAD_CHOICES, STAGING_SLOTS
from prune.structure import ModelShape


def estimate_bytes(config, shape: ModelShape, seq_len: int, batch_size: int, dtype: torch.dtype, gradient_checkpointing: bool = False,
                   micro_batches: bool = False, mean_grad: str = "fp32", process_bytes: int = 0) -> dict[str, int]:
    """Bytes on the device per part (and ``total``); ``host_running_mean`` is host memory, not in the total.
    ``process_bytes`` (on the CPU: the process's resident memory before the model loads) is added as it is."""
    elem = torch.empty((), dtype=dtype).element_size()
    vocab = int(config.vocab_size)
    hidden = shape.hidden_size
    embed = vocab * hidden * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    weights = (shape.prunable_params + embed + (2 * len(shape.layers) + 1) * hidden) * elem
    widest = max((s.intermediate_size for s in shape.layers), default=0)
    largest = hidden * max(widest, hidden)
    grads = (shape.prunable_params if micro_batches else largest) * elem
    running_mean = shape.prunable_params * DEVICE_BYTES_PER_WEIGHT[mean_grad]
    if mean_grad == "cpu":  # gradients waiting for their copy to a staging buffer
        grads += STAGING_SLOTS * largest * elem
    tokens = seq_len * batch_size
    per_token_layer = (2 * hidden) if gradient_checkpointing else (6 * hidden + 4 * widest)
    activations = tokens * len(shape.layers) * per_token_layer * elem
    logits = logits_bytes(config, tokens, elem)  # chunked over positions unless the model scales its logits
    parts = {"weights": weights, "gradients": grads, "running_mean": running_mean, "activations": activations, "logits": logits}
    if process_bytes:
        parts["process"] = process_bytes
    parts["total"] = sum(parts.values())
    parts["host_running_mean"] = shape.prunable_params * HOST_BYTES_PER_WEIGHT[mean_grad]
    return parts


def estimate_all(config, shape: ModelShape, *args, **kwargs) -> dict[str, dict[str, int]]:
    """``estimate_bytes`` for every ``importance.mean_grad`` choice (the rest of the arguments alike)."""
    kwargs.pop("mean_grad", None)
    return {kind: estimate_bytes(config, shape, *args, mean_grad=kind, **kwargs) for kind in MEAN_GRAD_CHOICES}


def describe(parts: dict[str, int], mean_grad: str = "fp32") -> str:
    gib = 2**30
    body = ", ".join(f"{k} {v / gib:.2f}" for k, v in parts.items() if k not in ("total", "host_running_mean"))
    host = f"; host memory for G {parts['host_running_mean'] / gib:.2f} GiB" if parts.get("host_running_mean") else ""
    return f"estimated peak memory of the importance pass (mean_grad={mean_grad}): {parts['total'] / gib:.2f} GiB ({body} GiB){host}"


def describe_all(estimates: dict[str, dict[str, int]], chosen: str) -> str:
    """One line per ``importance.mean_grad`` choice, the chosen one marked."""
    gib = 2**30
    lines = [describe(estimates[chosen], chosen), "  by importance.mean_grad (device total; host):"]
    for kind, parts in estimates.items():
        mark = "  <- chosen" if kind == chosen else ""
        lines.append(f"    {kind:<10s} {parts['total'] / gib:7.2f} GiB; host {parts['host_running_mean'] / gib:.2f} GiB{mark}")
    return "\n".join(lines)


def release_freed_memory(device: torch.device | str = "cpu") -> None:
    """Hand memory that freed CPU tensors left in glibc's heap back to the kernel (``malloc_trim``).

    Without it the heap keeps the pages of every freed activation, and a CPU job's resident memory climbs
    ~0.5 GB above what is live (SmolLM2-135M, 512-token micro-batches: 2.99 GiB peak against 2.67 with a
    trim per micro-batch, at no measurable time cost). No-op on CUDA and without glibc.
    """
    global _LIBC
    if torch.device(device).type != "cpu":
        return
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None

