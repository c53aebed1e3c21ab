"""The verdict statistics: TOST and CI against hand computations, Holm by hand, decisions by equivalence,
the overlap test and when it cannot reject, and the study rules (primary, Holm, damage, negative control)."""
import json
import math
import random

import numpy as np
import pytest

from prune.stats import compare, holm, min_permutation_p, n_for_difference, n_for_equivalence, overlap_test
from prune.report.verdicts import judge, margin, overlap_row, render

LOG2 = math.log(1.02)


def hand_tost(d, delta):
    """Paired TOST by hand: two one-sided t-tests on the differences d against -delta and +delta."""
    from scipy.stats import t

    n = len(d)
    mean, se = np.mean(d), np.std(d, ddof=1) / math.sqrt(n)
    p_low = t.sf((mean + delta) / se, n - 1)  # H0: mean <= -delta
    p_high = t.cdf((mean - delta) / se, n - 1)  # H0: mean >= +delta
    half = t.ppf(0.95, n - 1) * se
    return max(p_low, p_high), (mean - half, mean + half)


def test_paired_tost_and_90_percent_ci_on_log_ppl_match_a_hand_computation():
    a = {0: 4.056, 1: 4.050, 2: 4.061, 3: 4.049, 4: 4.058, 5: 4.053}
    b = {0: 4.084, 1: 4.081, 2: 4.088, 3: 4.080, 4: 4.087, 5: 4.086}
    c = compare(a, b, paired=True, margin=LOG2, log=True)
    d = [math.log(b[k]) - math.log(a[k]) for k in a]
    p_tost, (lo, hi) = hand_tost(d, LOG2)
    assert c.test == "paired" and c.p_tost == pytest.approx(p_tost, rel=1e-9)
    assert (c.ci_low, c.ci_high) == pytest.approx((lo, hi), rel=1e-9)
    assert c.rel == pytest.approx(math.expm1(np.mean(d)))
    assert c.p_tost < 0.05 and -LOG2 < c.ci_low < c.ci_high < LOG2  # equivalent: the CI inside ±2 %
    # the same numbers, with a margin below the observed +0.7 %: not equivalent, and the CI leaves the margin
    tight = compare(a, b, paired=True, margin=math.log(1.005), log=True)
    assert tight.p_tost > 0.5 and tight.ci_high > math.log(1.005)


def test_welch_tost_matches_a_hand_computation_with_welch_degrees_of_freedom():
    from scipy.stats import t

    a = {0: 0.80, 1: 0.82, 2: 0.79, 3: 0.81}
    b = {10: 0.805, 11: 0.83, 12: 0.80, 13: 0.815, 14: 0.82}
    c = compare(a, b, paired=True, margin=0.05)  # no shared seeds: Welch
    x, y = np.array(list(b.values())), np.array(list(a.values()))
    va, vb = y.var(ddof=1) / len(y), x.var(ddof=1) / len(x)
    se, df = math.sqrt(va + vb), (va + vb) ** 2 / (va**2 / (len(y) - 1) + vb**2 / (len(x) - 1))
    diff = x.mean() - y.mean()
    want = max(t.sf((diff + 0.05) / se, df), t.cdf((diff - 0.05) / se, df))
    assert c.test == "welch" and c.df == pytest.approx(df) and c.p_tost == pytest.approx(want, rel=1e-9)
    assert (c.ci_low, c.ci_high) == pytest.approx((diff - t.ppf(0.95, df) * se, diff + t.ppf(0.95, df) * se))


def test_holm_matches_a_hand_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4 = 0.02, x3 = 0.03, x2 = 0.06, x1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, float("nan"), 0.04])  # a NaN is no test: m = 2
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone


def test_n_for_equivalence_gives_the_power_it_promises():
    """At the n it names, a simulated TOST (true difference 0) passes in about 80 % of draws or more."""
    from scipy.stats import ttest_1samp

    sd, delta = 1.0, 0.8
    n = n_for_equivalence(sd, delta, paired=True)
    rng = np.random.default_rng(0)
    passes = 0
    for _ in range(2000):
        d = rng.normal(0, sd, n)
        p = max(ttest_1samp(d, -delta, alternative="greater").pvalue, ttest_1samp(d, delta, alternative="less").pvalue)
        passes += p < 0.05
    assert 0.78 < passes / 2000 < 0.9
    assert n_for_equivalence(sd, delta, paired=False) > n


