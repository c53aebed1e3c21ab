"""Fisher modes (``importance.fisher``): the diagonal-Hessian estimate ``F`` of the second-order Taylor term.


* ``sample`` (default): ``F ~ E_s[g_s^2]`` over per-sequence gradients, estimated without bias from
  batch gradients. With S sequences in batches of B, ``A = B * mean_b(g_b^2)`` and
  ``F = ((S - 1) A - S (B - 1) G^2) / (S - B)`` (needs at least two batches; exact when B = 1).
* ``exact``: ``E_s[g_s^2]`` from real per-sequence gradients (one backward per sequence; slower on GPU).
* ``batch``: the seed toolkit's literal ``E_b[g_b^2]`` over batch gradients, about B times smaller than
  the per-sequence Fisher and so batch-size dependent; kept to reproduce that toolkit.
* ``token``: the per-*token* empirical Fisher ``E_t[g_t^2]``, the scale that matches the Hessian of a
  token-mean loss. A sequence gradient is the mean of its T token gradients; if these are independent
  draws around the mean gradient ``G``, ``E_s[g_s^2] = G^2 + var_t / T`` and ``E_t[g_t^2] = G^2 + var_t``,
  so ``F_token = T * F_sample - (T - 1) * G^2`` (clipped at 0), with ``T`` the scored tokens per sequence.
  The assumption is independence of the token gradients *within* a sequence; positively correlated
  tokens make it an overestimate. The per-sequence Fisher is thus about T times smaller than the per-token one, and its
  second-order term shrinks as ``seq_len`` grows.
"""
from __future__ import annotations

from prune.structure import GroupScores

FISHER_MODES = ("sample", "exact", "batch", "token")


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


def token_fisher(sample: GroupScores, g_sq: GroupScores, T: int) -> GroupScores:
    """Per-token ``E_t[w^2 g_t^2]`` from the per-sequence estimate: ``T * F_sample - (T - 1) * G^2``, clipped at 0.

    Assumes the T token gradients of a sequence are independent around ``G`` (see the module docstring).
    """
    return GroupScores(
        [(T * s - (T - 1) * g).clamp_min(0) for s, g in zip(sample.attention, g_sq.attention)],
        [(T * s - (T - 1) * g).clamp_min(0) for s, g in zip(sample.mlp, g_sq.mlp)],
    )
