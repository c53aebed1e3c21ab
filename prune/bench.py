"""``prune-bench``: how much the pruning machinery costs, as ratios against plain baselines.

Every figure is a ratio measured in one process against a baseline on the same model and the same
tokens (absolute times on a shared CPU are noise). Each timed loop runs ``--warmup`` discarded rounds
and then ``--repeats`` rounds; within a round the baseline and the candidates run one after the other,
in alternating order from round to round (ABBA), and the reported time is the median over rounds.

========================================  ===================================================  =========
key                                        what                                                  goal
========================================  ===================================================  =========
``taylor_1st_time_ratio``                  ``gradient_pass(fisher=None)`` / bare forward+backward   <= 1.10
``taylor_2nd_time_ratio``                  ``gradient_pass(fisher="sample")`` / the same            <= 1.10
``taylor_2nd_extra_memory_ratio``          (peak of the Taylor-2nd pass - peak of the bare loop)    <= 1.0
                                           / fp32 bytes of the prunable parameters
``prefill_speedup``                        tokens/s of a no-grad forward, pruned / dense            (none)
``prefill_of_flop_ratio``                  ``prefill_speedup`` / its FLOP ratio (the ideal)          >= 0.95
``decode_speedup``                         decode tokens/s, pruned / dense: static KV cache, step   >= 1.2
                                           compiled to CUDA graphs on CUDA; the least over batches
``layer_removal_time_ratio``               ``removal_losses`` over every layer, prefix cache        <= 0.6
                                           on / off
``block_removal_time_ratio``               the same over every attention and MLP block              <= 0.6
========================================  ===================================================  =========

The *bare* baseline is the plainest training step: every parameter requires grad and each batch runs
``model(input_ids=b, labels=b, use_cache=False).loss.backward(); model.zero_grad(set_to_none=True)``.
``gradient_pass`` makes only the prunable projections require grad, so it skips the embedding and LM
head gradients the bare loop computes; the ratio therefore measures the whole pass as the job runs it.

Models (random weights; nothing is downloaded and the testbed is not trained):

* *bench*: a LLaMA large enough that matmuls dominate (``--layers/--hidden/--heads/--kv-heads/
  --intermediate/--vocab``); the ``llama3_8b`` preset gives it Llama-3-8B shapes, built directly on the
  GPU in bf16;
* *testbed*: the testbed's shape (6 layers, hidden 128, 8 query / 4 KV heads, MLP 384, vocab 512, rope
  theta 5e5, tied embeddings) with random weights: timing does not depend on what the weights learned,
  and it avoids the 3-minute testbed training.

Presets (every setting can be overridden on the command line):

* ``cpu`` (default, ~3-4 minutes on 2 idle cores): Taylor time on the testbed shape with the job's
  defaults (16 x 512 tokens, batch 4); memory on the bench model (4 x 64 tokens, batch 2: there the
  prunable parameters outweigh the noise of RSS); prefill 4 x 256 and decode 1 x 64 new tokens on the
  bench model (12 layers, hidden 768, 12/4 heads, MLP 2048, vocab 32000); removal on the testbed shape
  (8 x 512 tokens). 5 timed rounds after 1 warm-up.
* ``llama3_8b``: everything on random Llama-3-8B shapes in bf16 on one GPU; Taylor time, memory, s/batch,
  tokens/s and MFU at each ``--seq-lens`` (8 sequences, batch 4), the ``mean_grad`` stores at 4 x 512,
  prefill 4 x 512, decode at batch 1 and 8 x 64 new tokens (static cache, CUDA graphs), removal 4 x 512
  tokens; 1 timed round after 1 warm-up (``experiments/gpu_check.sh``).
* ``quick``: a 2-layer toy of everything, a few seconds (tests).

Sections (``--sections``): ``taylor``, ``memory`` (CPU), ``mean_grad`` (``prune.bench_mean_grad``),
``speed`` (prefill and static-cache decode: ``prune.bench_speed``) and ``removal``.

MFU = 6 x (parameters except the input embedding) x tokens / pass time / ``--peak-tflops`` (790 for
an H200 in bf16, as given). The Taylor pass computes no LM-head or embedding gradients, so its true FLOPs
are a little lower; the convention is kept so that the bare loop and the pass compare directly.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, in process.
On CPU each pass runs once in a fresh ``spawn`` subprocess that builds the same seeded model and windows,
resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) and reads ``VmHWM`` afterwards (exact, no
sampling; a 5 ms ``/proc/self/statm`` sampler where ``clear_refs`` is refused). The children run with
``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns every freed tensor to the kernel and RSS follows the
live tensor bytes.

CPU runs re-execute themselves with ``OMP_WAIT_POLICY=PASSIVE`` (``--omp-wait-policy``): on a CPU shared
with other processes, OpenMP threads that spin at barriers made one and the same pass vary 5-100x in
time; sleeping threads keep both baseline and candidate stable. The load average at the start and end is
recorded, so a contended run can be recognised.

``--sweep DIR`` adds the time of a finished multirun from its ``DIR/*/metrics.json``: job and launch wall
time, per-phase sums, and per-phase means per seq_len (nothing is run); ``--sections none --sweep DIR``
reports only that.

This module imports torch, transformers and prune.{importance,pruning,structure,models} only (no hydra,
omegaconf, wandb or datasets), so ``PYTHONPATH=<repo> python -m prune.bench`` works on a bare GPU image.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import gc
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

SECTIONS = ("taylor", "memory", "mean_grad", "speed", "removal")
GOALS = {
    "taylor_1st_time_ratio": ("<=", 1.10),
    "taylor_2nd_time_ratio": ("<=", 1.10),
    "taylor_2nd_extra_memory_ratio": ("<=", 1.0),
    "prefill_of_flop_ratio": (">=", 0.95),
    "decode_speedup": (">=", 1.2),
    "layer_removal_time_ratio": ("<=", 0.6),
    "block_removal_time_ratio": ("<=", 0.6),
}
RESULT_KEYS = (
    "taylor_1st_time_ratio",
    "taylor_2nd_time_ratio",
    "taylor_2nd_extra_memory_ratio",
    "prefill_speedup",
    "prefill_of_flop_ratio",
    "decode_speedup",
    "layer_removal_time_ratio",
    "block_removal_time_ratio",
)
H200_BF16_PEAK_TFLOPS = 790.0


# --------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class Shape:
    """A random LLaMA config."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    rope_theta: float = 500000.0
    max_positions: int = 4096
    tie_embeddings: bool = False

    def config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=self.max_positions,
            rope_theta=self.rope_theta,
            tie_word_embeddings=self.tie_embeddings,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            attn_implementation="sdpa",
        )


