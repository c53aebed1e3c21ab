"""Fisher modes (``importance.fisher``): the diagonal-Hessian estimate ``F`` of the second-order Taylor term.

* ``sample`` (default): ``F ~ E_s[g_s^2]`` over per-sequence gradients, estimated without bias from
  batch gradients. With S sequences in batches of B, ``A = B * mean_b(g_b^2)`` and
  ``F = ((S - 1) A - S (B - 1) G^2) / (S - B)`` (needs at least two batches; exact when B = 1).
* ``exact``: ``E_s[g_s^2]`` from real per-sequence gradients (one backward per sequence; slower on GPU).
* ``batch``: the seed toolkit's literal ``E_b[g_b^2]`` over batch gradients, about B times smaller than
  the per-sequence Fisher and so batch-size dependent; kept to reproduce that toolkit.
* ``token``: the per-*token* empirical Fisher ``E_t[g_t^2]``, the scale that matches the Hessian of a
  token-mean loss, from the per-sequence estimate (derivation below).

**The token form.** S sequences of T scored tokens each; ``g_st`` is the gradient of token t's loss in
sequence s (one weight; every statement holds per weight, and so for the ``w^2``-weighted group sums).
A sequence gradient is the mean of its token gradients, ``g_s = (1/T) sum_t g_st``, and the mean
gradient is ``G = (1/S) sum_s g_s`` (the mean over all S*T tokens). ``F_s`` is any estimate of
``E[g_s^2]`` whose expectation is that of the empirical ``(1/S) sum_s g_s^2`` (the ``sample`` estimate
above is one). **Assumption:** the S*T token gradients are i.i.d. with mean ``mu`` and variance
``sigma^2``, within a sequence and across sequences. Then

    E[g_t^2] = mu^2 + sigma^2                  (the target: the per-token second moment)
    E[F_s]   = mu^2 + sigma^2 / T              (a mean of T tokens)
    E[G^2]   = mu^2 + sigma^2 / (S T)          (a mean of S*T tokens)

and the combination ``a E[F_s] - b E[G^2]`` equals the target for every ``mu, sigma`` iff ``a - b = 1``
and ``a / T - b / (S T) = 1``, i.e. ``a = (S T - 1) / (S - 1)`` and ``b = S (T - 1) / (S - 1)``:

    F_token = [(S T - 1) F_s - S (T - 1) G^2] / (S - 1)

is unbiased for ``E[g_t^2] = mu^2 + sigma^2``, the expected squared gradient of one token's loss
(needs S >= 2). The earlier form ``T F_s - (T - 1) G^2`` has expectation
``mu^2 + sigma^2 (1 - (T - 1) / (S T))``: it dropped the variance part of ``E[G^2]`` and so was low by
about ``sigma^2 / S``. The result is clipped at 0 (a noisy estimate can come out negative), which
biases it slightly upwards where the true value is near 0.

Where the assumption fails: tokens of one sequence are positively correlated (they share a context,
a topic, repeated words). If their gradients have within-sequence correlation ``rho``,
``E[F_s] = mu^2 + sigma^2 (1 + (T - 1) rho) / T`` and the estimate overstates the variance part by up to
the factor ``1 + (T - 1) rho`` (T times for identical tokens); negatively correlated tokens make it
an underestimate. ``tests/test_importance.py`` measures both cases on a tiny model.
"""
from __future__ import annotations

from prune.settings import FISHER_MODES  # noqa: F401  (re-exported: declared with importance.fisher)
from prune.structure import GroupScores


def sequence_fisher(mean_batch_sq: GroupScores, g_sq: GroupScores, S: int, B: int) -> GroupScores:
    """Unbiased ``E_s[w^2 g_s^2]`` per group from batch gradients, *not* clipped.

    ``mean_batch_sq`` holds ``mean_b(w^2 g_b^2)`` and ``g_sq`` holds ``w^2 G^2`` (summed over each group) for
    S sequences in batches of B: ``((S - 1) B A - S (B - 1) G^2) / (S - B)`` with ``A = mean_b(...)``. Exact
    when B = 1 (then it is ``A``). A noisy estimate can come out negative; callers clip at 0.
    """
    if B == 1:
        return mean_batch_sq
    return GroupScores(
        [((S - 1) * B * a - S * (B - 1) * g) / (S - B) for a, g in zip(mean_batch_sq.attention, g_sq.attention)],
        [((S - 1) * B * a - S * (B - 1) * g) / (S - B) for a, g in zip(mean_batch_sq.mlp, g_sq.mlp)],
    )


def token_fisher(sample: GroupScores, g_sq: GroupScores, S: int, T: int) -> GroupScores:
    """Per-token ``E_t[w^2 g_t^2]`` from the per-sequence estimate ``F_s`` (``sample``) and ``w^2 G^2``
    (``g_sq``) for S sequences of T tokens: ``[(S T - 1) F_s - S (T - 1) G^2] / (S - 1)``, clipped at 0.

    Unbiased when the token gradients are i.i.d. (see the module docstring for the derivation).
    """
    if S < 2:
        raise ValueError(f"fisher=token needs at least two sequences, got {S}")
    a, b = (S * T - 1) / (S - 1), S * (T - 1) / (S - 1)
    return GroupScores(
        [(a * s - b * g).clamp_min(0) for s, g in zip(sample.attention, g_sq.attention)],
        [(a * s - b * g).clamp_min(0) for s, g in zip(sample.mlp, g_sq.mlp)],
    )
