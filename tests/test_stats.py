"""The verdict statistics: MDE and power by simulation, paired vs Welch, decisions, unbiased overlap test."""
import math
import random

import numpy as np
import pytest

from prune.stats import compare, mde, n_needed, overlap_test
from prune.verdicts import judge


def simulated_power(delta, sd, n, paired, trials=4000, seed=0):
    from scipy.stats import ttest_ind, ttest_rel

    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        a = rng.normal(0, sd, n)
        if paired:
            b = a + rng.normal(delta, sd, n)  # differences have sd `sd`
            hits += ttest_rel(b, a).pvalue < 0.05
        else:
            b = rng.normal(delta, sd, n)
            hits += ttest_ind(b, a).pvalue < 0.05
    return hits / trials


@pytest.mark.parametrize("paired", [True, False])
def test_mde_is_the_effect_found_with_80_percent_power(paired):
    sd, n = 1.0, 6
    se = sd / math.sqrt(n) if paired else sd * math.sqrt(2 / n)
    effect = mde(se, n - 1 if paired else 2 * n - 2)
    assert simulated_power(effect, sd, n, paired) == pytest.approx(0.8, abs=0.03)
    assert simulated_power(effect / 2, sd, n, paired) < 0.45
    # the n it would take for half that effect brings the MDE down to it
    n2 = n_needed(effect / 2, sd, paired)
    se2 = sd / math.sqrt(n2) if paired else sd * math.sqrt(2 / n2)
    assert mde(se2, n2 - 1 if paired else 2 * n2 - 2) <= effect / 2 < mde(se2 * math.sqrt(n2 / (n2 - 1)), n2 - 2 if paired else 2 * n2 - 4)


def test_compare_pairs_by_seed_only_when_asked_and_matches_scipy():
    from scipy.stats import ttest_ind, ttest_rel

    a = {0: 3.90, 1: 3.95, 2: 3.85, 3: 3.99}
    b = {0: 3.92, 1: 3.96, 2: 3.88, 3: 4.02}  # a constant +0.02 shift on a large seed spread
    paired, welch = compare(a, b, paired=True), compare(a, b, paired=False)
    assert paired.test == "paired" and welch.test == "welch"
    assert paired.p == pytest.approx(ttest_rel(list(b.values()), list(a.values())).pvalue)
    assert welch.p == pytest.approx(ttest_ind(list(b.values()), list(a.values()), equal_var=False).pvalue)
    assert paired.p < 0.05 < welch.p and paired.mde < welch.mde
    assert compare(a, {0: 1.0}, paired=True).test == "welch"  # one shared seed cannot pair


def test_verdicts_say_differs_no_difference_or_cannot_tell_by_power():
    rng = np.random.default_rng(1)
    ref = {s: 10 + v for s, v in enumerate(rng.normal(0, 0.01, 12))}
    worse = {s: v * 1.05 for s, v in ref.items()}
    same = {s: 10 + v for s, v in enumerate(rng.normal(0, 0.01, 12))}
    noisy_a = {s: 10 + v for s, v in enumerate(rng.normal(0, 2.0, 3))}
    noisy_b = {s: 10 + v for s, v in enumerate(rng.normal(0, 2.0, 3))}

    def verdict(a, b):
        return judge("PPL", "seq_len", 128, 512, compare(a, b, paired=False), "ppl", lower_is_better=True)

    differs = verdict(ref, worse)
    assert differs["decision"] == "differs" and differs["better"] == 128 and "seq_len=128 is better" in differs["text"]
    assert "less than the effect in question" not in differs["text"]
    slightly = verdict(ref, {s: v * 1.005 for s, v in ref.items()})  # detected, but 0.5 % < 2 %
    assert slightly["decision"] == "differs" and slightly["negligible"] and "less than the effect in question (2 %)" in slightly["text"]
    tight = verdict(ref, same)
    assert tight["decision"] == "no_difference" and tight["mde_rel"] < 0.02 and "MDE" in tight["text"]
    loose = verdict(noisy_a, noisy_b)
    assert loose["decision"] == "cannot_tell" and loose["n_needed"] > 3 and "cannot tell at this n" in loose["text"]
    flat = verdict({0: 3.9, 1: 3.9}, {0: 3.91, 1: 3.91})
    assert flat["decision"] == "untestable" and "no seed noise" in flat["text"] and "differs" not in flat["text"]


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


def test_unpaired_overlap_relabels_at_random():
    rng = random.Random(1)
    arm_a = {s: set(rng.sample(range(100), 30)) for s in range(5)}
    arm_b = {s + 10: set(rng.sample(range(50, 150), 30)) for s in range(5)}
    result = overlap_test(arm_a, arm_b, n_perm=500)
    assert math.isnan(result["same_seed"]) and result["permutations"] == 500 and result["p"] < 0.05


def test_rank_agreement_on_the_groups_that_matter_is_not_decided_by_noise_among_zeros():
    import torch

    from prune.ground_truth import spearman, top_spearman, weighted_tau

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
