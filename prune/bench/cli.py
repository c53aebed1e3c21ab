"""``prune-bench`` (``python -m prune.bench``): parse the presets and options, run the sections, write the JSON."""
from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from prune.bench.memory import bench_memory_cpu
from prune.bench.models import PRESETS, TESTBED_SHAPE, build_model, random_windows
from prune.bench.real import SECTIONS as REAL_SECTIONS
from prune.bench.removal import bench_removal
from prune.bench.results import H200_BF16_PEAK_TFLOPS, Report, context, log, loadavg, print_summary
from prune.bench.speed import DECODE_STEPS, bench_speed, magnitude_scores
from prune.bench.taylor import bench_taylor, taylor_pass, taylor_scores

SECTIONS = ("taylor", "memory", "mean_grad", "speed", "removal")


# ----------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="prune-bench",
        description="Cost of the pruning machinery as ratios against plain baselines (see prune/bench/__init__.py).",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="cpu (default, a few minutes on 2 cores), llama3_8b (random Llama-3-8B shapes, GPU), quick (tests)")
    p.add_argument("--quick", action="store_true", help="same as --preset quick")
    p.add_argument("--model", default=None, help="a packaged real model (smollm2_135m): its goals instead of the presets "
                   "(prune/bench/real.py); sections taylor,eval,job")
    p.add_argument("--text", default=None, help="with --model: the text file of the job section (data=text_split)")
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
    valid = REAL_SECTIONS if args.model else SECTIONS
    args.sections = (
        set(valid) if args.sections == "all" else set() if args.sections == "none"
        else {s.strip() for s in args.sections.split(",") if s.strip()}
    )
    bad = args.sections - set(valid)
    if bad:
        p.error(f"unknown section(s) {', '.join(sorted(bad))}: choose from {', '.join(valid)}")
    for name in ("num_samples", "memory_num_samples"):
        n, b = getattr(args, name), args.batch_size if name == "num_samples" else args.memory_batch_size
        if n % b or (n < 2 * b and b > 1):
            p.error(f"--{name.replace('_', '-')}={n} must be a multiple of the batch size {b} with at least two "
                    "batches (Taylor 2nd order with fisher=sample needs two)")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args




def _wanted_omp_policy(args) -> str | None:
    if args.omp_wait_policy == "inherit" or (args.omp_wait_policy == "auto" and os.environ.get("OMP_WAIT_POLICY")):
        return None
    return "ACTIVE" if args.omp_wait_policy == "active" else "PASSIVE"


def _rerun_with_omp_policy(argv: list[str], policy: str) -> int:
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads: apply it by running again in a child."""
    repo = str(Path(__file__).resolve().parents[2])
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
    if args.model:
        from prune.bench.real import main as real_main

        return real_main(args)
    dtype = resolve_dtype(args.dtype, device)
    if device.type == "cuda":
        if device.index is None:  # every torch.cuda call below then gets an explicit index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    peak_tflops = args.peak_tflops or (H200_BF16_PEAK_TFLOPS if device.type == "cuda" else None)
    started = time.perf_counter()
    report = Report(Path(args.out), context(args, device, dtype))
    report.set()

    bench_model = None

    def get_bench_model():
        nonlocal bench_model
        if bench_model is None:
            log(f"building the bench model {asdict(args.shape)} on {device} ({dtype})")
            bench_model = build_model(args.shape, device, dtype, args.seed)
        return bench_model

    def model_for(which: str):
        if which == "bench":
            return get_bench_model()
        log("building the testbed-shaped model")
        return build_model(TESTBED_SHAPE, device, dtype, args.seed)

    scores = None
    if "taylor" in args.sections:
        model = model_for(args.taylor_model)
        per_len = []
        for length in args.seq_lens:
            log(f"Taylor passes: {args.taylor_model} model, {args.num_samples} x {length} tokens, batch {args.batch_size}")
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
        log(f"memory: fresh subprocesses, {args.memory_num_samples} x {args.memory_seq_len} tokens, batch {args.memory_batch_size}")
        mem = bench_memory_cpu(shape, dtype, args.memory_seq_len, args.memory_batch_size, args.memory_num_samples,
                               torch.get_num_threads(), args.seed)
        report.set(taylor_2nd_extra_memory_ratio=mem["taylor_2nd_extra_memory_ratio"], memory=mem)
    elif "memory" in args.sections and "taylor" not in args.sections:
        log("memory on CUDA is measured with the Taylor timings: add the 'taylor' section")

    if "mean_grad" in args.sections:
        from prune.bench.mean_grad import bench_mean_grad

        model = model_for(args.taylor_model)
        windows = random_windows(args.num_samples, args.seq_len, model.config.vocab_size, args.seed + 1)
        log(f"mean_grad stores: Taylor 2nd, {args.taylor_model} model, {args.num_samples} x {args.seq_len}, batch {args.batch_size}")
        report.set(mean_grad=bench_mean_grad(model, windows, args.batch_size, args.repeats, args.warmup, device))
        del model

    if "speed" in args.sections:
        model = get_bench_model()
        if args.prune_scores == "taylor" and scores is None:
            log("Taylor-2nd scores for pruning")
            w = random_windows(args.num_samples, args.seq_len, model.config.vocab_size, args.seed + 1)
            scores, source = taylor_scores(model, taylor_pass(model, w, args.batch_size, "sample")), "taylor_2nd"
        elif args.prune_scores == "magnitude" or scores is None:
            scores, source = magnitude_scores(model), "magnitude"
        else:
            source = "taylor_2nd"
        log(f"prefill {args.prefill_batch} x {args.prefill_len}, decode {args.decode_batches} x {args.new_tokens} "
             f"new tokens: dense vs pruned ({args.prune_ratio:g} of prunable params, {source} scores)")
        speed = bench_speed(model, scores, source, args, device)
        report.set(prefill_speedup=speed["prefill_speedup"], prefill_of_flop_ratio=speed["prefill_of_flop_ratio"],
                   decode_speedup=speed["decode_speedup"], speed=speed)

    if "removal" in args.sections:
        model = model_for(args.removal_model)
        windows = random_windows(args.removal_num_samples, args.removal_seq_len, model.config.vocab_size, args.seed + 4)
        log(f"removal losses: {args.removal_model} model, {len(windows)} x {windows.shape[1]} tokens, prefix cache on/off")
        removal = bench_removal(model, windows, args.batch_size, args.repeats, args.warmup, device)
        report.set(layer_removal_time_ratio=removal["layer_removal_time_ratio"],
                   block_removal_time_ratio=removal["block_removal_time_ratio"], removal=removal)
        del model

    if args.sweep:
        from prune.report.table import time_spent

        report.set(sweep=time_spent(args.sweep))

    report.data["context"]["loadavg_end"] = loadavg()
    report.data["context"]["wall_s"] = time.perf_counter() - started
    report.data["complete"] = True
    report.set()
    print_summary(report.data)
    log(f"wrote {report.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
