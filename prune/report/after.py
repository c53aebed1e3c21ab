"""The sweep report's part on what comes after one-shot pruning: recovery and the long-context probe.

Called by ``prune.report.build.Report.build``: verdicts for the one-shot and the recovered model side by
side (the rules of ``prune.report.verdicts``: paired or Welch test, 90 % CI and equivalence test), and ``probe.png``: exact-retrieval
accuracy of the probe against context length and against depth, per calibration ``seq_len``, before
pruning, after pruning and after recovery.
"""
from __future__ import annotations

import statistics

from prune.eval.probe import parse_task
from prune.report.comparisons import comparison
from prune.report.conditions import pairs_by_seed
from prune.report.jobs import setting

AFTER_METRICS = ("ppl_recovered", "probe", "probe_items")  # the rows this section shows (the report's main list leaves them out)
STAGES = (("acc_before", "before pruning"), ("acc_after", "after pruning"), ("acc_recovered", "after recovery"))


def probe_accuracy(metrics: dict, stage: str) -> dict[tuple[int, float], float]:
    """(length, depth) -> exact-retrieval accuracy of the probe tasks at ``stage`` (acc_after, ...)."""
    out = {}
    for task, value in (metrics.get(stage) or {}).items():
        parsed = parse_task(task)
        if parsed is not None:
            out[parsed] = value
    return out


def probe_mean(metrics: dict, stage: str) -> float | None:
    values = list(probe_accuracy(metrics, stage).values())
    return statistics.fmean(values) if values else None


def verdicts(sweep) -> list[dict]:
    """The probe's verdict rows at every stage (the PPL verdicts after recovery are among the report's own)."""
    rows = []
    for key, jobs in sweep.series().items():
        groups = sweep.by_x(jobs)
        label = sweep.series_label(key)
        ref, others = sweep.arms(groups)
        for other in others:
            paired = pairs_by_seed(groups[ref] + groups[other], sweep.x_key)
            for stage, what in STAGES[1:]:
                row = comparison(f"[{label}] long-context probe accuracy (mean over lengths and depths), {what}", sweep.x_key,
                                 ref, other, groups[ref], groups[other], lambda m, s=stage: probe_mean(m, s), "accuracy",
                                 False, paired, metric="probe", at=stage)
                if row is not None:
                    row["series"] = label
                    rows.append(row)
    return rows


