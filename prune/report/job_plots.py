"""PNG figures of one run (per-layer gradient statistics, kept fraction per layer)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prune.files import save_figure  # noqa: E402


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    save_figure(fig, path, dpi=110)  # a job killed here leaves the old image or none, never half of one
    plt.close(fig)
    return str(path)


def plot_grad_stats(rows: list[dict], path: Path, title: str) -> str:
    """Mean and std of |gradient| over each layer's prunable weights (attention, MLP, both)."""
    layers = [r["layer"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, stat, label in ((axes[0], "abs_mean", "mean |grad|"), (axes[1], "abs_std", "std of |grad|")):
        for part, style in (("attention", "o-"), ("mlp", "s-"), ("all", "k--")):
            ax.plot(layers, [r[f"{part}_grad_{stat}"] for r in rows], style, label=part, markersize=4)
        ax.set_yscale("log")
        ax.set_xlabel("decoder layer")
        ax.set_ylabel(f"{label} (loss units / weight unit)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_kept(kept: list[dict], path: Path, title: str) -> str:
    """Fraction of attention groups and MLP channels kept in every layer."""
    layers = [r["layer"] for r in kept]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.4
    ax.bar([i - width / 2 for i in layers], [r["attention_kept_fraction"] for r in kept], width, label="attention groups")
    ax.bar([i + width / 2 for i in layers], [r["mlp_kept_fraction"] for r in kept], width, label="MLP channels")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("kept fraction")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_layer_scores(layer_scores: dict, path: Path, title: str) -> str:
    """Layer and block importance per decoder layer (the criterion's own units)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for key, style in (("layer", "ko-"), ("attention", "o--"), ("mlp", "s--")):
        values = layer_scores.get(key)
        if isinstance(values, list):
            ax.plot(range(len(values)), values, style, label=f"{key}", markersize=4)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(f"{layer_scores.get('criterion', 'importance')} score")
    ax.set_title(f"layer / block importance ({layer_scores.get('criterion')}, L={layer_scores.get('length')}) - {title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def job_plots(out: Path, rows, kept, grad_stats, title: str, layer_scores: dict | None = None) -> dict[str, str]:
    """The figures of one job, by their W&B image key."""
    images = {"plots/kept_fraction": plot_kept(kept, out / "kept_fraction.png", f"kept per layer - {title}")}
    if grad_stats:
        images["plots/grad_stats"] = plot_grad_stats(rows, out / "grad_stats.png", f"|grad| per layer - {title}")
    if layer_scores:
        images["plots/layer_scores"] = plot_layer_scores(layer_scores, out / "layer_scores.png", title)
    return images
