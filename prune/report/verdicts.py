"""Verdicts of a sweep: every comparison of two settings, judged against seed noise, in words.

A verdict compares a reference setting (``study.reference``, else the first x value, e.g.
``seq_len=128``) with another, seed by seed, on one metric (statistics: ``prune.stats``), and says one of:

* **differs** (p < 0.05, two-sided; paired by seed where one seed is the same calibration text in both
  arms, else Welch; Holm-adjusted p for secondary comparisons): which side is better, and whether the
  difference still lies within the margin (then the equivalence test passes too);
* **no difference of the margin or more**: only when the equivalence test (TOST, alpha 0.05) passes,
  i.e. the 90 % CI lies inside ±margin (PPL: ±2 % on the log scale, the seed note's lower prediction;
  task accuracy: ±1 point; rank agreement: ±0.05);
* **cannot tell at this n**: neither; the line says how many seeds per arm would show equivalence if
  there were no true difference;
* **identical** (every per-seed difference 0) or **untestable** (no seed noise to judge against).

Every PPL verdict also gives the difference as a share of the pruning damage (PPL after - PPL before in
the reference arm): 0.8 % between arms when pruning costs 1.1 % is a large effect. Every line states n,
means, spread, the 90 % CI, p and the TOST p, so it never says more than its numbers.

``judge`` / ``overlap_row`` compute a verdict's numbers; ``render`` words it once the study has marked it
primary or secondary and adjusted its p (``prune.report.study``).
"""
from __future__ import annotations

import math

from prune.stats import (ALPHA, Comparison, min_permutation_p, n_for_difference, n_for_equivalence, overlap_test,
                         removal_frequencies)

# metric kind -> (scale of the margin, its size, where it comes from)
EFFECTS = {
    "ppl": ("relative", 0.02, "the seed note's lower prediction (2-5 % lower PPL at 512)"),
    "accuracy": ("absolute", 0.01, "the seed note's lower prediction (1-3 points of task accuracy)"),
    "spearman": ("absolute", 0.05, "a rank-correlation change of 0.05"),
    "loglik": ("absolute", 0.05, "0.05 nats per key token (the key about 5 % more or less likely)"),
    "grad_cv": ("relative", 0.10, "a 10 % change of the batch-to-batch CV of mean |grad| (the seed note names no size)"),
}


def margin(kind: str) -> tuple[float, bool]:
    """(margin on the test scale, whether the test runs on the log scale) for a metric kind."""
    scale, size, _ = EFFECTS[kind]
    return (math.log1p(size), True) if scale == "relative" else (size, False)


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _p(v) -> str:
    return "nan" if v is None or math.isnan(v) else f"{v:.3g}"


def judge(what: str, x_key: str, ref, other, c: Comparison | None, kind: str, lower_is_better: bool,
          damage: tuple[float, float] | None = None, metric: str | None = None, at=None) -> dict | None:
    """The numbers of one verdict for ``other`` against ``ref``; ``damage`` = (before, after) of the reference arm."""
    if c is None:
        return None
    scale, size, source = EFFECTS[kind]
    row = {"what": what, "x_key": x_key, "ref": ref, "other": other, "kind": kind, "metric": metric, "at": at,
           "lower_is_better": lower_is_better, "test": c.test, "log": c.log, "p": c.p, "p_tost": c.p_tost,
           "diff": c.raw_diff, "rel": c.rel, "test_diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high,
           "margin": c.margin, "margin_text": f"±{100 * size:.0f} %" if scale == "relative" else f"±{size:g}",
           "margin_source": source, "ref_mean": c.ref_mean, "other_mean": c.other_mean, "ref_sd": c.ref_sd,
           "other_sd": c.other_sd, "n_ref": c.n_ref, "n_other": c.n_other, "sd_used": c.sd_used, "identical": c.identical}
    if not (math.isnan(c.p) or c.identical):  # what a next run would need to decide: equivalence, or the difference
        row["n_for"] = "difference" if abs(c.diff) >= c.margin else "equivalence"
        paired = c.test in ("paired", "items")
        row["n_needed"] = (n_for_difference(c.diff, c.sd_used, paired) if row["n_for"] == "difference"
                           else n_for_equivalence(c.sd_used, c.margin, paired))
    if damage is not None and kind == "ppl":
        before, after = damage[:2]  # (unpruned, reference arm), or (dense recovered the same way, reference arm, "control")
        row["damage"] = {"before": before, "after": after, "share": c.raw_diff / (after - before) if after > before else None,
                         "control": len(damage) > 2}
    return row


