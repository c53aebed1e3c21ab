"""Two arms of seeds compared on one metric: a difference test and an equivalence test.

``compare(ref, other, paired, margin, log)`` gives

* the two-sided p of "no difference": paired t-test on the per-seed differences where the design pairs
  seeds (one seed = the same calibration text in both arms), else Welch's t-test;
* the **90 % confidence interval** of the difference and the **equivalence test** (two one-sided tests,
  TOST, at alpha = 0.05) against ``±margin``: H0 "|difference| >= margin" is rejected, and the arms are
  called equivalent, when both one-sided tests reject, which is exactly when the 90 % CI lies inside
  ``±margin``. Equivalence, not a post-hoc power rule, is what licenses "no difference of X %";
* ``n_for_equivalence``: seeds per arm at which the TOST would pass with 80 % probability if the true
  difference were 0, at the observed spread (the usual normal-theory approximation with t quantiles);
  ``n_for_difference``: seeds per arm at which a difference of the observed size would be found with
  80 % probability. Both only say what a next run would need; no verdict rests on them.

All t-tests, intervals and one-sided tests are scipy's (``ttest_rel`` / ``ttest_ind``); TOST shifts one
arm by the margin and asks scipy for the one-sided p.

**Perplexity is compared on the log scale** (``log=True``). log PPL is the mean next-token NLL, the
quantity the model is trained and evaluated on, and a difference of log PPL is the log of the PPL ratio
(per seed where paired, of the geometric means for Welch). A relative margin of X % therefore becomes the
fixed margin ``log(1 + X)`` on that scale: equivalence means the ratio other / reference lies within
``[1 / (1 + X), 1 + X]`` (for 2 %: -1.96 % to +2 %). The margin is known before the data; the
alternative, "X % of the reference arm's mean", would be an estimate with its own noise that the test
ignores. Seed noise of PPL is roughly multiplicative, which the log makes additive; at the spreads of
these studies (below 1 %) both scales give nearly the same p. Ratios are printed as percentages
(``exp(d) - 1``). Accuracy and rank agreement are compared on their own scale with absolute margins.
"""
from __future__ import annotations

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


@dataclass
class Comparison:
    ref_mean: float  # arithmetic means and sds on the metric's own scale (for display)
    ref_sd: float
    n_ref: int
    other_mean: float
    other_sd: float
    n_other: int
    diff: float  # other - ref on the test scale (log: the log of the PPL ratio)
    p: float  # two-sided, H0: no difference
    test: str  # "paired" (same seeds, same text) or "welch"
    log: bool  # tested on the log scale
    margin: float  # equivalence margin on the test scale
    p_tost: float  # max of the two one-sided p values; < alpha: equivalent within ±margin
    ci_low: float  # 90 % confidence interval of diff (test scale)
    ci_high: float
    df: float
    sd_used: float  # sd of the paired differences, or the pooled sd (test scale)
    identical: bool  # every value the same in both arms (paired: every per-seed difference is 0)

    def shown(self, value: float) -> float:
        """A test-scale value as a relative change (log scale) or as is."""
        return math.expm1(value) if self.log else value

    @property
    def rel(self) -> float:
        """Relative difference: the ratio - 1 on the log scale, else diff / reference mean."""
        if self.log:
            return math.expm1(self.diff)
        return self.diff / self.ref_mean if self.ref_mean else float("nan")

    @property
    def raw_diff(self) -> float:
        return self.other_mean - self.ref_mean


def _clean(arm: dict, log: bool) -> dict:
    return {k: v for k, v in arm.items() if v is not None and not math.isnan(v) and (v > 0 or not log)}


def _noise_floor(values) -> float:
    """Spread below this is floating-point rounding, not seed noise: accuracies of 100 items that differ by
    exactly 0.09 at every seed give paired differences 0.09 +- 1e-17, and a t-test on that spread would
    report p = 1e-31 (stop 19's interim SmolLM2 report). Relative to the values' scale."""
    return 1e-9 * max([1.0] + [abs(v) for v in values])