def _testbed_shape() -> Shape:
    """The default testbed model's shape (taken from its spec, so the two cannot drift apart)."""
    from prune.testbed.build import TestbedSpec

    spec = TestbedSpec()
    m = spec.model
    return Shape(layers=m.num_layers, hidden=m.hidden_size, heads=m.num_heads, kv_heads=m.num_kv_heads,
                 intermediate=m.intermediate_size, vocab=spec.corpus.vocab_size, rope_theta=m.rope_theta,
                 max_positions=m.max_positions, tie_embeddings=True)


TESTBED_SHAPE = _testbed_shape()
BENCH_SHAPE = Shape(layers=12, hidden=768, heads=12, kv_heads=4, intermediate=2048, vocab=32000)
LLAMA3_8B_SHAPE = Shape(layers=32, hidden=4096, heads=32, kv_heads=8, intermediate=14336, vocab=128256,
                        rope_theta=500000.0, max_positions=8192)
QUICK_SHAPE = Shape(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=256, max_positions=512)

PRESETS: dict[str, dict] = {
    # ~3-4 minutes on 2 idle CPU cores (about 5-6 when other processes share them)
    "cpu": dict(
        shape=BENCH_SHAPE, taylor_model="testbed", seq_len=512, batch_size=4, num_samples=16, repeats=5, warmup=1,
        exact=True, memory_model="bench", memory_seq_len=64, memory_batch_size=2, memory_num_samples=4,
        prefill_batch=4, prefill_len=256, decode_batches=[1], prompt_len=32, new_tokens=64,
        removal_model="testbed", removal_seq_len=512, removal_num_samples=8,
    ),
    # Llama-3-8B shapes, bf16 on one GPU: everything on the 8B model; under 8 minutes on an H200
    "llama3_8b": dict(
        shape=LLAMA3_8B_SHAPE, taylor_model="bench", seq_len=512, seq_lens=[128, 512, 2048], batch_size=4,
        num_samples=8, repeats=1, warmup=1, exact=True, memory_model="same",
        prefill_batch=4, prefill_len=512, decode_batches=[1, 8], prompt_len=128, new_tokens=64,
        removal_model="bench", removal_seq_len=512, removal_num_samples=4,
    ),
    # a few seconds, for tests
    "quick": dict(
        shape=QUICK_SHAPE, taylor_model="bench", seq_len=32, batch_size=2, num_samples=4, repeats=1, warmup=1,
        exact=True, memory_model="same", prefill_batch=2, prefill_len=32, decode_batches=[1, 2], prompt_len=8,
        new_tokens=8, removal_model="bench", removal_seq_len=32, removal_num_samples=4,
    ),
}