def plot_probe(sweep) -> bool:
    """``probe.png``: accuracy vs context length (mean over depths) and vs depth (mean over lengths)."""
    import matplotlib.pyplot as plt

    stages = [(s, t) for s, t in STAGES if any(probe_accuracy(j["metrics"], s) for j in sweep.ok)]
    if not stages:
        return False
    fig, axes = plt.subplots(len(stages), 2, figsize=(10, 3.4 * len(stages)), squeeze=False)
    for row, (stage, title) in enumerate(stages):
        for col, (axis, label) in enumerate(((0, "context length (tokens)"), (1, "depth of the key (0 = start)"))):
            ax = axes[row][col]
            for key, jobs in sweep.series().items():
                for x, group in sweep.by_x(jobs).items():
                    per_job = [probe_accuracy(j["metrics"], stage) for j in group]
                    points = sorted({k[axis] for acc in per_job for k in acc})
                    if not points:
                        continue
                    means = [statistics.fmean(statistics.fmean(v for k, v in acc.items() if k[axis] == p) for acc in per_job
                                              if any(k[axis] == p for k in acc)) for p in points]
                    name = f"{sweep.x_key}={x}" + (f" ({sweep.series_label(key)})" if sweep.series_keys else "")
                    ax.plot(points, means, marker="o", label=name)
            if axis == 0:
                ax.set_xscale("log", base=2)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel(label)
            ax.set_ylabel("exact retrieval accuracy")
            ax.set_title(f"long-context probe, {title} (mean over seeds)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    sweep.save(fig, "probe.png")
    return True


def _table(sweep) -> str:
    lengths = sweep.eval_lengths()
    control = any(j["metrics"].get("ppl_dense_recovered") for j in sweep.ok)
    fields = ("ppl_after", "ppl_recovered") + (("ppl_dense_recovered",) if control else ())
    shown = "one-shot / recovered" + (" / dense recovered" if control else "")
    head = f"| {' | '.join(sweep.series_keys + [sweep.x_key])} | n | " + " | ".join(f"PPL@{L} {shown}" for L in lengths) + " |"
    rows = [head, "|" + "---|" * (len(sweep.series_keys) + 2 + len(lengths))]
    for key, jobs in sweep.series().items():
        for x, group in sweep.by_x(jobs).items():
            cells = []
            for length in lengths:
                pair = []
                for field in fields:
                    values = [v for v in ((j["metrics"].get(field) or {}).get(length) for j in group) if v is not None]
                    pair.append(f"{statistics.fmean(values):.4g}" + (f" ± {statistics.stdev(values):.2g}" if len(values) > 1 else "")
                                if values else "-")
                cells.append(" / ".join(pair))
            shown = ["off" if v is None else str(v) for v in key]
            rows.append(f"| {' | '.join(shown)}{' | ' if key else ''}{x} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def control_lines(sweep, rows: list[dict]) -> list[str]:
    """The recovery control in words: what recovery does to the dense model, and to each difference, measured
    against the dense model recovered the same way (the gap recovery does not close)."""
    jobs = [j for j in sweep.ok if j["metrics"].get("ppl_dense_recovered")]
    if not jobs:
        return ["- no recovery control (recovery.dense_control=false, or jobs from before it existed): a recovered PPL "
                "can only be compared with the dense model before recovery, which training alone may beat."]
    rec = [j["metrics"].get("recovery") or {} for j in jobs]
    seen, stream = _mean(r.get("train_tokens") for r in rec), _mean(r.get("stream_tokens") for r in rec)
    text = [f"Recovery control: the unpruned model fine-tuned exactly as the pruned ones (same recovery settings, text, "
            f"steps and seed; {len({r.get('seed') for r in rec})} seed(s)). Recovery saw {seen:,.0f} tokens per job"
            + (f", drawn from {stream:,.0f} distinct tokens ({seen / stream:.2f} epochs)" if stream else "") + ".", ""]
    for length in sweep.eval_lengths():
        before = _mean((j["metrics"].get("ppl_before") or {}).get(length) for j in jobs)
        dense = _mean((j["metrics"].get("ppl_dense_recovered") or {}).get(length) for j in jobs)
        if before and dense:
            text.append(f"- eval window {length}: the dense model goes from PPL {before:.4g} to {dense:.4g} "
                        f"({100 * (dense / before - 1):+.2f} %) under the same recovery: training alone moves it.")
    for row in rows:
        if row.get("metric") != "ppl_recovered" or not (row.get("damage") or {}).get("control"):
            continue
        one_shot = next((r for r in rows if r.get("metric") == "ppl_after" and r.get("series") == row.get("series")
                         and str(r["at"]) == str(row["at"]) and r["other"] == row["other"]), None)
        d = row["damage"]
        gap = f"{100 * (d['after'] / d['before'] - 1):+.2f} %"
        after = (f"{100 * row['rel']:+.2f} % after recovery ("
                 + (f"{100 * d['share']:+.0f} % of the gap left to the dense-recovered control, {gap}" if d["share"] is not None
                    else f"no gap left: the recovered {row['x_key']}={row['ref']} is at or below the control, {gap}")
                 + f"; {row.get('decision', '?').replace('_', ' ')})")
        before_text = "?"
        if one_shot is not None:
            share = (one_shot.get("damage") or {}).get("share")
            before_text = (f"{100 * one_shot['rel']:+.2f} % one-shot" + (f" ({100 * share:+.0f} % of the pruning damage)"
                                                                           if share is not None else ""))
        text.append(f"- [{row.get('series')}] eval window {row['at']}, {row['x_key']}={row['other']} vs {row['ref']}: "
                    f"{before_text} -> {after}.")
    return text


def section(sweep, rows: list[dict]) -> str:
    """The markdown section (empty without recovery or probe), from the study's worded rows."""
    recovered = any(j["metrics"].get("ppl_recovered") for j in sweep.ok)
    probe = plot_probe(sweep)
    if not recovered and not probe:
        return ""
    text = ["", "## After pruning: recovery and the long-context probe", ""]
    if recovered:
        methods = sorted({(j["metrics"].get("recovery") or {}).get("method", "?") for j in sweep.ok})
        text += [f"Recovery ({', '.join(methods)}): does each difference between {sweep.x_key} values survive it?", "",
                 _table(sweep), ""] + control_lines(sweep, rows) + [""]
    from prune.report.probe_items import lines as bound_lines

    text += [v["text"] for v in rows if v.get("metric") in AFTER_METRICS] or ["- nothing to compare (a single condition)."]
    text += [""] + bound_lines(sweep)
    if probe:
        text += ["", "![probe.png](probe.png)", "",
                 "Long-context probe (prune_passkey): exact retrieval of a key hidden at a depth of a context of a given "
                 "length, before pruning, after pruning and after recovery.", ""]
    return "\n".join(text) + "\n"