def compare(ref: dict, other: dict, paired: bool, margin: float, log: bool = False) -> Comparison | None:
    """``ref`` / ``other``: seed -> value. Paired (by seed) when ``paired`` and at least two seeds are shared."""
    from scipy.stats import ttest_ind, ttest_rel

    ref, other = _clean(ref, log), _clean(other, log)
    if not ref or not other:
        return None
    f = math.log if log else float
    ma, sa, na = mean_sd(list(ref.values()))
    mb, sb, nb = mean_sd(list(other.values()))
    shared = sorted(ref.keys() & other.keys())
    nan = float("nan")
    if paired and len(shared) >= 2:
        x, y = [f(other[k]) for k in shared], [f(ref[k]) for k in shared]
        d = [a - b for a, b in zip(x, y)]
        sd, diff, df = statistics.stdev(d), statistics.fmean(d), len(d) - 1
        floor = _noise_floor(x + y)
        identical = all(abs(v) <= floor for v in d)
        p = p_tost = lo = hi = nan
        if sd > floor:
            res = ttest_rel(x, y)
            p, (lo, hi) = float(res.pvalue), res.confidence_interval(1 - 2 * ALPHA)
            above = ttest_rel(x, [v - margin for v in y], alternative="greater").pvalue  # H0: diff <= -margin
            below = ttest_rel(x, [v + margin for v in y], alternative="less").pvalue  # H0: diff >= +margin
            p_tost = float(max(above, below))
        return Comparison(ma, sa, na, mb, sb, nb, diff, p, "paired", log, margin, p_tost, float(lo), float(hi), df, sd, identical)
    x, y = [f(v) for v in other.values()], [f(v) for v in ref.values()]
    diff = statistics.fmean(x) - statistics.fmean(y)
    identical = max(x + y) - min(x + y) <= _noise_floor(x + y)
    if na < 2 or nb < 2:
        return Comparison(ma, sa, na, mb, sb, nb, diff, nan, "welch", log, margin, nan, nan, nan, nan, nan, identical)
    pooled = math.sqrt(((na - 1) * statistics.variance(y) + (nb - 1) * statistics.variance(x)) / (na + nb - 2))
    p = p_tost = lo = hi = df = nan
    if pooled > _noise_floor(x + y):
        res = ttest_ind(x, y, equal_var=False)
        p, df, (lo, hi) = float(res.pvalue), float(res.df), res.confidence_interval(1 - 2 * ALPHA)
        above = ttest_ind(x, [v - margin for v in y], equal_var=False, alternative="greater").pvalue
        below = ttest_ind(x, [v + margin for v in y], equal_var=False, alternative="less").pvalue
        p_tost = float(max(above, below))
    return Comparison(ma, sa, na, mb, sb, nb, diff, p, "welch", log, margin, p_tost, float(lo), float(hi), df, pooled, identical)


def _smallest_n(effect: float, sd: float, paired: bool, quantiles, n_max: int) -> int | None:
    """Smallest n per arm with ``effect >= (sum of the t quantiles at df) * se(n)``; None above n_max."""
    if not (effect > 0 and sd > 0):
        return None
    n = 2
    while n <= n_max:
        se, df = (sd / math.sqrt(n), n - 1) if paired else (sd * math.sqrt(2 / n), 2 * n - 2)
        if effect >= sum(quantiles(df)) * se:
            return n
        n = n + 1 if n < 64 else int(n * 1.25)
    return None


def n_for_equivalence(sd: float, margin: float, paired: bool, n_max: int = 100_000) -> int | None:
    """Seeds per arm for which the TOST against ±margin passes with 80 % probability when the true
    difference is 0 and the spread is ``sd``: the smallest n with ``margin >= (t_{1-alpha} + t_{1-beta/2}) se``,
    ``se = sd / sqrt(n)`` (paired) or ``sd sqrt(2 / n)`` (two arms). None above ``n_max``."""
    from scipy.stats import t

    return _smallest_n(margin, sd, paired, lambda df: (t.ppf(1 - ALPHA, df), t.ppf(1 - (1 - POWER) / 2, df)), n_max)


def n_for_difference(effect: float, sd: float, paired: bool, n_max: int = 100_000) -> int | None:
    """Seeds per arm for which the two-sided t-test finds a true difference of ``effect`` with 80 %
    probability at spread ``sd`` (for planning the next run only; no verdict rests on it)."""
    from scipy.stats import t

    return _smallest_n(abs(effect), sd, paired, lambda df: (t.ppf(1 - ALPHA / 2, df), t.ppf(POWER, df)), n_max)
