"""Wall time, peak memory and achieved FLOP/s per phase of a job (GPU: allocator peak; CPU: sampled process RSS)."""
from __future__ import annotations

import contextlib
import os
import resource
import threading
import time

import torch


def rss_bytes() -> int:
    """Resident memory of this process now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: lifetime peak is the best available
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = rss_bytes()
        self._halt = threading.Event()

    def run(self):
        while not self._halt.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return max(self.peak, rss_bytes())


class PhaseRecorder:
    """``with recorder.phase("importance"): ...`` records seconds and peak MiB of that phase; ``count`` adds the
    model FLOPs of work done inside the innermost open phase, so ``flops_per_s`` is what that phase achieved."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.timings: dict[str, float] = {}
        self.peak_memory_mb: dict[str, float] = {}
        self.memory_kind = "cuda_allocated" if self.device.type == "cuda" else "cpu_rss"
        self.flops: dict[str, float] = {}
        self._open: list[str] = []
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        cuda = self.device.type == "cuda" and torch.cuda.is_available()
        sampler = None
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            from prune.memory import release_freed_memory

            release_freed_memory()  # what earlier phases freed does not count against this one
            sampler = RssSampler()
            sampler.start()
        start = time.perf_counter()
        self._open.append(name)
        try:
            yield
        finally:
            self._open.pop()
            if cuda:
                torch.cuda.synchronize(self.device)
                peak = torch.cuda.max_memory_allocated(self.device)
            else:
                peak = sampler.stop()
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            self.peak_memory_mb[name] = max(self.peak_memory_mb.get(name, 0.0), peak / 2**20)

    def count(self, flops: float | None) -> None:
        """Add ``flops`` (None: work of unknown size, not counted) to the innermost open phase."""
        if flops and self._open:
            self.flops[self._open[-1]] = self.flops.get(self._open[-1], 0.0) + float(flops)

    def flops_per_s(self) -> dict[str, float]:
        return {name: flops / self.timings[name] for name, flops in self.flops.items() if self.timings.get(name)}

    def total_seconds(self) -> float:
        return time.perf_counter() - self._start
