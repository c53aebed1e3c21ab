"""The one next-token loss every part of prune-lab uses (importance, removal, evaluation, analysis).

Windows are never padded, so every position 1..L-1 of a window is a scored target and nothing is masked.
Logits are upcast to fp32 and laid out contiguously (class dimension last) for the cross entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of ``input_ids[:, 1:]``, shape (batch, length - 1), fp32."""
    shifted = logits[:, :-1]
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]).float(), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape)


def sequence_nll(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each sequence, shape (batch,): with equal lengths its mean is the token mean."""
    return next_token_nll(model(input_ids=input_ids, use_cache=False).logits, input_ids).mean(dim=1)
