"""The statistics behind every sweep verdict, as pure functions of numbers (no job folders, no plotting).

* ``compare``: two arms of seeds -> difference, p (paired by seed where the design pairs them, else
  Welch), and the **minimal detectable effect** (MDE): the smallest true difference the test finds with
  80 % power at alpha 0.05 for these n and this spread, from the noncentral t distribution;
  ``n_needed`` says how many seeds per arm an effect of a given size would take.
* ``overlap_test``: do two settings remove different sets of groups, beyond what seeds alone do? Mean
  Jaccard between *different-seed* pairs of the two arms against different-seed pairs within each arm
  (like with like), same-seed pairs reported apart, and a permutation test over the arm labels.
"""
from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass

ALPHA, POWER = 0.05, 0.8


def mean_sd(values) -> tuple[float, float, int]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan"), 0
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return statistics.fmean(values), sd, len(values)


def _power(delta: float, se: float, df: float) -> float:
    from scipy.stats import nct, t

    crit = t.ppf(1 - ALPHA / 2, df)
    ncp = delta / se
    power = float(nct.sf(crit, df, ncp) + nct.cdf(-crit, df, ncp))
    if math.isnan(power):  # scipy's noncentral t fails far in the tail at df = 1: the normal approximation
        from scipy.stats import norm

        power = float(norm.sf(crit - ncp) + norm.cdf(-crit - ncp))
    return power


def mde(se: float, df: float) -> float:
    """Smallest |difference| a two-sided t-test with this standard error and df detects with 80 % power."""
    from scipy.optimize import brentq

    if not se > 0 or df < 1:
        return float("nan")
    hi = se
    while _power(hi, se, df) < POWER:
        hi *= 2
    return float(brentq(lambda d: _power(d, se, df) - POWER, 0.0, hi, xtol=se * 1e-6))


def n_needed(effect: float, sd: float, paired: bool, n_max: int = 100_000) -> int | None:
    """Seeds per arm for which the MDE falls to ``effect`` (same spread assumed); None if above n_max."""
    if not (effect > 0 and sd > 0):
        return None
    n = 2
    while n <= n_max:
        se = sd / math.sqrt(n) if paired else sd * math.sqrt(2 / n)
        if mde(se, n - 1 if paired else 2 * n - 2) <= effect:
            return n
        n = n + 1 if n < 64 else int(n * 1.25)
    return None


@dataclass
class Comparison:
    ref_mean: float
    ref_sd: float
    n_ref: int
    other_mean: float
    other_sd: float
    n_other: int
    diff: float  # other - ref
    p: float
    test: str  # "paired" (same seeds, same text) or "welch"
    mde: float  # absolute, in the metric's units
    sd_used: float  # sd of the paired differences, or the pooled sd

    @property
    def rel(self) -> float:
        return self.diff / self.ref_mean if self.ref_mean else float("nan")

    @property
    def mde_rel(self) -> float:
        return self.mde / abs(self.ref_mean) if self.ref_mean else float("nan")


def compare(ref: dict, other: dict, paired: bool) -> Comparison | None:
    """``ref`` / ``other``: seed -> value. Paired (by seed) when ``paired`` and at least two seeds are shared."""
    from scipy.stats import ttest_ind, ttest_rel

    a = [v for v in ref.values() if v is not None and not math.isnan(v)]
    b = [v for v in other.values() if v is not None and not math.isnan(v)]
    if not a or not b:
        return None
    ma, sa, na = mean_sd(a)
    mb, sb, nb = mean_sd(b)
    shared = sorted(k for k in ref.keys() & other.keys() if ref[k] is not None and other[k] is not None)
    if paired and len(shared) >= 2:
        d = [other[k] - ref[k] for k in shared]
        sd = statistics.stdev(d)
        n = len(d)
        p = float(ttest_rel([other[k] for k in shared], [ref[k] for k in shared]).pvalue) if sd > 0 else float("nan")
        return Comparison(ma, sa, na, mb, sb, nb, mb - ma, p, "paired", mde(sd / math.sqrt(n), n - 1), sd)
    if na < 2 or nb < 2:
        return Comparison(ma, sa, na, mb, sb, nb, mb - ma, float("nan"), "welch", float("nan"), float("nan"))
    pooled = math.sqrt(((na - 1) * sa**2 + (nb - 1) * sb**2) / (na + nb - 2))
    p = float(ttest_ind(b, a, equal_var=False).pvalue) if pooled > 0 else float("nan")
    return Comparison(ma, sa, na, mb, sb, nb, mb - ma, p, "welch", mde(pooled * math.sqrt(1 / na + 1 / nb), na + nb - 2), pooled)


