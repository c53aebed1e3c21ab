"""What prune-bench writes: ``bench.json`` (rewritten after every section), goals, context, the summary."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from prune.bench.models import TESTBED_SHAPE


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



def _goals(results: dict) -> dict:
    out = {}
    for key, (op, target) in GOALS.items():
        value = results.get(key)
        met = None
        if isinstance(value, (int, float)) and math.isfinite(value):
            met = value <= target if op == "<=" else value >= target
        out[key] = {"goal": f"{op} {target:g}", "value": value, "met": met}
    return out


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def context(args, device, dtype) -> dict:
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
        "loadavg_start": loadavg(),
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


class Report:
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


def log(msg: str) -> None:
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
    from prune.report.terminal import print_summary as show

    show([(title, [("metric", "left"), ("value", "right"), ("goal", "right"), ("met", "center")], rows)], extra)