def build_model(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A seeded random LLaMA built directly on ``device`` (no CPU copy of GPU weights)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(shape.config(), dtype=dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def random_windows(n: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Token windows on the CPU (each loop moves its batches to the device itself)."""
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def matmul_params(model) -> int:
    """Parameters that take part in matmuls: all but the input embedding (a lookup)."""
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is emb
    return param_count(model) - (0 if tied else emb.numel())


def forward_flops_per_token(model, context: int) -> float:
    """Forward FLOPs per token: 2 x matmul parameters + attention scores over ``context`` keys."""
    from prune.structure import model_shape

    shape = model_shape(model)
    attention = sum(4 * context * s.num_heads * shape.head_dim for s in shape.layers)
    return 2.0 * matmul_params(model) + attention


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


def _ratio(times: dict, candidate: str, baseline: str) -> dict:
    c, b = times[candidate]["times_s"], times[baseline]["times_s"]
    per_round = [x / y for x, y in zip(c, b)]
    return {
        "ratio": times[candidate]["median_s"] / times[baseline]["median_s"],
        "per_round": per_round,
    }


# --------------------------------------------------------------------------------- gradient passes
def bare_pass(model, windows: torch.Tensor, batch_size: int) -> int:
    """The baseline: a plain forward+backward per batch with every parameter requiring grad.

    Returns the number of tokens it ran (the same windows, batches and order as ``gradient_pass``).
    """
    device = next(model.parameters()).device
    model.eval()
    tokens = 0
    for batch in windows.split(batch_size):
        b = batch.to(device)
        loss = model(input_ids=b, labels=b, use_cache=False).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        tokens += b.numel()
    return tokens


def _taylor_pass(model, windows, batch_size, fisher, fused="auto"):
    from prune.importance.gradients import gradient_pass

    return gradient_pass(model, windows, batch_size, fisher=fisher, progress=False, fused=fused)


PASS_FISHER = {"taylor_1st": None, "taylor_2nd": "sample", "taylor_2nd_exact": "exact", "taylor_2nd_unfused": "sample"}


def run_pass(kind: str, model, windows, batch_size):
    if kind == "bare":
        return bare_pass(model, windows, batch_size)
    return _taylor_pass(model, windows, batch_size, PASS_FISHER[kind], "false" if kind.endswith("_unfused") else "auto")


def taylor_scores(model, grads):
    """Taylor-2nd group scores from a finished ``gradient_pass(fisher="sample")``."""
    from prune.importance.taylor import first_order_scores

    scores = first_order_scores(model, grads)
    return scores + grads.second_moment.map(lambda t: 0.5 * t)


def _max_rel_diff(a, b) -> float | None:
    if a is None or b is None:
        return None
    a, b = (torch.cat([t.flatten().double().cpu() for t in s.attention + s.mlp]) for s in (a, b))
    return float(((a - b).abs() / b.abs().clamp_min(1e-30)).max())


def bench_taylor(model, windows, batch_size, repeats, warmup, device, exact=True, peak_tflops=None):
    """Time bare / Taylor 1st / Taylor 2nd (/ exact Fisher) on the same windows; returns (report, scores)."""
    from prune.structure import model_shape

    from prune.importance.fused import resolve_backend

    kinds = ["bare", "taylor_1st", "taylor_2nd"] + (["taylor_2nd_exact"] if exact else [])
    if resolve_backend("auto", device) != "reference":  # context: the same pass with the torch reference hooks
        kinds.append("taylor_2nd_unfused")
    fns = {k: (lambda k=k: run_pass(k, model, windows, batch_size)) for k in kinds}
    kept: dict = {}

    def on_result(name, result):
        if name == "taylor_2nd":
            kept["scores"] = taylor_scores(model, result)
            kept["micro_batch_size"] = result.micro_batch_size
            kept["oom_restarts"] = result.oom_restarts
            kept["fused"] = result.extra.get("fused")
        elif name == "taylor_2nd_unfused":
            kept["unfused_scores"] = taylor_scores(model, result)
        elif name == "bare":
            kept["bare_tokens"] = result

    times = interleaved(fns, repeats, warmup, device, on_result)
    n, length = windows.shape
    tokens = n * length
    assert kept["bare_tokens"] == tokens
    report = {
        "seq_len": length,
        "num_samples": n,
        "batch_size": batch_size,
        "num_batches": n // batch_size,
        "tokens": tokens,
        "times": times,
        "taylor_1st_time_ratio": _ratio(times, "taylor_1st", "bare")["ratio"],
        "taylor_2nd_time_ratio": _ratio(times, "taylor_2nd", "bare")["ratio"],
        "per_round_ratios": {k: _ratio(times, k, "bare")["per_round"] for k in kinds[1:]},
        "taylor_2nd_micro_batch_size": kept.get("micro_batch_size"),
        "taylor_2nd_oom_restarts": kept.get("oom_restarts"),
        "taylor_fused": kept.get("fused"),
        "taylor_2nd_fused_vs_unfused_max_rel_diff": _max_rel_diff(kept.get("scores"), kept.get("unfused_scores")),
    }
    for kind in kinds[3:]:
        report[f"{kind}_time_ratio"] = _ratio(times, kind, "bare")["ratio"]
    t2 = times["taylor_2nd"]["median_s"]
    report["taylor_2nd_seconds_per_batch"] = t2 / (n // batch_size)
    report["taylor_2nd_tokens_per_s"] = tokens / t2
    report["bare_tokens_per_s"] = tokens / times["bare"]["median_s"]
    if device.type == "cuda":
        prunable_bytes = model_shape(model).prunable_params * 4
        peak_b, peak_t2 = times["bare"]["peak_bytes"], times["taylor_2nd"]["peak_bytes"]
        report["peak_memory_gib"] = {k: times[k]["peak_bytes"] / 2**30 for k in kinds}
        report["taylor_2nd_extra_memory_ratio"] = (peak_t2 - peak_b) / prunable_bytes
        report["taylor_1st_extra_memory_ratio"] = (times["taylor_1st"]["peak_bytes"] - peak_b) / prunable_bytes
    if peak_tflops:
        flops = 6.0 * matmul_params(model) * tokens
        report["mfu_flops_per_pass"] = flops
        report["mfu"] = flops / t2 / (peak_tflops * 1e12)
        report["bare_mfu"] = flops / times["bare"]["median_s"] / (peak_tflops * 1e12)
    return report, kept.get("scores")


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
    from prune.profiling import _rss_bytes, _RssSampler

    torch.set_num_threads(spec["threads"])
    shape = Shape(**spec["shape"])
    model = build_model(shape, torch.device("cpu"), getattr(torch, spec["dtype"]), spec["seed"])
    windows = random_windows(spec["num_samples"], spec["seq_len"], shape.vocab, spec["seed"] + 1)
    import prune.importance.gradients  # noqa: F401  (import costs outside the measured pass)
    import tqdm.auto  # noqa: F401

    gc.collect()
    start = _rss_bytes()
    exact = _reset_peak_rss()
    sampler = None if exact else _RssSampler(interval=0.005)
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


# -------------------------------------------------------------------------------- prefill / decode
from prune.bench_speed import DECODE_STEPS, bench_speed, magnitude_scores, prune_copy  # noqa: E402,F401


# ------------------------------------------------------------------------------------------- removal
@contextlib.contextmanager
def count_layer_calls(model):
    from prune.structure import decoder_layers

    counter = {"calls": 0}

    def hook(module, args):
        counter["calls"] += 1

    handles = [layer.register_forward_pre_hook(hook) for layer in decoder_layers(model)]
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()


def removal_units(model, which: str):
    from prune.importance.removal import Unit
    from prune.structure import decoder_layers

    n = len(decoder_layers(model))
    if which == "layer":
        return [Unit("layer", i) for i in range(n)]
    return [Unit(kind, i) for i in range(n) for kind in ("attention", "mlp")]


def bench_removal(model, windows, batch_size, repeats, warmup, device) -> dict:
    from prune.importance.removal import removal_losses

    units = {w: removal_units(model, w) for w in ("layer", "block")}
    fns, losses = {}, {}
    for which in ("layer", "block"):
        for cache in (True, False):
            name = f"{which}_{'prefix' if cache else 'naive'}"
            fns[name] = lambda u=units[which], c=cache: removal_losses(model, windows, u, batch_size=batch_size, prefix_cache=c)

    def on_result(name, result):
        losses[name] = result

    rounds = warmup + repeats
    with count_layer_calls(model) as counter:
        calls = {}
        wrapped = {}
        for name, fn in fns.items():
            def run(fn=fn, name=name):
                before = counter["calls"]
                out = fn()
                calls[name] = calls.get(name, 0) + counter["calls"] - before
                return out
            wrapped[name] = run
        times = interleaved(wrapped, repeats, warmup, device, on_result)
    n_batches = math.ceil(len(windows) / batch_size)
    report = {
        "seq_len": windows.shape[1],
        "num_samples": len(windows),
        "batch_size": batch_size,
        "units": {w: len(u) for w, u in units.items()},
        "times": times,
        "decoder_layer_calls_per_batch": {k: v / rounds / n_batches for k, v in calls.items()},
    }
    for which in ("layer", "block"):
        r = _ratio(times, f"{which}_prefix", f"{which}_naive")
        report[f"{which}_removal_time_ratio"] = r["ratio"]
        report[f"{which}_per_round_ratios"] = r["per_round"]
        base_p, by_p = losses[f"{which}_prefix"]
        base_n, by_n = losses[f"{which}_naive"]
        report[f"{which}_max_abs_loss_diff"] = max([abs(base_p - base_n)] + [abs(by_p[u] - by_n[u]) for u in by_p])
        c = report["decoder_layer_calls_per_batch"]
        report[f"{which}_layer_call_ratio"] = c[f"{which}_prefix"] / c[f"{which}_naive"]
    return report


# ----------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="prune-bench",
        description="Cost of the pruning machinery as ratios against plain baselines (see prune/bench.py).",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="cpu (default, a few minutes on 2 cores), llama3_8b (random Llama-3-8B shapes, GPU), quick (tests)")
    p.add_argument("--quick", action="store_true", help="same as --preset quick")
    p.add_argument("--out", default="bench.json", help="JSON output (default ./bench.json)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sections", default="all",
                   help=f"comma list of {','.join(SECTIONS)}; 'all' (default) or 'none' (e.g. with --sweep)")
    p.add_argument("--sweep", default=None, help="a finished multirun folder: report wall and phase time sums")
    p.add_argument("--omp-wait-policy", choices=("auto", "passive", "active", "inherit"), default="auto",
                   help="CPU only: OpenMP idle threads sleep (passive) or spin (active); auto = passive unless "
                        "OMP_WAIT_POLICY is already set. The benchmark re-runs itself in a subprocess to apply it")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per loop (median is reported)")
    p.add_argument("--warmup", type=int, default=None, help="discarded rounds before timing")
    g = p.add_argument_group("Taylor pass")
    g.add_argument("--seq-len", type=int, default=None)
    g.add_argument("--seq-lens", default=None, help="comma list: Taylor time, memory and MFU at each (GPU preset)")
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--num-samples", type=int, default=None)
    g.add_argument("--taylor-model", choices=("bench", "testbed"), default=None)
    g.add_argument("--no-exact", dest="exact", action="store_false", default=None, help="skip the exact-Fisher pass")
    g.add_argument("--peak-tflops", type=float, default=None,
                   help=f"accelerator peak for MFU (default {H200_BF16_PEAK_TFLOPS:g} = H200 bf16 on CUDA)")
    g = p.add_argument_group("memory (CPU: fresh subprocesses; CUDA: measured with the Taylor timings)")
    g.add_argument("--memory-model", choices=("same", "bench", "testbed"), default=None)
    g.add_argument("--memory-seq-len", type=int, default=None)
    g.add_argument("--memory-batch-size", type=int, default=None)
    g.add_argument("--memory-num-samples", type=int, default=None)
    g = p.add_argument_group("bench model (prefill/decode; Taylor and removal where they use 'bench')")
    g.add_argument("--layers", type=int, default=None)
    g.add_argument("--hidden", type=int, default=None)
    g.add_argument("--heads", type=int, default=None)
    g.add_argument("--kv-heads", type=int, default=None)
    g.add_argument("--intermediate", type=int, default=None)
    g.add_argument("--vocab", type=int, default=None)
    g.add_argument("--rope-theta", type=float, default=None)
    g = p.add_argument_group("prefill / decode")
    g.add_argument("--prune-ratio", type=float, default=0.3)
    g.add_argument("--prune-scores", choices=("auto", "taylor", "magnitude"), default="auto",
                   help="auto: Taylor-2nd scores when the Taylor pass ran on the bench model, else magnitude")
    g.add_argument("--prefill-batch", type=int, default=None)
    g.add_argument("--prefill-len", type=int, default=None)
    g.add_argument("--decode-batches", default=None, help="comma list of decode batch sizes (static-cache decode)")
    g.add_argument("--decode-step", choices=DECODE_STEPS, default="auto",
                   help="auto: compiled (CUDA graphs) on CUDA, eager on CPU")
    g.add_argument("--prompt-len", type=int, default=None)
    g.add_argument("--new-tokens", type=int, default=None)
    g = p.add_argument_group("removal")
    g.add_argument("--removal-model", choices=("bench", "testbed"), default=None)
    g.add_argument("--removal-seq-len", type=int, default=None)
    g.add_argument("--removal-num-samples", type=int, default=None)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.preset = "quick"
    preset = dict(PRESETS[args.preset])
    shape = preset.pop("shape")
    overrides = {k: getattr(args, k) for k in ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab", "rope_theta")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        shape = replace(shape, **overrides)
    args.shape = shape
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key, default in (("memory_seq_len", args.seq_len), ("memory_batch_size", args.batch_size),
                         ("memory_num_samples", args.num_samples)):
        if getattr(args, key, None) is None:
            setattr(args, key, default)
    if isinstance(args.decode_batches, str):
        args.decode_batches = [int(b) for b in args.decode_batches.split(",") if b.strip()]
    if args.seq_lens is None:
        seq_lens = [args.seq_len]
    elif isinstance(args.seq_lens, str):
        seq_lens = [int(s) for s in args.seq_lens.split(",") if s.strip()]
    else:
        seq_lens = list(args.seq_lens)
    if args.seq_len not in seq_lens:
        seq_lens.append(args.seq_len)
    args.seq_lens = seq_lens
    args.sections = (
        set(SECTIONS) if args.sections == "all" else set() if args.sections == "none"
        else {s.strip() for s in args.sections.split(",") if s.strip()}
    )
    bad = args.sections - set(SECTIONS)
    if bad:
        p.error(f"unknown section(s) {', '.join(sorted(bad))}: choose from {', '.join(SECTIONS)}")
    for name in ("num_samples", "memory_num_samples"):
        n, b = getattr(args, name), args.batch_size if name == "num_samples" else args.memory_batch_size
        if n % b or (n < 2 * b and b > 1):
            p.error(f"--{name.replace('_', '-')}={n} must be a multiple of the batch size {b} with at least two "
                    "batches (Taylor 2nd order with fisher=sample needs two)")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def _goals(results: dict) -> dict:
    out = {}
    for key, (op, target) in GOALS.items():
        value = results.get(key)
        met = None
        if isinstance(value, (int, float)) and math.isfinite(value):
            met = value <= target if op == "<=" else value >= target
        out[key] = {"goal": f"{op} {target:g}", "value": value, "met": met}
    return out


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _context(args, device, dtype) -> dict:
    import transformers

    ctx = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preset": args.preset,
        "argv": args.argv,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": _loadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "timing": "median of --repeats rounds after --warmup rounds; baseline and candidates alternate (ABBA)",
        "models": {
            "bench": asdict(args.shape),
            "testbed": {**asdict(TESTBED_SHAPE), "note": "random weights in the testbed's shape (untrained)"},
        },
        "taylor": {"model": args.taylor_model, "seq_len": args.seq_len, "seq_lens": args.seq_lens,
                   "batch_size": args.batch_size, "num_samples": args.num_samples,
                   "tokens": args.num_samples * args.seq_len},
        "removal": {"model": args.removal_model, "seq_len": args.removal_seq_len,
                    "num_samples": args.removal_num_samples, "batch_size": args.batch_size},
    }
    if device.type == "cuda":
        ctx["gpu"] = torch.cuda.get_device_name(device)
        ctx["peak_tflops"] = args.peak_tflops or H200_BF16_PEAK_TFLOPS
    return ctx


class _Report:
    """Accumulates results and rewrites the JSON after every section (a timeout keeps what finished)."""

    def __init__(self, path: Path, context: dict):
        self.path = path
        self.data = {key: None for key in RESULT_KEYS}
        self.data.update({"complete": False, "context": context})

    def set(self, **kw):
        self.data.update(kw)
        self.data["goals"] = _goals(self.data)
        self.write()

    def write(self):
        from prune.files import write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps(self.data, indent=2, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return str(obj)


def _log(msg: str) -> None:
    print(f"[prune-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def print_summary(data: dict) -> None:
    rows = []
    goals = data.get("goals", {})
    for key in RESULT_KEYS:
        g = goals.get(key)
        met = "" if not g or g["met"] is None else ("yes" if g["met"] else "NO")
        rows.append((key, _fmt(data.get(key)), g["goal"] if g else "", met))
    extra = []
    taylor = data.get("taylor") or {}
    for item in taylor.get("per_seq_len", []):
        if "error" in item:
            extra.append(f"L={item.get('seq_len')}: {item['error']}")
            continue
        line = (f"L={item['seq_len']}: taylor_1st {item['taylor_1st_time_ratio']:.3f}, taylor_2nd "
                f"{item['taylor_2nd_time_ratio']:.3f}")
        if "taylor_2nd_exact_time_ratio" in item:
            line += f", exact {item['taylor_2nd_exact_time_ratio']:.3f}"
        line += f"; taylor_2nd {item['taylor_2nd_seconds_per_batch']:.3f} s/batch, {item['taylor_2nd_tokens_per_s']:.0f} tok/s"
        if "mfu" in item:
            line += f", MFU {100 * item['mfu']:.1f}%"
        if "peak_memory_gib" in item:
            line += f", peak {item['peak_memory_gib']['taylor_2nd']:.1f} GiB (bare {item['peak_memory_gib']['bare']:.1f})"
        extra.append(line)
    speed = data.get("speed") or {}
    if speed:
        extra.append(f"pruned params {speed['params_pruned']:,} / {speed['params_dense']:,} ({speed['score_source']} scores); "
                     f"ideal prefill speedup (FLOPs) {speed['prefill_flop_ratio']:.3f}; decode speedup by batch "
                     + ", ".join(f"{b}: {v:.3f}" for b, v in speed["decode_speedup_by_batch"].items())
                     + f" ({'compiled' if speed['decode']['compiled'] else 'eager'} static cache); "
                     f"HF generate {speed['decode_generate_speedup']:.3f}")
    for kind, row in ((data.get("mean_grad") or {}).get("by_store") or {}).items():
        peak = f", peak {row['peak_gib']:.1f} GiB" if "peak_gib" in row else ""
        extra.append(f"mean_grad={kind}: time x{row['time_ratio_vs_fp32']:.2f} of fp32{peak} (estimate {row['estimate_gib']:.1f}), "
                     f"scores max rel diff {row['score_max_rel_diff']:.1e}")
    removal = data.get("removal") or {}
    if removal:
        c = removal["decoder_layer_calls_per_batch"]
        extra.append("decoder-layer calls per batch: " + ", ".join(f"{k} {v:g}" for k, v in c.items()))
    sweep = data.get("sweep")
    if sweep:
        wall = "" if sweep.get("launch_wall_s") is None else f" ({sweep['launch_wall_s']:.0f} s from launch to last job)"
        extra.append(f"sweep {sweep['folder']}: {sweep['jobs']} jobs, {sweep['jobs_total_s']:.1f} s in jobs{wall}; phases "
                     + ", ".join(f"{k} {v:.1f}s" for k, v in sweep["phase_sums_s"].items()))
        for length, row in sweep.get("by_seq_len", {}).items():
            extra.append(f"  seq_len {length}: mean of {row['jobs']} jobs: "
                         + ", ".join(f"{k} {v:.1f}s" for k, v in row.items() if k != "jobs"))
    ctx = data.get("context", {})
    title = f"prune-bench ({ctx.get('preset')}, {ctx.get('device')}, {ctx.get('dtype')}, {ctx.get('torch_threads')} threads)"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for row in rows:
            print(f"  {row[0]:32s} {row[1]:>10s}  {row[2]:>8s}  {row[3]}")
        for line in extra:
            print("  " + line)
        return
    table = Table(title=title)
    for col, justify in (("metric", "left"), ("value", "right"), ("goal", "right"), ("met", "center")):
        table.add_column(col, justify=justify)
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    for line in extra:
        console.print(line, highlight=False)


def _wanted_omp_policy(args) -> str | None:
    if args.omp_wait_policy == "inherit" or (args.omp_wait_policy == "auto" and os.environ.get("OMP_WAIT_POLICY")):
        return None
    return "ACTIVE" if args.omp_wait_policy == "active" else "PASSIVE"


def _rerun_with_omp_policy(argv: list[str], policy: str) -> int:
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads: apply it by running again in a child."""
    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "PRUNE_BENCH_CHILD": "1"}
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.call([sys.executable, "-m", "prune.bench", *argv], env=env)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    from prune.models import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    policy = _wanted_omp_policy(args)
    if (device.type == "cpu" and policy and os.environ.get("OMP_WAIT_POLICY", "").upper() != policy
            and not os.environ.get("PRUNE_BENCH_CHILD")):
        return _rerun_with_omp_policy(argv, policy)
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, device)
    if device.type == "cuda":
        if device.index is None:  # every torch.cuda call below then gets an explicit index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    peak_tflops = args.peak_tflops or (H200_BF16_PEAK_TFLOPS if device.type == "cuda" else None)
    started = time.perf_counter()
    report = _Report(Path(args.out), _context(args, device, dtype))
    report.set()

    bench_model = None

    def get_bench_model():
        nonlocal bench_model
        if bench_model is None:
            _log(f"building the bench model {asdict(args.shape)} on {device} ({dtype})")
            bench_model = build_model(args.shape, device, dtype, args.seed)
        return bench_model

    def model_for(which: str):
        if which == "bench":
            return get_bench_model()
        _log("building the testbed-shaped model")
        return build_model(TESTBED_SHAPE, device, dtype, args.seed)

    scores = None
    if "taylor" in args.sections:
        model = model_for(args.taylor_model)
        per_len = []
        for length in args.seq_lens:
            _log(f"Taylor passes: {args.taylor_model} model, {args.num_samples} x {length} tokens, batch {args.batch_size}")
            windows = random_windows(args.num_samples, length, model.config.vocab_size, args.seed + 1)
            try:
                item, item_scores = bench_taylor(model, windows, args.batch_size, args.repeats, args.warmup, device,
                                                 args.exact, peak_tflops)
            except torch.OutOfMemoryError as exc:
                item, item_scores = {"seq_len": length, "error": f"out of memory: {str(exc).splitlines()[0]}"}, None
                model.zero_grad(set_to_none=True)
                gc.collect()
                torch.cuda.empty_cache()
            per_len.append(item)
            if length == args.seq_len:
                scores = item_scores
                primary = item
            report.set(taylor={"model": args.taylor_model, "per_seq_len": per_len})
        keys = {"taylor_1st_time_ratio": primary.get("taylor_1st_time_ratio"),
                "taylor_2nd_time_ratio": primary.get("taylor_2nd_time_ratio"),
                "taylor_2nd_exact_time_ratio": primary.get("taylor_2nd_exact_time_ratio")}
        if device.type == "cuda":
            keys["taylor_2nd_extra_memory_ratio"] = primary.get("taylor_2nd_extra_memory_ratio")
            keys["memory"] = {"memory_kind": "cuda_max_memory_allocated", "seq_len": args.seq_len,
                              "per_seq_len": {i["seq_len"]: i.get("taylor_2nd_extra_memory_ratio") for i in per_len}}
        keys["taylor_2nd_by_seq_len"] = {
            str(i["seq_len"]): {k: i.get(k) for k in ("taylor_2nd_seconds_per_batch", "taylor_2nd_tokens_per_s", "mfu",
                                                       "taylor_2nd_time_ratio", "taylor_1st_time_ratio",
                                                       "taylor_2nd_extra_memory_ratio")}
            | ({"peak_memory_gib": i["peak_memory_gib"]["taylor_2nd"]} if "peak_memory_gib" in i else {})
            for i in per_len if "error" not in i
        }
        report.set(**keys)
        if args.taylor_model != "bench":
            del model
            scores = None

    if "memory" in args.sections and device.type != "cuda":
        shape = {"bench": args.shape, "testbed": TESTBED_SHAPE}.get(
            args.memory_model if args.memory_model != "same" else args.taylor_model)
        _log(f"memory: fresh subprocesses, {args.memory_num_samples} x {args.memory_seq_len} tokens, batch {args.memory_batch_size}")
        mem = bench_memory_cpu(shape, dtype, args.memory_seq_len, args.memory_batch_size, args.memory_num_samples,
                               torch.get_num_threads(), args.seed)
        report.set(taylor_2nd_extra_memory_ratio=mem["taylor_2nd_extra_memory_ratio"], memory=mem)
    elif "memory" in args.sections and "taylor" not in args.sections:
        _log("memory on CUDA is measured with the Taylor timings: add the 'taylor' section")

    if "mean_grad" in args.sections:
        from prune.bench_mean_grad import bench_mean_grad

        model = model_for(args.taylor_model)
        windows = random_windows(args.num_samples, args.seq_len, model.config.vocab_size, args.seed + 1)
        _log(f"mean_grad stores: Taylor 2nd, {args.taylor_model} model, {args.num_samples} x {args.seq_len}, batch {args.batch_size}")
        report.set(mean_grad=bench_mean_grad(model, windows, args.batch_size, args.repeats, args.warmup, device))
        del model

    if "speed" in args.sections:
        model = get_bench_model()
        if args.prune_scores == "taylor" and scores is None:
            _log("Taylor-2nd scores for pruning")
            w = random_windows(args.num_samples, args.seq_len, model.config.vocab_size, args.seed + 1)
            scores, source = taylor_scores(model, _taylor_pass(model, w, args.batch_size, "sample")), "taylor_2nd"
        elif args.prune_scores == "magnitude" or scores is None:
            scores, source = magnitude_scores(model), "magnitude"
        else:
            source = "taylor_2nd"
        _log(f"prefill {args.prefill_batch} x {args.prefill_len}, decode {args.decode_batches} x {args.new_tokens} "
             f"new tokens: dense vs pruned ({args.prune_ratio:g} of prunable params, {source} scores)")
        speed = bench_speed(model, scores, source, args, device)
        report.set(prefill_speedup=speed["prefill_speedup"], prefill_of_flop_ratio=speed["prefill_of_flop_ratio"],
                   decode_speedup=speed["decode_speedup"], speed=speed)

    if "removal" in args.sections:
        model = model_for(args.removal_model)
        windows = random_windows(args.removal_num_samples, args.removal_seq_len, model.config.vocab_size, args.seed + 4)
        _log(f"removal losses: {args.removal_model} model, {len(windows)} x {windows.shape[1]} tokens, prefix cache on/off")
        removal = bench_removal(model, windows, args.batch_size, args.repeats, args.warmup, device)
        report.set(layer_removal_time_ratio=removal["layer_removal_time_ratio"],
                   block_removal_time_ratio=removal["block_removal_time_ratio"], removal=removal)
        del model

    if args.sweep:
        from prune.sweep.table import time_spent

        report.set(sweep=time_spent(args.sweep))

    report.data["context"]["loadavg_end"] = _loadavg()
    report.data["context"]["wall_s"] = time.perf_counter() - started
    report.data["complete"] = True
    report.set()
    print_summary(report.data)
    _log(f"wrote {report.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
