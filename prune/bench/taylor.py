"""The Taylor section: bare forward+backward against ``gradient_pass`` (1st order, 2nd order, exact Fisher)."""
from __future__ import annotations

import torch

from prune.bench.timing import ratio, interleaved


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


def taylor_pass(model, windows, batch_size, fisher, fused="auto"):
    from prune.importance.gradients import gradient_pass

    return gradient_pass(model, windows, batch_size, fisher=fisher, progress=False, fused=fused)


PASS_FISHER = {"taylor_1st": None, "taylor_2nd": "sample", "taylor_2nd_exact": "exact", "taylor_2nd_unfused": "sample"}


def run_pass(kind: str, model, windows, batch_size):
    if kind == "bare":
        return bare_pass(model, windows, batch_size)
    return taylor_pass(model, windows, batch_size, PASS_FISHER[kind], "false" if kind.endswith("_unfused") else "auto")


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
        "taylor_1st_time_ratio": ratio(times, "taylor_1st", "bare")["ratio"],
        "taylor_2nd_time_ratio": ratio(times, "taylor_2nd", "bare")["ratio"],
        "per_round_ratios": {k: ratio(times, k, "bare")["per_round"] for k in kinds[1:]},
        "taylor_2nd_micro_batch_size": kept.get("micro_batch_size"),
        "taylor_2nd_oom_restarts": kept.get("oom_restarts"),
        "taylor_fused": kept.get("fused"),
        "taylor_2nd_fused_vs_unfused_max_rel_diff": _max_rel_diff(kept.get("scores"), kept.get("unfused_scores")),
    }
    for kind in kinds[3:]:
        report[f"{kind}_time_ratio"] = ratio(times, kind, "bare")["ratio"]
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
        flops = 6.0 * model_shape(model).matmul_params * tokens
        report["mfu_flops_per_pass"] = flops
        report["mfu"] = flops / t2 / (peak_tflops * 1e12)
        report["bare_mfu"] = flops / times["bare"]["median_s"] / (peak_tflops * 1e12)
    return report, kept.get("scores")

