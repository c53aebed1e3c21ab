"""``report.md`` of a sweep: what varied, the verdicts, the perplexity table, the figures with captions."""
from __future__ import annotations

import math

from prune.stats import mean_sd
from prune.report.after import AFTER_METRICS
from prune.report.conditions import KEYS

UNFINISHED = ("running", "interrupted")  # not failures: a rerun of the sweep resumes them

RULES = ("Each line: mean ± sd over seeds per setting; the difference with its 90 % confidence interval (PPL: the "
         "ratio of the two arms, tested on log PPL, so a margin of ±2 % is ±log 1.02 there); the test (paired by seed "
         "where one seed is the same calibration text in both arms: the arms differ in a setting that does not touch the "
         "data, or every job cuts its text from the same blocks under one token budget; else Welch) with its two-sided p; "
         "and the equivalence test (TOST, alpha 0.05) against the margin (PPL ±2 %, the seed note's lower prediction; task "
         "accuracy ±1 point; rank agreement ±0.05). 'No difference' is said only where the equivalence test passes (the 90 % "
         "CI inside the margin); otherwise 'cannot tell at this n', with the seeds per arm equivalence would take. Every "
         "line below is secondary: its p values are Holm-adjusted within the study (differences and equivalence tests as "
         "two families; raw and adjusted shown), and the adjusted p decides. PPL lines also give the difference as a share "
         "of the pruning damage of the reference arm. A permutation test whose smallest possible p (2/2^n for n paired "
         "seeds) is at least 0.05 is 'untestable at this n'.")


def _study(study: dict, rows: list[dict]) -> list[str]:
    """The failing negative control (at the very top) and the primary endpoint section."""
    control = study["negative_control"]
    primary = next((r for r in rows if r["role"] == "primary"), None)
    lines = ["## Primary endpoint", "", study["primary_note"]]
    if study["primary_declared_after_the_run"]:
        lines[-1] += (" This study ran before its primary endpoint was written down: the choice follows the rule stated "
                      "in that file (not the results), but it is not a pre-registration.")
    lines += ["", primary["text"] if primary else "- (none)", "", "## Negative control", "",
              f"{control['status'].upper()}: {control['note']}", ""]
    return lines


def markdown(sweep, rows: list[dict], study: dict) -> str:
    unfinished = [j for j in sweep.jobs if j["metrics"].get("status") in UNFINISHED]
    failed = [j for j in sweep.jobs if j["metrics"].get("status") not in ("ok", *UNFINISHED)]
    lines = [f"# Sweep report: {sweep.dir.name}", ""]
    if study["failed"]:
        lines += [f"**STUDY FAILED: {study['negative_control']['note']}**", ""]
    varied = sweep.varied()
    waiting = f", {len(unfinished)} unfinished (running, or killed: rerunning the sweep resumes them)" if unfinished else ""
    lines.append(f"{len(sweep.jobs)} jobs: {len(sweep.ok)} ok, {len(failed)} failed{waiting}. Varying: "
                 f"{', '.join(varied) or 'nothing'} (seeds are repeats of one condition).")
    if sweep.stale:
        lines.append(f"Left out: job folder(s) {', '.join(sweep.stale)}, from an earlier launch into this folder "
                     "(their settings are not a point of its multirun.yaml).")
    if sweep.ok:
        first = sweep.ok[0]["metrics"]["run"]
        fixed = {k: first.get(k) for k in KEYS if k not in [sweep.x_key] + sweep.series_keys + varied}
        lines.append("Fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items() if v is not None) + ".")
    lines += [""] + _study(study, rows) + ["## Secondary comparisons", "", RULES, ""]
    lines += [v["text"] for v in rows if v["role"] != "primary" and v.get("metric") not in AFTER_METRICS] or [
        "- nothing else to compare."]
    lines += ["", "## Perplexity", "", _ppl_table(sweep), ""]
    captions = {
        "ppl_after.png": "Perplexity after pruning (mean ± sd over seeds); dashed: before pruning.",
        "importance_accuracy.png": "Spearman correlation of each run's group scores with the true loss increase of removing that group alone (held-out text, the longest truth window; every truth length, top-quarter Spearman and weighted tau are in the verdicts and summary.csv).",
        "overlap.png": "Overlap (Jaccard) of the sets of removed groups, over pairs of different seeds only: off-diagonal between settings, diagonal within one setting (the noise floor).",
        "grad_by_layer.png": "Per-layer mean and std of |gradient| over the prunable weights, and the coefficient of variation of the per-batch mean across batches.",
        "kept_by_layer.png": "Fraction of attention groups and MLP channels kept in every layer.",
        "layer_importance.png": "Layer and block importance scores per layer (the criterion's own units), one line per setting.",
        "cost.png": "Time and peak memory per phase.",
    }
    for name, caption in captions.items():
        if name in sweep.figures:
            lines += [f"![{name}]({name})", "", caption, ""]
    if failed:
        lines += ["## Failed jobs", ""]
        lines += [f"- job {j['folder']} ({' '.join(j['overrides'])}): {j['metrics'].get('error', 'no error recorded')}" for j in failed]
        lines.append("")
    if unfinished:
        lines += ["## Unfinished jobs", ""]
        lines += [f"- job {j['folder']}: status {j['metrics'].get('status')}" for j in unfinished] + [""]
    lines += ["Tables: `summary.csv`, `summary.json` (one row per job).", ""]
    return "\n".join(lines)


def _ppl_table(sweep) -> str:
    lengths = sweep.eval_lengths()
    with_acc = any((j["metrics"].get("acc_after") or {}).get("mean") is not None for j in sweep.ok)
    header = f"| {' | '.join(sweep.series_keys + [sweep.x_key])} | n | " + " | ".join(f"PPL@{l} after" for l in lengths)
    tasks = sorted({t for j in sweep.ok for t in (j["metrics"].get("acc_after") or {}) if t != "mean"})
    header += f" | mean task accuracy after ({', '.join(tasks)}) |" if with_acc else " |"
    rows = [header, "|" + "---|" * (len(sweep.series_keys) + 2 + len(lengths) + int(with_acc))]
    for key, jobs in sweep.series().items():
        for x, group in sweep.by_x(jobs).items():
            cells = []
            for length in lengths:
                m, sd, _ = mean_sd([j["metrics"]["ppl_after"].get(length) for j in group])
                cells.append(f"{m:.4g} ± {sd:.2g}" if not math.isnan(sd) else f"{m:.4g}")
            if with_acc:
                m, sd, _ = mean_sd([(j["metrics"].get("acc_after") or {}).get("mean") for j in group])
                cells.append(f"{m:.3f} ± {sd:.2g}" if not math.isnan(sd) else f"{m:.3f}")
            shown = ["off" if v is None else str(v) for v in key]
            rows.append(f"| {' | '.join(shown)}{' | ' if key else ''}{x} | {len(group)} | " + " | ".join(cells) + " |")
    before = {l: mean_sd([j["metrics"]["ppl_before"].get(l) for j in sweep.ok])[0] for l in lengths}
    rows.append("")
    line = "Before pruning: " + ", ".join(f"PPL@{l} = {v:.4g}" for l, v in before.items())
    if with_acc:
        line += f", mean task accuracy = {mean_sd([(j['metrics'].get('acc_before') or {}).get('mean') for j in sweep.ok])[0]:.3f}"
    rows.append(line)
    return "\n".join(rows)