# ------------------------------------------------------------------------------------ overlap of sets
def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _mean_pairs(pairs) -> float:
    values = [jaccard(x, y) for x, y in pairs]
    return statistics.fmean(values) if values else float("nan")


def _overlaps(arm_a: dict, arm_b: dict) -> tuple[float, float, float]:
    """(within, between, same-seed) mean Jaccard; within and between use different-seed pairs only."""
    within = [(arm[s], arm[t]) for arm in (arm_a, arm_b) for s, t in itertools.combinations(sorted(arm), 2)]
    between = [(arm_a[s], arm_b[t]) for s in arm_a for t in arm_b if s != t]
    same = [(arm_a[s], arm_b[s]) for s in arm_a.keys() & arm_b.keys()]
    return _mean_pairs(within), _mean_pairs(between), _mean_pairs(same)


def overlap_test(arm_a: dict, arm_b: dict, n_perm: int = 2000, seed: int = 0) -> dict:
    """``arm_a`` / ``arm_b``: seed -> set of removed groups. Is between-arm overlap lower than within-arm?

    Statistic: within - between (different-seed pairs on both sides). Null: the arm label does not matter.
    Where both arms share their seeds (one seed = the same calibration draw), labels are swapped within
    each seed (all 2^n swaps when n <= 12, else ``n_perm`` random ones); otherwise all jobs are relabelled
    at random. p counts the observed labelling too, so it is never 0.
    """
    import random

    within, between, same = _overlaps(arm_a, arm_b)
    observed = within - between
    out = {"within": within, "between": between, "same_seed": same, "p": float("nan"), "permutations": 0}
    if len(arm_a) < 2 or len(arm_b) < 2 or math.isnan(observed):
        return out
    rng = random.Random(seed)
    stats = []
    if set(arm_a) == set(arm_b):
        seeds = sorted(arm_a)
        swaps = itertools.product((False, True), repeat=len(seeds)) if len(seeds) <= 12 else (
            [rng.random() < 0.5 for _ in seeds] for _ in range(n_perm))
        for swap in swaps:
            a = {s: (arm_b if flip else arm_a)[s] for s, flip in zip(seeds, swap)}
            b = {s: (arm_a if flip else arm_b)[s] for s, flip in zip(seeds, swap)}
            w, bt, _ = _overlaps(a, b)
            stats.append(w - bt)
    else:
        jobs = [(("a", s), v) for s, v in arm_a.items()] + [(("b", s), v) for s, v in arm_b.items()]
        for _ in range(n_perm):
            rng.shuffle(jobs)
            a = {k: v for k, v in jobs[: len(arm_a)]}
            b = {k: v for k, v in jobs[len(arm_a):]}
            w, bt, _ = _overlaps(a, b)
            stats.append(w - bt)
    out["p"] = sum(s >= observed - 1e-12 for s in stats) / len(stats)
    out["permutations"] = len(stats)
    return out


def removal_frequencies(arms: dict[str, list[set]]) -> dict[str, dict]:
    """For every group removed in some job: the fraction of each arm's jobs that removed it."""
    groups = set().union(*[s for sets in arms.values() for s in sets]) if arms else set()
    return {g: {arm: sum(g in s for s in sets) / len(sets) for arm, sets in arms.items()} for g in groups}
