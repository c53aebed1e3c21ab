"""The probe in the report, paired by item: every job scores the same items (``prune.eval.probe_score``), so two
arms are compared item by item (each item's score averaged over the arm's seeds), pooled over every cell
(context length x depth), on measures that can move:

* ``choice``: K-way choice accuracy (chance 1/K, known), margin ±0.01 as for task accuracy;
* ``evidence``: what the needle adds to the key's log-likelihood per token (with minus without the needle),
  margin ±0.05 nats per token (the key about 5 % more or less likely).

A comparison also states its resolution, one item's weight (1 / items): where one item is not below the
margin, a difference of the margin's size cannot show and the line says so.

Floor and ceiling: a cell where the **dense** model retrieves every item (ceiling) or does no better than
chance (floor) cannot show a loss (ceiling: only on the pruned side; floor: not at all). ``bounds`` names
those cells; the report lists them, the dashboard shows them, and an accuracy verdict on such a cell is worded
"at ceiling" / "at floor" instead of "identical".
"""
from __future__ import annotations

import statistics

from prune.stats import compare
from prune.report.conditions import arm_pairs
from prune.report.verdicts import judge, margin

MEASURES = {"choice": ("accuracy", "K-way choice accuracy"),
            "evidence": ("loglik", "needle evidence (key log-likelihood per token with minus without the needle, nats)")}
STAGES = (("after", "after pruning"), ("recovered", "after recovery"))


def cells(metrics: dict, stage: str) -> dict:
    """task -> the probe scoring of one job at ``stage`` (before | after | recovered), or {}."""
    return ((metrics.get("downstream") or {}).get(stage) or {}).get("probe") or {}


def item_means(jobs: list[dict], stage: str, measure: str) -> dict:
    """(task, item) -> the item's ``measure`` averaged over the arm's jobs (seeds)."""
    values: dict = {}
    for job in jobs:
        for task, cell in cells(job["metrics"], stage).items():
            for it in cell.get("items", []):
                values.setdefault((task, it["item"]), []).append(it[measure])
    return {k: statistics.fmean(v) for k, v in values.items()}


def bound(cell: dict, measure: str = "exact") -> str | None:
    """'ceiling' (every item right), 'floor' (no better than chance; exact: none right) or None."""
    if not cell or not cell.get("n"):
        return None
    value = cell.get(measure)
    if value is None:
        return None
    if value >= 1.0:
        return "ceiling"
    chance = cell.get("chance") or 0.0 if measure == "choice" else 0.0
    return "floor" if value <= chance else None


def bounds(sweep) -> dict[str, dict]:
    """task -> {measure: 'ceiling' | 'floor'} for the dense model (before pruning), where any."""
    dense = next((cells(j["metrics"], "before") for j in sweep.ok if cells(j["metrics"], "before")), {})
    out = {}
    for task, cell in dense.items():
        flags = {m: b for m in ("exact", "choice") if (b := bound(cell, m))}
        if flags:
            out[task] = {**flags, "n": cell["n"], "exact_value": cell.get("exact"), "choice_value": cell.get("choice")}
    return out


def verdicts(sweep) -> list[dict]:
    """Rows (``prune.report.verdicts.judge``) comparing the arms item by item, pooled over cells, at each stage."""
    rows = []
    for label, ref, other, groups in arm_pairs(sweep):
        for stage, what in STAGES:
            for measure, (kind, name) in MEASURES.items():
                a, b = item_means(groups[ref], stage, measure), item_means(groups[other], stage, measure)
                shared = a.keys() & b.keys()
                if len(shared) < 2:
                    continue
                size, log = margin(kind)
                c = compare({k: a[k] for k in shared}, {k: b[k] for k in shared}, True, size, log)
                row = judge(f"[{label}] probe {name}, {what}, paired by item over {len(shared)} items", sweep.x_key,
                            ref, other, c, kind, False, metric="probe_items", at=f"{measure}@{stage}")
                if row is None:
                    continue
                row.update(series=label, unit="item", resolution=1 / len(shared) if kind == "accuracy" else None)
                rows.append(row)
    return rows


def lines(sweep) -> list[str]:
    """The report's floor / ceiling list (the dense model, before pruning)."""
    flagged = bounds(sweep)
    if not flagged:
        return []
    out = ["Cells where the dense model is at floor or ceiling (they cannot show a loss on that measure; read the "
           "log-likelihood and needle evidence there):", ""]
    for task, f in sorted(flagged.items()):
        parts = [f"{m} at {f[m]} ({f[f'{m}_value']:.3g} over {f['n']} items)" for m in ("exact", "choice") if m in f]
        out.append(f"- {task}: " + "; ".join(parts))
    return out + [""]


def mark_bounds(sweep, rows: list[dict]) -> None:
    """Mark each probe accuracy row whose cell (or, for the mean over cells, every cell) has the dense model at
    floor or ceiling: ``prune.report.verdicts.render`` then never calls it 'identical'."""
    from prune.eval.probe import parse_task

    flagged = bounds(sweep)
    dense = next((j["metrics"].get("acc_before") for j in sweep.ok if j["metrics"].get("acc_before")), {}) or {}
    for task, value in dense.items():  # jobs without item scoring: exact retrieval of the dense model, 1 or 0
        if parse_task(str(task)) and task not in flagged and value in (0, 1):
            flagged[task] = {"exact": "ceiling" if value == 1 else "floor", "exact_value": value}
    dense_cells = next((cells(j["metrics"], "before") for j in sweep.ok if cells(j["metrics"], "before")), {})
    for row in rows:
        if row.get("kind") != "accuracy" or row.get("metric") == "probe_items":
            continue
        n = (dense_cells.get(row.get("at")) or {}).get("n")
        if row.get("metric") in ("acc_after", "acc_recovered") and n:  # one cell: one item weighs 1 / its items
            row["resolution"] = 1 / n
        if row.get("metric") in ("acc_after", "acc_recovered") and "exact" in flagged.get(row.get("at"), {}):
            f = flagged[row["at"]]
            row["bound"], row["bound_value"] = f["exact"], f["exact_value"]
        elif row.get("metric") == "probe":
            probe_tasks = [t for t in dense if parse_task(str(t))]
            kinds = {(flagged.get(t) or {}).get("exact") for t in probe_tasks}
            if probe_tasks and len(kinds) == 1 and None not in kinds:
                row["bound"], row["bound_value"] = kinds.pop(), statistics.fmean(dense[t] for t in probe_tasks)
                row["bound_where"] = "every cell"
