"""Small on-disk caches keyed by content: results that are expensive and identical across sweep jobs.

Keys hash the model's *fingerprint* (its config, and each parameter's dtype, device and sum and sum of
squares, so a different, modified or differently placed model does not hit), the exact token ids, and
every setting that changes the result.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from prune.files import atomic_write, write_text


def fingerprint(model: nn.Module) -> str:
    """Config, attention kernel, and per parameter: name, shape, dtype, device type, sum and sum of squares."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    h.update(str(getattr(model.config, "_attn_implementation", None)).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}{tuple(p.shape)}{p.dtype}{p.device.type}".encode())
            total, squares = torch.stack([p.double().sum(), p.double().square().sum()]).cpu().tolist()
            h.update(json.dumps(_stable(total, squares, p.numel())).encode())
    return h.hexdigest()[:16]


def _stable(total: float, squares: float, n: int) -> list[str]:
    """The sums on a grid far coarser than the reduction order's rounding (which varies with the thread
    count, ~1e-16 of the scale) and far finer than any real weight change: the key survives ``threads``."""
    scale = math.sqrt(max(squares, 0.0) * n) or 1.0  # bounds sum(|w|), the size of the sum's rounding error
    return [f"{round(total / scale, 10):.10f}", f"{squares:.8e}"]


def tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def cached(cache_dir: str | os.PathLike, kind: str, key: dict, compute: Callable[[], object]) -> tuple[object, bool]:
    """``(value, True)`` from the cache for ``key``, or ``(compute(), False)`` after storing it."""
    from filelock import FileLock

    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    folder = Path(os.path.expanduser(str(cache_dir))) / kind
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.pt"
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return torch.load(path, weights_only=False), True
        value = compute()
        atomic_write(path, lambda tmp: torch.save(value, tmp))
        write_text(folder / f"{digest}.json", json.dumps(key, indent=2, sort_keys=True, default=str))
        return value, False
