"""What a finished job prints: PPL before and after per eval length, task accuracy, parameters removed,
time, peak memory and achieved FLOP/s per phase (rendered by ``prune.report.terminal``)."""
from __future__ import annotations

from prune.report.terminal import print_summary, summary_text


def summary_parts(metrics: dict) -> tuple[list, list[str]]:
    tables, lines = [], []
    name = f"{(metrics.get('run') or {}).get('name')}  status={metrics.get('status')}"
    if metrics.get("ppl_before"):
        rows = []
        for length, before in metrics["ppl_before"].items():
            after = metrics["ppl_after"][length]
            rows.append((length, f"{before:.3f}", f"{after:.3f}", f"{100 * (after / before - 1):+.1f}%"))
        columns = [(c, "right") for c in ("eval length", "PPL before", "PPL after", "change")]
        tables.append((f"prune-lab: {name}", columns, rows))
        lines.append(f"params {metrics['params_before']:,} -> {metrics['params_after']:,} "
                     f"(prunable removed {100 * metrics['prunable_ratio_removed']:.1f}%, "
                     f"whole model {100 * metrics['total_ratio_removed']:.1f}%)")
    else:
        lines.append(f"prune-lab: {name}")
    if metrics.get("acc_after"):
        rows = []
        for task, after in metrics["acc_after"].items():
            before = (metrics.get("acc_before") or {}).get(task)
            rows.append((task, "-" if before is None else f"{before:.3f}", f"{after:.3f}",
                         "-" if before is None else f"{100 * (after - before):+.1f}"))
        tables.append(("downstream accuracy", [(c, "right") for c in ("task", "before", "after", "change (points)")], rows))
    if metrics.get("ratio_note"):
        lines.append(metrics["ratio_note"])
    lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in (metrics.get("timings") or {}).items()))
    if metrics.get("peak_memory_mb"):
        lines.append("peak memory (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in metrics["peak_memory_mb"].items()))
    if metrics.get("flops_per_s"):
        lines.append("achieved GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in metrics["flops_per_s"].items()))
    if metrics.get("pruned_model_dir"):
        lines.append(f"pruned model: {metrics['pruned_model_dir']}")
    if metrics.get("output_dir"):
        lines.append(f"outputs: {metrics['output_dir']}")
    return tables, lines


def print_job_summary(metrics: dict) -> None:
    print_summary(*summary_parts(metrics))


def summary_table(metrics: dict) -> str:
    """The job summary as plain text."""
    return summary_text(*summary_parts(metrics))