def test_n_for_difference_gives_80_percent_power():
    from scipy.stats import ttest_rel

    n = n_for_difference(0.9, 1.0, paired=True)
    rng = np.random.default_rng(2)
    hits = sum(ttest_rel(a + rng.normal(0.9, 1.0, n), a).pvalue < 0.05 for a in (rng.normal(0, 1, n) for _ in range(2000)))
    assert 0.78 < hits / 2000 < 0.88


def verdict(a, b, paired=False, kind="ppl", damage=None, role="primary", **adjusted):
    size, log = margin(kind)
    row = judge("PPL", "seq_len", 128, 512, compare(a, b, paired, size, log), kind, True, damage, "ppl_after", "512")
    row.update(role=role, **adjusted)
    return render(row)


def test_no_difference_only_with_a_passing_equivalence_test_and_its_ci_printed():
    rng = np.random.default_rng(1)
    rows = []
    for trial in range(60):
        n = int(rng.integers(3, 10))
        spread = float(rng.choice([0.001, 0.01, 0.05]))
        shift = float(rng.choice([0.0, 0.005, 0.015, 0.03]))
        a = {s: 4 * math.exp(rng.normal(0, spread)) for s in range(n)}
        b = {s: v * math.exp(shift + rng.normal(0, spread / 2)) for s, v in a.items()}
        rows.append(verdict(a, b, paired=bool(trial % 2)))
    said = [r for r in rows if "no difference" in r["text"]]
    assert said and len(said) < len(rows)
    for r in said:
        assert r["decision"] == "no_difference" and r["p_tost"] < 0.05 and -LOG2 < r["ci_low"] <= r["ci_high"] < LOG2
        assert "90 % CI" in r["text"] and "equivalence (TOST)" in r["text"]
    for r in rows:
        if r["decision"] != "no_difference":
            assert "no difference" not in r["text"]
    # a large p alone (wide CI) is no evidence of no difference
    noisy = verdict({s: 4 + v for s, v in enumerate([0.0, 0.3, -0.3])}, {s: 4 + v for s, v in enumerate([0.2, -0.2, 0.1])})
    assert noisy["p"] > 0.5 and noisy["decision"] == "cannot_tell" and noisy["n_needed"] > 3
    assert "cannot tell at this n" in noisy["text"] and "seeds per arm would show equivalence" in noisy["text"]
    assert noisy["n_needed"] == n_for_equivalence(noisy["sd_used"], LOG2, paired=False)
    # an observed difference beyond the margin: the n that would detect it, not the n for equivalence
    far = verdict({s: 4 + v for s, v in enumerate([0.0, 0.4, -0.4])}, {s: 4.3 + v for s, v in enumerate([0.3, -0.3, 0.1])})
    assert far["decision"] == "cannot_tell" and far["n_for"] == "difference"
    assert far["n_needed"] == n_for_difference(far["test_diff"], far["sd_used"], paired=False)
    assert f"about {far['n_needed']} seeds per arm would detect a difference of the observed size" in far["text"]


def test_differs_and_the_difference_as_a_share_of_the_pruning_damage():
    """Pruning costs 1.1 % (4.0 -> 4.044); the other arm is 0.8 % worse: 73 % of the damage, a large effect,
    though within the ±2 % equivalence margin."""
    a = {s: 4.044 * (1 + 1e-4 * e) for s, e in enumerate([1, -1, 0.5, -0.5, 0.2, -0.2])}
    b = {s: v * 1.008 * (1 + 5e-5 * e) for (s, v), e in zip(a.items(), [1, 0, -1, 0.5, -0.5, 0])}
    row = verdict(a, b, paired=True, damage=(4.0, 4.044))
    share = (np.mean(list(b.values())) - np.mean(list(a.values()))) / 0.044
    assert row["damage"]["share"] == pytest.approx(share) and 0.7 < share < 0.76
    assert row["decision"] == "differs" and row["better"] == 128 and row["negligible"]
    assert f"{100 * share:+.0f} % of the pruning damage" in row["text"] and "large next to what pruning costs" in row["text"]
    assert "within ±2 %" in row["text"]


