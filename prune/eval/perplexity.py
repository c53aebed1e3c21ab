"""Perplexity on the evaluation split: non-overlapping windows, token-weighted mean NLL.

For each window of L tokens the model predicts tokens 2..L from their prefix inside the window
(L - 1 predictions; the first token has no context and is not scored). Perplexity is
``exp(sum of NLL over all scored tokens / number of scored tokens)``, the standard definition;
windows never overlap and are never padded.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from prune.data.windows import evaluation_windows
from prune.eval.losses import token_nll


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, progress: bool = False, desc: str = "") -> dict:
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for batch in tqdm(windows.split(batch_size), desc=desc or f"perplexity (L={windows.shape[1]})", disable=not progress, leave=False):
        batch = batch.to(device)
        total_nll += float(token_nll(model, batch).sum(dtype=torch.float64))
        total_tokens += batch[:, 1:].numel()
    model.train(was_training)
    mean = total_nll / total_tokens
    return {"nll": mean, "ppl": math.exp(mean), "tokens": total_tokens, "windows": len(windows)}


def effective_lengths(lengths, model_max_positions: int) -> list[int]:
    """Requested evaluation lengths capped at the model's max positions (duplicates dropped, order kept)."""
    out: list[int] = []
    for length in lengths:
        capped = min(int(length), model_max_positions) if model_max_positions else int(length)
        if capped not in out:
            out.append(capped)
    return out


def evaluate_lengths(model: nn.Module, stream: torch.Tensor, lengths: list[int], batch_size: int, max_tokens: int | None, progress: bool, tag: str) -> dict[int, dict]:
    return {
        length: perplexity(model, evaluation_windows(stream, length, max_tokens), batch_size, progress, desc=f"{tag} L={length}")
        for length in lengths
    }
