"""Detection rates of a positive control: how often the instruments see a planted length effect.

A control testbed (``testbed=control`` wired, ``testbed=graded`` trained) has one known mechanism group
(``testbed.training.dedicated_layer`` / ``dedicated_group``) that only windows longer than 128 tokens can
use. For each criterion and strength (every other setting that varies, e.g. the graded control's
``testbed.corpus.num_attributes`` or the pruning ratio) and each seed, the 128 and 512 jobs of that seed
(the same calibration text under ``budget=tokens``) form one pair, and the section says:

* **decisions**: the share of seeds whose 128 job removes the group, whose 512 job removes it, and whose
  512 job keeps what its 128 job removes (the detection);
* **PPL**: per seed, d = log PPL(128 arm) - log PPL(512 arm) at the longest eval length (> 0: 512 is
  better); the mean as a percentage, the share of seeds with d > 0, the paired t-test over all seeds, and
  the detection rate of that verdict: the share of all ``k``-seed subsets (``k`` = ``SUBSET_SEEDS``, the
  committed studies' n, or n - 1 where fewer seeds ran) whose paired t-test says 512 is better at
  p < 0.05: how often a study of k seeds would see it.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

from prune.report.conditions import removed_sets
from prune.report.jobs import setting

SHORT, LONG = 128, 512
SUBSET_SEEDS = 6  # the seeds of a committed study
ALPHA = 0.05
HEADING = "## Detection rates of the planted effect"  # also how experiments/findings.py finds the table


def mechanism(sweep_dir: Path, jobs: list[dict]) -> tuple[int, int] | None:
    """The control's mechanism group (layer, group) from the first job's config; None on other testbeds."""
    import yaml

    for job in jobs:
        path = Path(sweep_dir) / job["folder"] / ".hydra" / "config.yaml"
        if path.exists():
            training = (((yaml.safe_load(path.read_text()) or {}).get("testbed") or {}).get("training") or {})
            layer = training.get("dedicated_layer")
            return None if layer is None else (int(layer), int(training.get("dedicated_group", 0)))
    return None


def records(sweep) -> tuple[list[dict], tuple[int, int] | None]:
    """One record per ok job: criterion, strength (the other varying settings), seq_len, seed, whether the
    mechanism group was removed, and PPL after pruning at the longest eval length."""
    group = mechanism(sweep.dir, sweep.ok)
    if group is None:
        return [], None
    other = [k for k in sweep.series_keys if k != "importance"]
    out = []
    for job in sweep.ok:
        ppl = job["metrics"].get("ppl_after") or {}
        if not ppl or not job.get("plan"):
            continue
        longest = max(ppl, key=int)
        out.append({"criterion": setting(job, "importance"), "seq_len": int(setting(job, "seq_len")),
                    "seed": setting(job, "seed"), "strength": ", ".join(f"{k}={setting(job, k)}" for k in other) or "-",
                    "removed": group in removed_sets(job["plan"])["attention"], "ppl": ppl[longest], "at": int(longest)})
    return out, group


def _ttest_greater(d: list[float]) -> float:
    """Two-sided paired t-test p of the differences; nan where undefined (n < 2 or no spread)."""
    from scipy import stats

    if len(d) < 2 or max(d) == min(d):
        return float("nan")
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def subset_rate(d: list[float], k: int, alpha: float = ALPHA) -> float | None:
    """Share of the k-seed subsets of ``d`` whose paired test says 512 is better (mean > 0, p < alpha)."""
    if k < 2 or k > len(d):
        return None
    hits = total = 0
    for subset in itertools.combinations(d, k):
        p = _ttest_greater(list(subset))
        hits += int(sum(subset) > 0 and p < alpha)
        total += 1
    return hits / total


def detection_rows(recs: list[dict], subset_seeds: int = SUBSET_SEEDS) -> list[dict]:
    """The detection table (see the module docstring) from per-job records; pairs by (criterion, strength, seed)."""
    pairs: dict[tuple, dict] = {}
    for r in recs:
        if r["seq_len"] in (SHORT, LONG):
            pairs.setdefault((r["criterion"], r["strength"]), {}).setdefault(r["seed"], {})[r["seq_len"]] = r
    rows = []
    for (criterion, strength), by_seed in sorted(pairs.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        both = [(s[SHORT], s[LONG]) for _, s in sorted(by_seed.items(), key=lambda kv: str(kv[0])) if SHORT in s and LONG in s]
        if not both:
            continue
        n = len(both)
        d = [math.log(a["ppl"]) - math.log(b["ppl"]) for a, b in both]
        k = min(subset_seeds, n - 1) if n <= subset_seeds else subset_seeds
        p = _ttest_greater(d)
        rows.append({
            "criterion": criterion, "strength": strength, "n": n, "at": both[0][1]["at"],
            "removed_short": sum(a["removed"] for a, _ in both) / n,
            "removed_long": sum(b["removed"] for _, b in both) / n,
            "decision_rate": sum(a["removed"] and not b["removed"] for a, b in both) / n,
            "ppl_gain": math.exp(sum(d) / n) - 1, "seeds_better": sum(x > 0 for x in d) / n,
            "p": p, "significant": bool(sum(d) > 0 and p < ALPHA), "k": k, "ppl_rate": subset_rate(d, k),
        })
    return rows


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def section(sweep) -> str:
    """The report's detection section (empty where the sweep has no control mechanism or no 128/512 pairs)."""
    recs, group = records(sweep)
    rows = detection_rows(recs)
    if not rows:
        return ""
    at = rows[0]["at"]
    lines = ["", HEADING, "",
             f"The mechanism is KV group L{group[0]}G{group[1]}, useful only beyond {SHORT} tokens. Per criterion and "
             f"strength, the {SHORT} and {LONG} jobs of one seed are a pair: the share of seeds whose {SHORT} job removes "
             f"the group, whose {LONG} job removes it, and whose {LONG} job keeps what its {SHORT} job removes "
             f"(detected); then PPL at {at} after pruning: mean gain of the {LONG} arm, share of seeds where it is "
             f"better, the paired t-test over all seeds, and the share of k-seed subsets whose paired test says "
             f"{LONG} is better at p < {ALPHA} (how often a k-seed study would see it).", "",
             f"| criterion | strength | n | removed at {SHORT} | removed at {LONG} | detected (decisions) | "
             f"gain of {LONG} at {at} | seeds {LONG} better | p (all seeds) | detected (PPL, k seeds) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = "-" if math.isnan(r["p"]) else f"{r['p']:.2g}"
        lines.append(f"| {r['criterion']} | {r['strength']} | {r['n']} | {_pct(r['removed_short'])} | {_pct(r['removed_long'])} | "
                     f"{_pct(r['decision_rate'])} | {100 * r['ppl_gain']:+.2f} % | {_pct(r['seeds_better'])} | {p} | "
                     f"{_pct(r['ppl_rate'])} (k={r['k']}) |")
    return "\n".join(lines) + "\n"
