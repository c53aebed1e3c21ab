"""Verdicts of a sweep: every comparison of two settings, judged against seed noise with its power stated.

A verdict compares a reference setting (the first x value, e.g. ``seq_len=128``) with another, seed by
seed, on one metric, and says one of:

* **differs** (p < 0.05; paired by seed where one seed is the same calibration text in both arms, else
  Welch): which side is better, by how much;
* **no difference of the size in question**: not significant, and the minimal detectable effect (MDE,
  80 % power) is at most the effect in question (``EFFECTS``: for perplexity the seed note's lower
  prediction, 2 %), so such an effect would have been seen;
* **cannot tell at this n**: not significant, but the MDE is larger than the effect in question; the
  line says how many seeds per arm it would take.

Every line states n, means, spread, p and the MDE, so it never says more than its numbers.
"""
from __future__ import annotations

import math

from prune.stats import Comparison, n_needed, overlap_test, removal_frequencies

# metric kind -> (scale of the effect in question, its size, where it comes from)
EFFECTS = {
    "ppl": ("relative", 0.02, "the seed note's lower prediction (2-5 % lower PPL at 512)"),
    "accuracy": ("absolute", 0.01, "the seed note's lower prediction (1-3 points of task accuracy)"),
    "spearman": ("absolute", 0.05, "a rank-correlation change of 0.05"),
}


def _fmt(v: float) -> str:
    return "nan" if v is None or math.isnan(v) else f"{v:.4g}"


def judge(what: str, x_key: str, ref, other, c: Comparison | None, kind: str, lower_is_better: bool) -> dict | None:
    """One verdict (a dict with ``text`` and the numbers behind it) for ``other`` against ``ref``."""
    if c is None:
        return None
    scale, size, source = EFFECTS[kind]
    effect = size * abs(c.ref_mean) if scale == "relative" else size
    effect_text = f"{100 * size:.0f} %" if scale == "relative" else f"{size:g}"
    mde_text = f"{_fmt(c.mde)}" + (f" ({100 * c.mde_rel:.2f} %)" if scale == "relative" and not math.isnan(c.mde_rel) else "")
    numbers = (f"{x_key}={ref}: {_fmt(c.ref_mean)} ± {_fmt(c.ref_sd)} (n={c.n_ref}) vs {x_key}={other}: "
               f"{_fmt(c.other_mean)} ± {_fmt(c.other_sd)} (n={c.n_other}); difference {c.diff:+.4g} "
               f"({100 * c.rel:+.2f} %)")
    row = {"what": what, "x_key": x_key, "ref": ref, "other": other, "kind": kind, "test": c.test, "p": c.p,
           "diff": c.diff, "rel": c.rel, "ref_mean": c.ref_mean, "other_mean": c.other_mean, "ref_sd": c.ref_sd,
           "other_sd": c.other_sd, "n_ref": c.n_ref, "n_other": c.n_other, "mde": c.mde, "mde_rel": c.mde_rel,
           "effect": effect, "effect_source": source}
    if math.isnan(c.p):
        row["decision"] = "untestable"
        if min(c.n_ref, c.n_other) < 2:
            judged = "no seed repeats: cannot be judged against noise"
        elif c.test == "paired" and c.diff == 0:
            judged = "identical at every seed (paired differences all zero)"
        elif c.test == "paired":
            judged = "the same difference at every seed (no spread of the paired differences to test against)"
        else:
            judged = "every seed gives the same value: no seed noise to judge against"
        row["text"] = f"- {what}: {numbers} — {judged}."
        return row
    stat = f"{'paired by seed' if c.test == 'paired' else 'Welch'} p={c.p:.3g}, MDE {mde_text}"
    if c.p < 0.05:
        better = (c.diff < 0) == lower_is_better
        row["decision"] = "differs"
        row["better"] = other if better else ref
        judged = f"differs beyond seed noise: {x_key}={row['better']} is better"
        if abs(c.diff) < effect:
            row["negligible"] = True
            judged += f", by less than the effect in question ({effect_text})"
    elif c.mde <= effect:
        row["decision"] = "no_difference"
        judged = f"no difference of {effect_text} or more (would be detected at this n)"
    else:
        row["decision"] = "cannot_tell"
        n = n_needed(effect, c.sd_used, c.test == "paired")
        row["n_needed"] = n
        judged = (f"cannot tell at this n: the MDE exceeds the effect in question ({effect_text}); "
                  + (f"about {n} seeds per arm would detect it" if n else "no feasible n would detect it"))
    row["text"] = f"- {what}: {numbers}; {stat} — {judged}."
    return row


def overlap_verdict(label: str, block: str, x_key: str, ref, other, arm_ref: dict, arm_other: dict) -> dict | None:
    """Do the two settings remove different groups beyond seed noise? Names the groups that differ most."""
    if not arm_ref or not arm_other:
        return None
    result = overlap_test(arm_ref, arm_other)
    freq = removal_frequencies({"ref": list(arm_ref.values()), "other": list(arm_other.values())})
    differing = sorted(freq.items(), key=lambda kv: (-abs(kv[1]["ref"] - kv[1]["other"]), kv[0]))
    named = [f"L{g[0]}{'G' if block == 'attention' else 'C'}{g[1]} ({100 * f['ref']:.0f} % vs {100 * f['other']:.0f} %)"
             for g, f in differing[:6] if abs(f["ref"] - f["other"]) >= 0.5]
    row = {"what": f"[{label}] removed {block} groups", "kind": "overlap", "block": block, "ref": ref, "other": other,
           **result, "groups_differing": named}
    head = (f"- [{label}] removed {block} groups, {x_key} {ref} vs {other}: Jaccard {result['between']:.2f} between "
            f"the settings vs {result['within']:.2f} within a setting (different seeds on both sides)")
    if not math.isnan(result["same_seed"]):
        head += f"; same seed in both: {result['same_seed']:.2f}"
    if math.isnan(result["p"]):
        row["decision"] = "untestable"
        row["text"] = head + " — too few seeds for a permutation test."
        return row
    row["decision"] = "differs" if result["p"] < 0.05 else "no_difference"
    judged = (f"{x_key} changes which groups are removed beyond seed noise" if result["p"] < 0.05
              else f"no evidence that {x_key} changes the decisions beyond seed noise")
    row["text"] = f"{head}; permutation p={result['p']:.3g} ({result['permutations']} relabellings) — {judged}."
    if named:
        row["text"] += f" Removed most differently ({x_key}={ref} vs {other}, share of seeds): {', '.join(named)}."
    return row
