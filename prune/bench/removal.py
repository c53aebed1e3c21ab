"""The removal section: layer and block removal losses with the prefix cache on and off."""
from __future__ import annotations

import contextlib
import math

from prune.bench.timing import ratio, interleaved


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
        r = ratio(times, f"{which}_prefix", f"{which}_naive")
        report[f"{which}_removal_time_ratio"] = r["ratio"]
        report[f"{which}_per_round_ratios"] = r["per_round"]
        base_p, by_p = losses[f"{which}_prefix"]
        base_n, by_n = losses[f"{which}_naive"]
        report[f"{which}_max_abs_loss_diff"] = max([abs(base_p - base_n)] + [abs(by_p[u] - by_n[u]) for u in by_p])
        c = report["decoder_layer_calls_per_batch"]
        report[f"{which}_layer_call_ratio"] = c[f"{which}_prefix"] / c[f"{which}_naive"]
    return report