def test_secondary_lines_decide_on_the_holm_adjusted_p_and_show_both():
    a = {s: 4.0 + 0.01 * e for s, e in enumerate([1, -1, 0.5, -0.5, 0.2, -0.2])}
    b = {s: v * 1.003 + 0.002 * e for (s, v), e in zip(a.items(), [1, -1, 0, 1, -1, 0])}
    raw = verdict(a, b, paired=True)
    assert raw["p"] < 0.05 and raw["decision"] == "differs" and "Holm" not in raw["text"]
    adjusted = verdict(a, b, paired=True, role="secondary", p_adj=0.2, p_tost_adj=0.3)
    assert adjusted["decision"] == "cannot_tell" and f"p={raw['p']:.3g}, Holm-adjusted 0.2" in adjusted["text"]
    assert f"p={raw['p_tost']:.3g}, Holm-adjusted 0.3" in adjusted["text"]
    assert "significant only before the Holm adjustment" in adjusted["text"]


def test_overlap_compares_different_seed_pairs_on_both_sides():
    """One seed = the same calibration text in both arms, so same-seed pairs overlap most. Counting them
    as 'between' (as before) made identical settings look *more* alike across arms than within one."""
    rng = random.Random(0)
    universe = range(200)
    text = {s: set(rng.sample(universe, 60)) for s in range(6)}  # what each seed's text selects

    def jitter(chosen):  # the same setting: a few groups at the margin go either way
        return set(rng.sample(sorted(chosen), 55)) | set(rng.sample(universe, 5))

    arm_a = {s: jitter(v) for s, v in text.items()}
    arm_b = {s: jitter(v) for s, v in text.items()}
    result = overlap_test(arm_a, arm_b)
    assert result["same_seed"] > 0.7 > 0.3 > result["between"]
    assert abs(result["between"] - result["within"]) < 0.05 and result["p"] > 0.2
    assert result["permutations"] == 2**6
    # a setting that really moves the choice: arm c prefers other groups whatever the seed
    arm_c = {s: set(sorted(v)[:30]) | set(range(150, 180)) for s, v in text.items()}
    moved = overlap_test(arm_a, arm_c)
    assert moved["between"] < moved["within"] and moved["p"] < 0.05


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_an_overlap_verdict_is_untestable_where_the_smallest_permutation_p_is_at_least_alpha(n):
    """With n paired seeds the smallest p is 2/2^n: 0.25, 0.125, 0.0625 for n = 3, 4, 5 (untestable, never
    'no evidence'); 0.03125 at n = 6."""
    arm_a = {s: {(0, g) for g in range(30)} | {(1, s)} for s in range(n)}  # (layer, group)
    arm_b = {s: {(0, g) for g in range(40, 70)} | {(2, s)} for s in range(n)}  # wholly different groups
    assert min_permutation_p(arm_a, arm_b) == pytest.approx(2 / 2**n)
    row = render(overlap_row("all jobs", "mlp", "seq_len", 128, 512, arm_a, arm_b))
    if 2 / 2**n >= 0.05:
        assert row["decision"] == "untestable" and "untestable at this n" in row["text"]
        assert "no evidence" not in row["text"] and f"2/2^{n}" in row["text"]
    else:
        assert row["decision"] == "differs" and row["p"] == pytest.approx(2 / 2**n)
    same = render(overlap_row("all jobs", "mlp", "seq_len", 128, 512, arm_a, dict(arm_a)))
    assert same["decision"] == "identical"
    assert min_permutation_p({0: {1}, 1: {2}}, {5: {1}, 6: {2}}) == pytest.approx(2 / 6)  # unpaired: 2 / C(4, 2)


def test_unpaired_overlap_relabels_at_random():
    rng = random.Random(1)
    arm_a = {s: set(rng.sample(range(100), 30)) for s in range(5)}
    arm_b = {s + 10: set(rng.sample(range(50, 150), 30)) for s in range(5)}
    result = overlap_test(arm_a, arm_b, n_perm=500)
    assert math.isnan(result["same_seed"]) and result["permutations"] == 500 and result["p"] < 0.05