def _interval(row: dict) -> str:
    if row["log"]:
        return (f"{'CV' if row['kind'] == 'grad_cv' else 'PPL'} ratio {100 * row['rel']:+.2f} % (90 % CI {100 * math.expm1(row['ci_low']):+.2f} % to "
                f"{100 * math.expm1(row['ci_high']):+.2f} %)")
    return f"difference {row['test_diff']:+.4g} (90 % CI {row['ci_low']:+.4g} to {row['ci_high']:+.4g})"


def _damage(row: dict) -> str:
    d = row.get("damage")
    if not d:
        return ""
    stage = "recovery" if row.get("metric") == "ppl_recovered" else "pruning"
    if d.get("control"):  # against the dense model recovered the same way: the gap recovery does not close
        where = (f"{row['x_key']}={row['ref']}: {_fmt(d['after'])} after recovery vs {_fmt(d['before'])} for the dense model "
                 f"recovered the same way, {100 * (d['after'] / d['before'] - 1):+.2f} %")
        if d["share"] is None:
            return f"; recovery closes the whole gap to the dense-recovered control ({where}): no gap to compare with"
        return (f"; the difference ({row['diff']:+.4g}) is {100 * d['share']:+.0f} % of the gap recovery does not close "
                f"({where})")
    where = f"{row['x_key']}={row['ref']}: {_fmt(d['before'])} before pruning, {_fmt(d['after'])} after {stage}"
    if d["share"] is None:
        return f"; no damage to compare with ({where})"
    share = d["share"]
    size = ("large next to what pruning costs" if abs(share) >= 0.5 else
            "a substantial share of it" if abs(share) >= 0.2 else "small next to it")
    lost = "damage left after recovery" if stage == "recovery" else "pruning damage"
    return (f"; the difference ({row['diff']:+.4g}) is {100 * share:+.0f} % of the {lost} ({where}, "
            f"{100 * (d['after'] / d['before'] - 1):+.2f} %): {size}")


def _adjusted(row: dict, key: str) -> tuple[float, str]:
    """The p that decides (Holm-adjusted for a secondary line) and how it is shown."""
    raw = row.get(key, float("nan"))
    if row.get("role") == "primary" or f"{key}_adj" not in row:
        return raw, f"p={_p(raw)}"
    return row[f"{key}_adj"], f"p={_p(raw)}, Holm-adjusted {_p(row[f'{key}_adj'])}"


