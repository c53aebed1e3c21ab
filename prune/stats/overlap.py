"""Do two settings remove different sets of groups, beyond what seeds alone do?

``overlap_test``: mean Jaccard between *different-seed* pairs of the two arms against different-seed
pairs within each arm (like with like), same-seed pairs reported apart, and a permutation test over the
arm labels. ``min_permutation_p``: the smallest p that test can give at these n; where it is at least
alpha the test cannot reject whatever the data, and a verdict must say "untestable at this n", never
"no evidence".
"""
from __future__ import annotations

import itertools
import math
import statistics


# ------------------------------------------------------------------------------------ overlap of sets
def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _mean_pairs(pairs, measure=jaccard) -> float:
    values = [measure(x, y) for x, y in pairs]
    return statistics.fmean(values) if values else float("nan")


def _overlaps(arm_a: dict, arm_b: dict, measure=jaccard) -> tuple[float, float, float]:
    """(within, between, same-seed) mean Jaccard; within and between use different-seed pairs only."""
    within = [(arm[s], arm[t]) for arm in (arm_a, arm_b) for s, t in itertools.combinations(sorted(arm), 2)]
    between = [(arm_a[s], arm_b[t]) for s in arm_a for t in arm_b if s != t]
    same = [(arm_a[s], arm_b[s]) for s in arm_a.keys() & arm_b.keys()]
    return _mean_pairs(within, measure), _mean_pairs(between, measure), _mean_pairs(same, measure)


def _memo_jaccard():
    """Jaccard of two of the arms' sets, each pair computed once: a relabelling only regroups the same
    sets, so 2^10 swaps of 10 paired seeds need 190 set comparisons, not 190 x 1024 (thousands of
    removed MLP channels each on a real model: minutes of report otherwise)."""
    cache: dict[tuple[int, int], float] = {}

    def measure(x: set, y: set) -> float:
        key = (id(x), id(y)) if id(x) <= id(y) else (id(y), id(x))
        if key not in cache:
            cache[key] = jaccard(x, y)
        return cache[key]

    return measure


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
    measure = _memo_jaccard()  # the arms' set objects stay alive (and their ids unique) for the whole test
    if set(arm_a) == set(arm_b):
        seeds = sorted(arm_a)
        swaps = itertools.product((False, True), repeat=len(seeds)) if len(seeds) <= 12 else (
            [rng.random() < 0.5 for _ in seeds] for _ in range(n_perm))
        for swap in swaps:
            a = {s: (arm_b if flip else arm_a)[s] for s, flip in zip(seeds, swap)}
            b = {s: (arm_a if flip else arm_b)[s] for s, flip in zip(seeds, swap)}
            w, bt, _ = _overlaps(a, b, measure)
            stats.append(w - bt)
    else:
        jobs = [(("a", s), v) for s, v in arm_a.items()] + [(("b", s), v) for s, v in arm_b.items()]
        for _ in range(n_perm):
            rng.shuffle(jobs)
            a = {k: v for k, v in jobs[: len(arm_a)]}
            b = {k: v for k, v in jobs[len(arm_a):]}
            w, bt, _ = _overlaps(a, b, measure)
            stats.append(w - bt)
    out["p"] = sum(s >= observed - 1e-12 for s in stats) / len(stats)
    out["permutations"] = len(stats)
    return out


def min_permutation_p(arm_a: dict, arm_b: dict) -> float:
    """The smallest p ``overlap_test`` can return for arms of these seeds.

    Paired (the same n seeds in both): the 2^n within-seed swaps; swapping every seed gives the same
    statistic as none (within and between are symmetric in the arms), so at least 2 of the 2^n count:
    ``2 / 2^n``. Unpaired: the C(na + nb, na) relabellings, 2 of them equivalent when na = nb.
    """
    if len(arm_a) < 2 or len(arm_b) < 2:
        return float("nan")
    if set(arm_a) == set(arm_b):
        return 2 / 2 ** len(arm_a)
    return (2 if len(arm_a) == len(arm_b) else 1) / math.comb(len(arm_a) + len(arm_b), len(arm_a))


def removal_frequencies(arms: dict[str, list[set]]) -> dict[str, dict]:
    """For every group removed in some job: the fraction of each arm's jobs that removed it."""
    groups = set().union(*[s for sets in arms.values() for s in sets]) if arms else set()
    return {g: {arm: sum(g in s for s in sets) / len(sets) for arm, sets in arms.items()} for g in groups}
