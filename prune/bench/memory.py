"""The memory section on CPU: peak RSS of one pass in a fresh ``spawn`` subprocess (exact ``VmHWM``)."""
from __future__ import annotations

import concurrent.futures
import gc
import multiprocessing
import os
from dataclasses import asdict

import torch

from prune.bench.models import Shape, build_model, random_windows
from prune.bench.taylor import run_pass


# ------------------------------------------------------------------------------- memory (CPU, spawn)
def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory_child(spec: dict) -> dict:
    """Runs in a fresh spawned process: build the model, run one pass, report the peak RSS."""
    from prune.profiling import RssSampler, rss_bytes

    torch.set_num_threads(spec["threads"])
    shape = Shape(**spec["shape"])
    model = build_model(shape, torch.device("cpu"), getattr(torch, spec["dtype"]), spec["seed"])
    windows = random_windows(spec["num_samples"], spec["seq_len"], shape.vocab, spec["seed"] + 1)
    import prune.importance.gradients  # noqa: F401  (import costs outside the measured pass)
    import tqdm.auto  # noqa: F401

    gc.collect()
    start = rss_bytes()
    exact = _reset_peak_rss()
    sampler = None if exact else RssSampler(interval=0.005)
    if sampler is not None:
        sampler.start()
    result = run_pass(spec["kind"], model, windows, spec["batch_size"])
    peak = _vm_hwm_bytes() if exact else sampler.stop()
    del result
    return {"rss_start_bytes": start, "peak_rss_bytes": peak, "method": "VmHWM" if exact else "statm_sampler_5ms"}


def _spawn_memory(spec: dict) -> dict:
    ctx = multiprocessing.get_context("spawn")
    saved = {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.environ["MALLOC_TRIM_THRESHOLD_"] = "0"
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            return pool.submit(_memory_child, spec).result()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bench_memory_cpu(shape: Shape, dtype: torch.dtype, seq_len, batch_size, num_samples, threads, seed) -> dict:
    from prune.structure import model_shape

    spec = dict(shape=asdict(shape), dtype=str(dtype).replace("torch.", ""), seq_len=seq_len, batch_size=batch_size,
                num_samples=num_samples, threads=threads, seed=seed)
    runs = {kind: _spawn_memory({**spec, "kind": kind}) for kind in ("bare", "taylor_2nd")}
    meta = build_model(shape, torch.device("meta"), dtype, seed)  # shapes only, no memory
    prunable_bytes = model_shape(meta).prunable_params * 4
    extra = runs["taylor_2nd"]["peak_rss_bytes"] - runs["bare"]["peak_rss_bytes"]
    return {
        "memory_kind": f"cpu_rss_{runs['bare']['method']}_fresh_spawn_subprocess",
        "shape": asdict(shape),
        "seq_len": seq_len,
        "batch_size": batch_size,
        "num_samples": num_samples,
        "prunable_params": prunable_bytes // 4,
        "prunable_fp32_bytes": prunable_bytes,
        "runs": runs,
        "pass_peak_minus_start_mib": {
            k: (r["peak_rss_bytes"] - r["rss_start_bytes"]) / 2**20 for k, r in runs.items()
        },
        "extra_bytes": extra,
        "taylor_2nd_extra_memory_ratio": extra / prunable_bytes,
    }