def render(row: dict) -> dict:
    """Decide and word a verdict (``decision`` and ``text``) from its numbers and role."""
    if row["kind"] == "overlap":
        return _render_overlap(row)
    x_key, ref, other = row["x_key"], row["ref"], row["other"]
    head = (f"{row['what']}: {x_key}={ref}: {_fmt(row['ref_mean'])} ± {_fmt(row['ref_sd'])} (n={row['n_ref']}) vs "
            f"{x_key}={other}: {_fmt(row['other_mean'])} ± {_fmt(row['other_sd'])} (n={row['n_other']})")
    prefix = "- **PRIMARY** " if row.get("role") == "primary" else "- "
    unit = row.get("unit", "seed")
    if row.get("bound") and (row["identical"] or math.isnan(row["p"])):  # never "identical" on a cell that cannot move
        row["decision"] = f"at_{row['bound']}"
        row["text"] = (f"{prefix}{head}; difference {row['diff']:+.4g} — uninformative: the dense model is at "
                       f"{row['bound']} on {row.get('bound_where', 'this cell')} ({_fmt(row.get('bound_value'))}), so "
                       + ("only a loss could show and none did at any seed" if row["bound"] == "ceiling"
                          else "no loss can show here") + "; see the probe's log-likelihood lines.")
        return row
    if row["identical"] or math.isnan(row["p"]):
        row["decision"] = "identical" if row["identical"] else "untestable"
        if row["identical"]:
            judged = ("identical on every item (paired differences all zero)" if row["test"] == "items"
                      else f"identical at every {unit} (paired differences all zero)" if row["test"] == "paired"
                      else "every seed gives the same value in both arms")
        elif min(row["n_ref"], row["n_other"]) < 2:
            judged = "no seed repeats: cannot be judged against noise"
        elif row["test"] == "paired":
            judged = "the same difference at every seed (no spread of the paired differences to test against)"
        else:
            judged = "every seed gives the same value: no seed noise to judge against"
        row["text"] = f"{prefix}{head}; difference {row['diff']:+.4g} ({100 * row['rel']:+.2f} %){_damage(row)} — {judged}."
        return row
    p, p_text = _adjusted(row, "p")
    t, t_text = _adjusted(row, "p_tost")
    test = {"paired": f"paired by {unit}", "items": "paired t-test over items"}.get(row["test"], "Welch")
    stat = (f"{_interval(row)}; {test}{(' on log CV' if row['kind'] == 'grad_cv' else ' on log PPL') if row['log'] else ''}: {p_text}; equivalence (TOST) "
            f"against {row['margin_text']}: {t_text}")
    m = row["margin_text"]
    if p < ALPHA:
        better = (row["test_diff"] < 0) == row["lower_is_better"]
        row["decision"], row["better"] = "differs", other if better else ref
        noise = "item-to-item noise" if row["test"] == "items" else "seed noise"
        judged = f"differs beyond {noise}: {x_key}={row['better']} is better"
        if t < ALPHA:
            row["negligible"] = True
            judged += f", but within {m} (the equivalence test passes too)"
    elif t < ALPHA:
        row["decision"] = "no_difference"
        judged = f"no difference of {m.lstrip('±')} or more: equivalent within {m} (90 % CI inside the margin)"
    else:
        row["decision"] = "cannot_tell"
        n = row.get("n_needed")
        unit = "items (at these seeds)" if row["test"] == "items" else f"{unit}s per arm"
        judged = "cannot tell at this n: "
        if row["p"] < ALPHA:
            judged += "significant only before the Holm adjustment, and "
        judged += f"the 90 % CI reaches beyond {m}; "
        if row.get("n_for") == "difference":
            judged += (f"about {n} {unit} would detect a difference of the observed size" if n
                       else "no feasible n would detect a difference of the observed size at this spread")
        else:
            judged += (f"about {n} {unit} would show equivalence if there were no true difference" if n
                       else "no feasible n would show equivalence at this spread")
    if row.get("resolution") is not None and row["resolution"] >= row["margin"]:
        judged += f"; one item weighs {row['resolution']:.3g}, not below the margin {m}: too few items for an effect that small"
    elif row.get("bound"):
        judged += f"; the dense model is at {row['bound']} on this cell, so only a loss can show"
    row["text"] = f"{prefix}{head}; {stat}{_damage(row)} — {judged}."
    return row