def test_rank_agreement_on_the_groups_that_matter_is_not_decided_by_noise_among_zeros():
    import torch

    from prune.eval.ground_truth import spearman, top_spearman, weighted_tau

    gen = torch.Generator().manual_seed(0)
    truth = torch.cat([torch.linspace(1.0, 0.1, 25, dtype=torch.float64), 1e-4 * torch.randn(75, generator=gen, dtype=torch.float64)])
    scores = truth.clone()
    scores[25:] = 0.05 * torch.rand(75, generator=gen, dtype=torch.float64)  # right on the important ones, noise elsewhere
    assert spearman(scores, truth) < 0.6  # the 75 near-zero groups drag the plain Spearman down
    assert top_spearman(truth, scores) == pytest.approx(1.0)
    assert weighted_tau(truth, scores) > spearman(scores, truth) + 0.2
    shuffled = scores.clone()
    shuffled[:25] = scores[:25][torch.randperm(25, generator=gen)]  # wrong on the ones that matter
    assert top_spearman(truth, shuffled) < 0.5 and weighted_tau(truth, shuffled) < weighted_tau(truth, scores) - 0.15


def test_a_difference_equal_at_every_seed_up_to_rounding_is_not_tested_against_rounding_noise():
    """Accuracies over 100 items that differ by exactly 0.09 at every seed (0.47 - 0.38 etc. in floats)
    left a 1e-17 spread, and the t-test on it said p = 1e-31 (the interim SmolLM2 report)."""
    ref = {0: 38 / 100, 1: 0.1 + 0.2 + 0.07, 2: 0.47}
    other = {k: v + 0.09 for k, v in ref.items()}
    d = [other[k] - ref[k] for k in ref]
    assert len(set(d)) > 1  # rounding does leave a spread
    c = compare(ref, other, paired=True, margin=0.01)
    assert math.isnan(c.p) and not c.identical and c.diff == pytest.approx(0.09)
    same = compare(ref, {k: v + 1e-18 for k, v in ref.items()}, paired=True, margin=0.01)
    assert same.identical
    # a real spread, however small against the values, is still tested
    real = compare(ref, {0: 0.47, 1: 0.46, 2: 0.57}, paired=True, margin=0.01)
    assert real.p < 0.05


def test_removed_groups_are_compared_per_band_of_layers_where_only_the_deep_band_moves():
    """The seed note: 128 tokens bias the deep layers, the shallow ones little. A setting that moves only
    the deep third's choice differs there (per-band verdict) and not in the shallow third."""
    from prune.report.comparisons import in_band, layer_bands

    assert layer_bands(30) == [(0, 9), (10, 19), (20, 29)]
    assert layer_bands(32) == [(0, 10), (11, 20), (21, 31)] and layer_bands(8) == []
    rng = random.Random(1)
    groups = [(layer, c) for layer in range(30) for c in range(20)]
    preferred_a, preferred_b = set(rng.sample(groups, 150)), set(rng.sample(groups, 150))

    def draw(preferred):  # one seed's choice: most of the preferred groups, a few others at the margin
        return set(rng.sample(sorted(preferred), 135)) | set(rng.sample(groups, 15))

    arm_a = {s: draw(preferred_a) for s in range(8)}
    arm_b = {s: {g for g in v if g[0] < 20} | in_band(draw(preferred_b), (20, 29)) for s, v in arm_a.items()}
    rows = {band: overlap_row("all", "mlp", "seq_len", 128, 512, {s: in_band(v, band) for s, v in arm_a.items()},
                              {s: in_band(v, band) for s, v in arm_b.items()}, band=band) for band in layer_bands(30)}
    assert rows[(20, 29)]["p"] < 0.05 and rows[(20, 29)]["between"] < rows[(20, 29)]["within"]
    assert rows[(0, 9)]["identical"]  # the shallow third removes the same groups at every seed
    text_deep = render(dict(rows[(20, 29)], role="secondary"))["text"]
    assert "removed mlp groups in layers 20-29, seq_len 128 vs 512" in text_deep


