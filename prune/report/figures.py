"""The sweep report's figures: perplexity, importance accuracy, overlap of removed groups, per-layer curves, cost.

Each function takes a ``Sweep`` (its conditions, series and x axis) and saves its PNG with ``sweep.save``.
"""
from __future__ import annotations

import itertools
import math
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prune.stats import jaccard, mean_sd  # noqa: E402
from prune.report.conditions import LABELS, removed_sets  # noqa: E402
from prune.report.jobs import setting  # noqa: E402


def _xs(values: list) -> tuple[list, bool]:
    numeric = all(isinstance(v, (int, float)) for v in values)
    return (values, numeric) if numeric else (list(range(len(values))), False)


def _x_axis(sweep, ax, xs_raw: list) -> None:
    xs, numeric = _xs(xs_raw)
    if numeric and sweep.x_key == "seq_len":
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(v) for v in xs_raw])
    ax.set_xlabel(LABELS.get(sweep.x_key, sweep.x_key))


def plot_ppl(sweep) -> None:
    lengths = sweep.eval_lengths()
    if not lengths:
        return
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.6), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        for key, jobs in sweep.series().items():
            groups = sweep.by_x(jobs)
            xs_raw = list(groups)
            xs, _ = _xs(xs_raw)
            stats = [mean_sd([j["metrics"]["ppl_after"].get(length) for j in g]) for g in groups.values()]
            means = [s[0] for s in stats]
            sds = [0 if math.isnan(s[1]) else s[1] for s in stats]
            ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=sweep.series_label(key))
            _x_axis(sweep, ax, xs_raw)
        before = [j["metrics"]["ppl_before"].get(length) for j in sweep.ok if length in j["metrics"].get("ppl_before", {})]
        if before:
            ax.axhline(statistics.fmean(before), color="gray", ls="--", lw=1, label="before pruning")
        ax.set_ylabel("perplexity after pruning")
        ax.set_title(f"eval window {length} tokens (mean ± sd over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    sweep.save(fig, "ppl_after.png")


def _layer_curves(sweep, name: str, title: str, panels: list[tuple[str, str, str]], logy: bool | str) -> None:
    """One figure per series: per-layer curves, one line per x value (averaged over seeds).

    ``logy="auto"``: a symmetric log axis when a panel's values span more than two orders of magnitude
    (one layer far above the rest would flatten every other layer into a line at zero)."""
    series = sweep.series()
    if not series:
        return
    fig, axes = plt.subplots(len(series), len(panels), figsize=(4.4 * len(panels), 3.3 * len(series)), squeeze=False)
    drew = False
    for row, (key, jobs) in enumerate(series.items()):
        for col, (source, field, label) in enumerate(panels):
            ax = axes[row][col]
            plotted = []
            for x, group in sweep.by_x(jobs).items():
                curves = [_per_layer(j, source, field) for j in group]
                curves = [c for c in curves if c]
                if not curves:
                    continue
                n = min(len(c) for c in curves)
                mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
                ax.plot(range(n), mean, marker=".", label=f"{sweep.x_key}={x}")
                plotted += mean
                drew = True
            magnitudes = [abs(v) for v in plotted if v]
            if logy is True:
                ax.set_yscale("log")
            elif logy == "auto" and magnitudes and max(magnitudes) > 100 * min(magnitudes):
                ax.set_yscale("symlog", linthresh=max(magnitudes) * 1e-3)
            ax.set_xlabel("decoder layer")
            ax.set_ylabel(label)
            ax.set_title(f"{label}\n{sweep.series_label(key)}", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    if drew:
        sweep.save(fig, name)
    else:
        plt.close(fig)


def _per_layer(job: dict, source: str, field: str) -> list[float] | None:
    rows = job["metrics"].get(source) or []
    values = [r.get(field) for r in rows]
    return values if values and all(v is not None for v in values) else None


def plot_layers(sweep) -> None:
    _layer_curves(
        sweep, "grad_by_layer.png", "per-layer |gradient| of the prunable weights (mean over seeds)",
        [("by_layer", "grad_abs_mean", "mean |grad| (loss / weight unit)"),
         ("by_layer", "grad_abs_std", "std of |grad| (loss / weight unit)"),
         ("by_layer", "grad_abs_mean_batch_cv", "CV of per-batch mean |grad|")],
        logy=False,
    )
    if any(j["metrics"].get("layer_scores") for j in sweep.ok):
        criteria = sorted({j["metrics"]["layer_scores"].get("criterion") for j in sweep.ok if j["metrics"].get("layer_scores")})
        unit = "loss increase, nats" if set(criteria) <= {"layer", "block"} else "criterion units"
        panels = [("by_layer", f"{key}_importance", f"{key} importance ({unit})")
                  for key in ("layer", "attention", "mlp")
                  if any(_per_layer(j, "by_layer", f"{key}_importance") for j in sweep.ok)]
        _layer_curves(sweep, "layer_importance.png", f"{', '.join(criteria)} importance per layer (mean over seeds)",
                      panels, logy="auto")
    _layer_curves(
        sweep, "kept_by_layer.png", "fraction kept per layer (mean over seeds)",
        [("kept", "attention_kept_fraction", "attention groups kept (fraction)"),
         ("kept", "mlp_kept_fraction", "MLP channels kept (fraction)")],
        logy=False,
    )


def overlaps(sweep, jobs: list[dict]) -> dict:
    """Mean Jaccard overlap of the removed sets between x values (off-diagonal) and seeds (diagonal)."""
    groups = {x: [(setting(j, "seed"), removed_sets(j["plan"])) for j in g if j["plan"]] for x, g in sweep.by_x(jobs).items()}
    xs = list(groups)
    out = {}
    for block in ("attention", "mlp"):
        matrix = [[float("nan")] * len(xs) for _ in xs]
        for a, b in itertools.product(range(len(xs)), repeat=2):
            # like with like: pairs of different seeds on the diagonal and off it
            pairs = [(p, q) for (s, p), (t, q) in itertools.product(groups[xs[a]], groups[xs[b]])
                     if s != t and (a != b or s < t)]
            if pairs:
                matrix[a][b] = statistics.fmean(jaccard(p[block], q[block]) for p, q in pairs)
        out[block] = {"x": xs, "matrix": matrix}
    return out


def plot_overlap(sweep) -> dict:
    results = {}
    series = sweep.series()
    if not series:
        return results
    fig, axes = plt.subplots(len(series), 2, figsize=(9, 3.8 * len(series)), squeeze=False)
    for row, (key, jobs) in enumerate(series.items()):
        ov = overlaps(sweep, jobs)
        results[sweep.series_label(key)] = ov
        for col, block in enumerate(("attention", "mlp")):
            ax = axes[row][col]
            m = ov[block]["matrix"]
            im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
            labels = [str(x) for x in ov[block]["x"]]
            ax.set_xticks(range(len(labels)), labels)
            ax.set_yticks(range(len(labels)), labels)
            ax.set_xlabel(LABELS.get(sweep.x_key, sweep.x_key))
            ax.set_ylabel(LABELS.get(sweep.x_key, sweep.x_key))
            for i, j in itertools.product(range(len(labels)), repeat=2):
                if not math.isnan(m[i][j]):
                    ax.text(j, i, f"{m[i][j]:.2f}", ha="center", va="center", color="w", fontsize=8)
            ax.set_title(f"Jaccard of removed {block} groups\n(diagonal: between seeds)\n{sweep.series_label(key)}", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046, label="Jaccard overlap (0-1)")
    sweep.save(fig, "overlap.png")
    return results


def plot_cost(sweep) -> None:
    if not sweep.ok:
        return
    phases = [p for p in ("data", "load_model", "eval_before", "importance", "ground_truth", "pruning", "eval_after", "save")
              if any(p in (j["metrics"].get("timings") or {}) for j in sweep.ok)]
    groups = sweep.by_x(sweep.ok)
    xs_raw = list(groups)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    positions = list(range(len(xs_raw)))
    bottom = [0.0] * len(xs_raw)
    for phase in phases:
        values = [statistics.fmean((j["metrics"]["timings"].get(phase) or 0.0) for j in g) for g in groups.values()]
        axes[0].bar(positions, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
        peaks = [max((j["metrics"].get("peak_memory_mb") or {}).get(phase, 0.0) for j in g) for g in groups.values()]
        axes[1].plot(positions, peaks, marker="o", label=phase)
    for ax, ylabel, title in ((axes[0], "seconds (mean per job)", "time per phase"),
                              (axes[1], "peak memory (MiB)", "peak memory per phase")):
        ax.set_xticks(positions, [str(x) for x in xs_raw])
        ax.set_xlabel(LABELS.get(sweep.x_key, sweep.x_key))
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    sweep.save(fig, "cost.png")


def plot_accuracy(sweep) -> None:
    if not any(j["metrics"].get("importance_accuracy") for j in sweep.ok):
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, block in zip(axes, ("attention", "mlp")):
        for key, jobs in sweep.series().items():
            groups = sweep.by_x(jobs)
            xs_raw = list(groups)
            xs, _ = _xs(xs_raw)
            stats = [mean_sd([(j["metrics"].get("importance_accuracy") or {}).get(block) for j in g]) for g in groups.values()]
            ax.errorbar(xs, [s[0] for s in stats], yerr=[0 if math.isnan(s[1]) else s[1] for s in stats],
                        marker="o", capsize=3, label=sweep.series_label(key))
            _x_axis(sweep, ax, xs_raw)
        ax.set_ylabel("Spearman with true loss increase")
        truth = sorted({(j["metrics"].get("importance_accuracy") or {}).get("length") for j in sweep.ok} - {None})
        ax.set_title(f"importance accuracy: {block} groups\n(truth on {'/'.join(map(str, truth))}-token windows)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    sweep.save(fig, "importance_accuracy.png")