def overlap_row(label: str, block: str, x_key: str, ref, other, arm_ref: dict, arm_other: dict,
                band: tuple[int, int] | None = None) -> dict | None:
    """The numbers of: do the two settings remove different groups beyond seed noise? Names the groups
    that differ most. ``band``: the sets hold only the groups of layers ``band[0]..band[1]``."""
    if not arm_ref or not arm_other:
        return None
    result = overlap_test(arm_ref, arm_other)
    freq = removal_frequencies({"ref": list(arm_ref.values()), "other": list(arm_other.values())})
    differing = sorted(freq.items(), key=lambda kv: (-abs(kv[1]["ref"] - kv[1]["other"]), kv[0]))
    named = [f"L{g[0]}{'G' if block == 'attention' else 'C'}{g[1]} ({100 * f['ref']:.0f} % vs {100 * f['other']:.0f} %)"
             for g, f in differing[:6] if abs(f["ref"] - f["other"]) >= 0.5]
    shared = arm_ref.keys() & arm_other.keys()
    identical = (all(arm_ref[s] == arm_other[s] for s in shared) if shared
                 else len({frozenset(v) for v in [*arm_ref.values(), *arm_other.values()]}) == 1)
    where = "" if band is None else f" in layers {band[0]}-{band[1]}"
    return {"what": f"[{label}] removed {block} groups{where}", "kind": "overlap", "block": block, "band": where, "x_key": x_key, "ref": ref,
            "other": other, **result, "min_p": min_permutation_p(arm_ref, arm_other), "identical": identical,
            "none_removed": not any([*arm_ref.values(), *arm_other.values()]),
            "n_ref": len(arm_ref), "n_other": len(arm_other), "paired": set(arm_ref) == set(arm_other),
            "groups_differing": named}


def testable(row: dict) -> bool:
    """Whether the row's difference test can reject at all (it then joins the Holm family)."""
    if row["kind"] == "overlap":
        return not (row["identical"] or math.isnan(row["p"]) or row["min_p"] >= ALPHA)
    return not (row["identical"] or math.isnan(row["p"]))


def _render_overlap(row: dict) -> dict:
    x_key, ref, other = row["x_key"], row["ref"], row["other"]
    prefix = "- **PRIMARY** " if row.get("role") == "primary" else "- "
    head = (f"{prefix}{row['what'][:row['what'].index(']') + 1]} removed {row['block']} groups{row.get('band', '')}, {x_key} {ref} vs {other}: "
            f"Jaccard {row['between']:.2f} between the settings vs {row['within']:.2f} within a setting (different "
            "seeds on both sides)")
    if not math.isnan(row["same_seed"]):
        head += f"; same seed in both: {row['same_seed']:.2f}"
    if row["identical"]:
        row["decision"] = "identical"
        row["text"] = head + (" — no such group is removed at any seed in either setting." if row.get("none_removed")
                              else " — the same groups are removed at every seed in both settings.")
        return row
    if math.isnan(row["p"]):
        row["decision"] = "untestable"
        row["text"] = head + " — too few seeds for a permutation test."
        return row
    perm = f"permutation p={row['p']:.3g} ({row['permutations']} relabellings)"
    if row["min_p"] >= ALPHA:
        row["decision"] = "untestable"
        n = f"{row['n_ref']} paired seeds, 2/2^{row['n_ref']}" if row["paired"] else f"{row['n_ref']} and {row['n_other']} seeds,"
        row["text"] = (f"{head}; {perm} — untestable at this n: with {n} the smallest p a permutation test can give "
                       f"is {row['min_p']:.3g} >= {ALPHA}, so no data could show a difference.")
    else:
        p, p_text = _adjusted(row, "p")
        perm = f"permutation {p_text} ({row['permutations']} relabellings; smallest possible {row['min_p']:.3g})"
        row["decision"] = "differs" if p < ALPHA else "no_evidence"
        judged = (f"{x_key} changes which groups are removed beyond seed noise" if p < ALPHA
                  else f"no evidence that {x_key} changes the decisions beyond seed noise"
                  + (" after the Holm adjustment (significant before it)" if row["p"] < ALPHA else "")
                  + " (this is not a test of equivalence)")
        row["text"] = f"{head}; {perm} — {judged}."
    if row["groups_differing"]:
        row["text"] += f" Removed most differently ({x_key}={ref} vs {other}, share of seeds): {', '.join(row['groups_differing'])}."
    return row
