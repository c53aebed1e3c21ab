"""Measuring the testbed's long-range recall, and drawing random training windows: shared by the curriculum
(``prune.testbed.train``), the graded control (``prune.testbed.graded``) and the build's check."""
from __future__ import annotations

import numpy as np
import torch

from prune.testbed.corpus import CorpusSpec, dependency_distances


def recall_accuracy(model, windows: torch.Tensor, spec: CorpusSpec, min_gap: int = 0) -> tuple[float, int]:
    """Accuracy of greedy predictions on value tokens whose source lies inside the window (gap > min_gap)."""
    with torch.no_grad():
        pred = model(input_ids=windows).logits.argmax(-1)
    hits = total = 0
    for row, p in zip(windows, pred):
        dist = dependency_distances(row.numpy(), spec)
        pos = np.flatnonzero((dist > min_gap) & (np.arange(len(row)) - dist >= 0))
        pos = pos[pos > 0]
        hits += int((p[pos - 1] == row[pos]).sum())
        total += len(pos)
    return hits / max(total, 1), total


def random_windows(rng: np.random.Generator, stream: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """``n`` windows of ``length`` tokens at random starts of ``stream``."""
    starts = rng.integers(0, len(stream) - length, n)
    return torch.stack([stream[s : s + length] for s in starts])