def test_gradient_cv_is_judged_per_band_only_at_equal_tokens_per_batch(tmp_path):
    """The note's "more stable gradients at 512": a CV verdict only where both arms put the same tokens in
    a batch (batch_size = 2048 // seq_len); at 4 x 128 vs 4 x 512 a lower CV is partly just bigger batches."""
    from prune.report.comparisons import verdicts
    from prune.report.conditions import Sweep

    def write(folder, seq_len, batch_size, seed, cv):
        (tmp_path / folder / folder).mkdir(parents=True)
        by_layer = [{"layer": i, "grad_abs_mean_batch_cv": cv * (1.0 + 0.01 * i)} for i in range(30)]
        run = {"seq_len": seq_len, "batch_size": batch_size, "seed": seed, "importance": "taylor_2nd", "model": "m"}
        (tmp_path / folder / folder / "metrics.json").write_text(json.dumps({"status": "ok", "run": run, "by_layer": by_layer}))

    rng = random.Random(0)
    for seed in range(5):
        base = 0.5 + 0.05 * rng.random()
        write("equal", 128, 16, seed, base)  # the same folder twice: both arms in one sweep
        (tmp_path / "equal" / "equal").rename(tmp_path / "equal" / f"s{seed}-128")
        write("equal", 512, 4, seed, base * 0.7 * (1 + 0.01 * rng.random()))
        (tmp_path / "equal" / "equal").rename(tmp_path / "equal" / f"s{seed}-512")
    rows = [r for r in verdicts(Sweep(tmp_path / "equal")) if r["kind"] == "grad_cv"]
    assert [r["at"] for r in rows] == ["L0-9", "L10-19", "L20-29"]
    assert all(r["p"] < 0.05 and r["rel"] == pytest.approx(-0.3, abs=0.02) for r in rows)
    assert "2048 tokens per batch in both" in rows[0]["what"]
    for seed in range(5):  # the same CVs at 4 sequences per batch at both lengths: no CV verdict
        for n, cv in ((128, 0.5), (512, 0.35)):
            write("unequal", n, 4, seed, cv)
            (tmp_path / "unequal" / "unequal").rename(tmp_path / "unequal" / f"s{seed}-{n}")
    assert not [r for r in verdicts(Sweep(tmp_path / "unequal")) if r["kind"] == "grad_cv"]


def test_the_overlap_test_compares_each_pair_of_sets_once_whatever_the_number_of_relabellings(monkeypatch):
    """10 paired seeds: 2^10 relabellings of the same 20 sets need at most C(20, 2) Jaccards (plus the
    observed statistic's), not 190 x 1024 (minutes with thousands of MLP channels per set)."""
    import prune.stats.overlap as overlap

    rng = random.Random(3)
    arm_a = {s: set(rng.sample(range(500), 100)) for s in range(10)}
    arm_b = {s: set(rng.sample(range(500), 100)) for s in range(10)}
    expected = overlap_test(arm_a, arm_b)
    calls = []
    real = overlap.jaccard
    monkeypatch.setattr(overlap, "jaccard", lambda x, y: calls.append(1) or real(x, y))
    result = overlap_test(arm_a, arm_b)
    assert result == expected and result["permutations"] == 1024
    assert 0 < len(calls) <= 190  # every relabelling's pairs, each computed once


def test_a_gradient_cv_line_names_its_own_scale():
    a = {s: 0.05 + 0.001 * s for s in range(5)}
    b = {s: v * (0.9 + 0.01 * (s % 2)) for s, v in a.items()}
    size, log = margin("grad_cv")
    row = render(dict(judge("cv", "seq_len", 128, 512, compare(a, b, True, size, log), "grad_cv", True), role="secondary"))
    assert "CV ratio" in row["text"] and "on log CV" in row["text"] and "PPL" not in row["text"]


def test_an_overlap_of_nothing_removed_says_so():
    empty = {s: set() for s in range(4)}
    row = render(dict(overlap_row("all", "attention", "seq_len", 128, 512, empty, dict(empty)), role="secondary"))
    assert row["decision"] == "identical" and "no such group is removed" in row["text"]
    same = {s: {(0, 1)} for s in range(4)}
    assert "the same groups are removed" in render(dict(overlap_row("all", "mlp", "seq_len", 128, 512, same, dict(same)), role="secondary"))["text"]
