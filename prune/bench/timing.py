"""Timing candidates against a baseline: interleaved (ABBA) rounds, medians, per-round ratios."""
from __future__ import annotations

import gc
import statistics
import time
from typing import Callable

import torch


# ------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
    on_result: Callable[[str, object], None] | None = None,
) -> dict[str, dict]:
    """Time every function ``warmup + repeats`` times, alternating the order each round (ABBA).

    Returns per name: the kept times, their median and (CUDA) the peak allocated bytes.
    """
    names = list(fns)
    out = {name: {"times_s": [], "peak_bytes": 0} for name in names}
    cuda = device.type == "cuda"
    for r in range(warmup + repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            _sync(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            result = fns[name]()
            _sync(device)
            elapsed = time.perf_counter() - start
            if cuda:
                out[name]["peak_bytes"] = max(out[name]["peak_bytes"], torch.cuda.max_memory_allocated(device))
            if r >= warmup:
                out[name]["times_s"].append(elapsed)
            if on_result is not None:
                on_result(name, result)
            del result
    for name in names:
        out[name]["median_s"] = statistics.median(out[name]["times_s"])
        if not cuda:
            del out[name]["peak_bytes"]
    return out


def ratio(times: dict, candidate: str, baseline: str) -> dict:
    c, b = times[candidate]["times_s"], times[baseline]["times_s"]
    per_round = [x / y for x, y in zip(c, b)]
    return {
        "ratio": times[candidate]["median_s"] / times[baseline]["median_s"],
        "per_round": per_round,
    }

