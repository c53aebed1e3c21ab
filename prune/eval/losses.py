"""The one next-token loss every part of prune-lab uses (importance, removal, evaluation, recovery).

Windows are never padded, so every position 1..L-1 of a window is a scored target and nothing is masked.
Logits are upcast to fp32 and laid out contiguously (class dimension last) for the cross entropy.

With a large vocabulary the logits dwarf everything else a pass keeps (SmolLM2: 4 x 512 tokens x 49,152
classes x 4 bytes = 400 MB per copy, and a backward keeps two or three copies). ``token_nll`` therefore
runs the model's body only and takes the LM head and the cross entropy in chunks of positions
(``LinearNLL``): no full logits tensor ever exists, and under autograd each chunk's gradient with
respect to the hidden states is formed at once from ``softmax - onehot`` and the head's weight, so
nothing is recomputed and the backward only scales it by the incoming per-token gradient. The result
equals the plain ``cross_entropy(model(...).logits)`` to rounding (tested). Models whose head is not a
plain bias-free linear map of the body's last hidden state (or whose head is being trained) take the
plain path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_ELEMENTS = 1 << 25  # logits per chunk (128 MiB in fp32)
_SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of ``input_ids[:, 1:]``, shape (batch, length - 1), fp32."""
    shifted = logits[:, :-1]
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]).float(), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape)


class LinearNLL(torch.autograd.Function):
    """``cross_entropy(hidden @ weight.T, targets)`` per row, in chunks of rows; differentiable in ``hidden``."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0]
        nll = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        # one logits buffer for every chunk: a fresh 100+ MB tensor per chunk costs page faults on CPU
        buffer = hidden.new_empty(min(chunk, hidden.shape[0]), weight.shape[0])
        for start in range(0, hidden.shape[0], chunk):
            h, target = hidden[start:start + chunk], targets[start:start + chunk]
            logits = torch.mm(h, weight.T, out=buffer[: len(h)]).float()  # a copy only for a half-precision model
            nll[start:start + chunk] = F.cross_entropy(logits, target, reduction="none")
            if need_grad:  # d nll / d logits = softmax - onehot, then through the head: one (chunk, hidden) block
                rows = torch.arange(len(h), device=h.device)
                lse = nll[start:start + chunk] + logits[rows, target]
                probs = logits.sub_(lse[:, None]).exp_()
                probs[rows, target] -= 1.0
                grad_hidden[start:start + chunk] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad_hidden)
        return nll

    @staticmethod
    def backward(ctx, grad_nll: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_nll.to(grad_hidden.dtype)[:, None], None, None, None


def plain_head(model: nn.Module) -> nn.Linear | None:
    """The LM head if the logits are exactly ``head(model.model(...).last_hidden_state)``, else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = getattr(model, "model", None)
    config = getattr(model, "config", None)
    if not isinstance(head, nn.Linear) or head.bias is not None or not isinstance(body, nn.Module):
        return None
    if head.weight.requires_grad and torch.is_grad_enabled():  # the head is being trained: it needs its own gradient
        return None
    if not unscaled_logits(config):
        return None
    if not type(model).__name__.endswith("ForCausalLM"):
        return None
    return head


def unscaled_logits(config) -> bool:
    """Whether the config leaves the logits as the head computes them (no soft-capping or scaling)."""
    return all(getattr(config, key, None) in (None, 1, 1.0) for key in _SCALED_LOGITS)


def logits_bytes(config, tokens: int, elem: int) -> int:
    """Bytes of logits a gradient pass over ``tokens`` keeps at its peak: one chunk buffer (and its fp32 copy
    in half precision) with the chunked loss, else the full logits, their fp32 copy and the softmax gradient."""
    vocab = int(config.vocab_size)
    if unscaled_logits(config):
        rows = min(tokens, max(1, CHUNK_ELEMENTS // vocab))
        return rows * vocab * (elem + (4 if elem < 4 else 0)) + 2 * tokens * int(config.hidden_size) * elem
    return tokens * vocab * (elem + 4 + 4)


def token_nll(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token NLL of ``input_ids[:, 1:]`` under ``model``, shape (batch, length - 1), fp32; see the module."""
    head = plain_head(model)
    if head is None:
        return next_token_nll(model(input_ids=input_ids, use_cache=False).logits, input_ids)
    hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    targets = input_ids[:, 1:]
    chunk = max(1, CHUNK_ELEMENTS // head.weight.shape[0])
    nll = LinearNLL.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, targets.reshape(-1), chunk)
    return nll.view(targets.shape)


def sequence_nll(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each sequence, shape (batch,): with equal lengths its mean is the token mean."""
    return token_nll(model, input_ids).mean(dim=1)
