"""Every comparison a sweep report judges: the first x value against each other one, within each series."""
from __future__ import annotations

from prune.stats import compare
from prune.sweep.conditions import pairs_by_seed, removed_sets
from prune.sweep.jobs import setting
from prune.verdicts import judge, overlap_verdict


def _arm(jobs: list[dict], value) -> dict:
    return {setting(j, "seed"): value(j["metrics"]) for j in jobs}


def verdicts(sweep) -> list[dict]:
    """Every comparison of the first x value with each other one, within each series (see prune.verdicts)."""
    rows = []
    for key, jobs in sweep.series().items():
        groups = sweep.by_x(jobs)
        xs = list(groups)
        if len(xs) < 2:
            continue
        label = sweep.series_label(key)
        ref = xs[0]
        for other in xs[1:]:
            a, b = groups[ref], groups[other]
            paired = pairs_by_seed(a + b, sweep.x_key)

            def add(what, value, kind, lower_is_better):
                row = judge(f"[{label}] {what}", sweep.x_key, ref, other,
                            compare(_arm(a, value), _arm(b, value), paired), kind, lower_is_better)
                if row is not None:
                    row["series"] = label
                    rows.append(row)

            for length in sweep.eval_lengths():
                add(f"PPL after pruning, eval window {length}", lambda m, L=length: (m.get("ppl_after") or {}).get(L), "ppl", True)
            for length in sweep.eval_lengths():  # judged only where jobs ran recovery=...
                add(f"PPL after recovery, eval window {length}", lambda m, L=length: (m.get("ppl_recovered") or {}).get(L), "ppl", True)
            tasks = sorted({t for j in a + b for t in (j["metrics"].get("acc_after") or {})})
            if len(tasks) == 2 and "mean" in tasks:  # the mean of one task is that task
                tasks.remove("mean")
            for task in tasks:
                name = "mean downstream accuracy" if task == "mean" else f"{task} accuracy"
                add(f"{name} after pruning", lambda m, t=task: (m.get("acc_after") or {}).get(t), "accuracy", False)
            truths = sorted({L for j in a + b for L in ((j["metrics"].get("importance_accuracy") or {}).get("by_truth") or {})}, key=int)
            for truth in truths:
                for block in ("attention", "mlp"):
                    for measure, name in (("", "Spearman"), ("_wtau", "weighted tau")):
                        add(f"importance accuracy ({name}, {block}; truth on {truth}-token windows)",
                            lambda m, T=truth, k=f"{block}{measure}": (((m.get("importance_accuracy") or {}).get("by_truth") or {}).get(T) or {}).get(k),
                            "spearman", False)
            for block in ("attention", "mlp"):
                arms = [{setting(j, "seed"): removed_sets(j["plan"])[block] for j in g if j["plan"]} for g in (a, b)]
                row = overlap_verdict(label, block, sweep.x_key, ref, other, *arms)
                if row is not None:
                    row["series"] = label
                    rows.append(row)
    return rows
