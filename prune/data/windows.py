"""Turn documents into token streams and cut them into windows of exactly the requested length.

No window is ever padded, so no loss ever sees a pad token. Calibration windows are sampled (seeded,
without replacement) from the ``train`` stream; evaluation windows tile the ``test`` stream in order.
"""
from __future__ import annotations

import math

import torch

from prune.data.sources import DataError


def tokenize_documents(texts: list[str], tokenizer, join: str = "\n\n", bos_per_document: bool = False) -> torch.Tensor:
    """One 1-D id stream: either ``join``-ed text tokenized once, or each document tokenized with its BOS."""
    texts = [t for t in texts if t]
    if bos_per_document:
        ids: list[int] = []
        for chunk in tokenizer(texts, add_special_tokens=True)["input_ids"]:
            ids += chunk
        return torch.tensor(ids, dtype=torch.long)
    return torch.tensor(tokenizer(join.join(texts), add_special_tokens=True)["input_ids"], dtype=torch.long)


def calibration_windows(
    stream: torch.Tensor,
    seq_len: int,
    num_samples: int,
    seed: int,
    block_len: int | None = None,
    what: str = "calibration text",
) -> torch.Tensor:
    """``num_samples`` non-overlapping windows of ``seq_len`` tokens, chosen at random (seeded).

    With ``block_len`` (a multiple of ``seq_len``), blocks of that length are chosen instead and cut into
    consecutive ``seq_len`` windows: runs that share ``seed`` and ``block_len`` then see the *same text*
    at every ``seq_len`` whenever ``num_samples * seq_len`` is equal, which isolates the effect of the
    context length from the effect of which text was drawn.
    """
    block = block_len or seq_len
    if block % seq_len:
        raise DataError(f"calibration_block={block} must be a multiple of seq_len={seq_len}")
    needed = num_samples * seq_len
    n_blocks = len(stream) // block
    blocks_needed = math.ceil(needed / block)
    if blocks_needed > n_blocks:
        raise DataError(
            f"{what} has {len(stream):,} tokens, too few for num_samples={num_samples} x seq_len={seq_len} "
            f"(= {needed:,} tokens{'' if block == seq_len else f' in blocks of {block}'}); "
            "lower num_samples or seq_len, or add text"
        )
    generator = torch.Generator().manual_seed(int(seed))
    chosen = torch.randperm(n_blocks, generator=generator)[:blocks_needed]
    blocks = stream[: n_blocks * block].view(n_blocks, block)[chosen]
    windows = blocks.reshape(-1, seq_len)[:num_samples]
    if block > seq_len:
        # Shuffle the windows cut from one block apart: consecutive windows of one text in the same batch
        # correlate their gradients, which biases the batch-based Fisher estimate (it assumes exchangeable
        # sequences). The set of windows, and so the text at every length, stays the same.
        windows = windows[torch.randperm(len(windows), generator=generator)]
    return windows.clone()


def evaluation_windows(stream: torch.Tensor, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping windows covering the first ``max_tokens`` tokens (tail dropped)."""
    usable = len(stream) if max_tokens is None else min(len(stream), int(max_tokens))
    n = usable // seq_len
    if n == 0:
        raise DataError(
            f"evaluation text has {len(stream):,} tokens (max_tokens={max_tokens}), less than one window of {seq_len}"
        )
    return stream[: n * seq_len].view(n, seq_len).clone()
