"""Everything the importance hooks need from one batch gradient, read in one pass.

For a prunable weight ``w`` and its batch gradient ``g`` the hooks of ``gradients.py`` need, per batch:

1. the running mean ``G += scale * g`` (``scale = 1 / n_batches``): in fp32, or as bf16 with a Kahan
   compensation term (``mean_grad=bf16_kahan``), or not on the device at all (``mean_grad=cpu``, where
   ``prune.importance.mean_grad`` moves ``g`` to the host itself);
2. ``sum |g|`` and ``sum g^2`` (the per-layer |g| statistics);
3. with a Fisher mode, per channel ``sum (w g)^2`` over the channel's row (``channel_dim=0``) or column
   (``channel_dim=1``) of ``w``; for a grouped bias (``channel_dim=None``) ``(w g)^2`` per element.

Two implementations of :func:`reduce_grad`:

* ``reference``: the torch code the hooks always ran (several memory-bound passes over ``g``: the mean
  update, two norms, a ``w * g`` product and its norm). It runs everywhere and defines the results.
* ``triton``: one kernel (:func:`_fused_kernel`) that reads ``g`` (and ``w``, ``G``) once per tile and
  writes ``G`` and small per-tile partial sums, which torch then adds up (deterministic, no atomics).
  About 10 bytes per weight and batch with fp32 ``G`` (2nd order: 12) instead of ~22 for the reference.
  Products and squares are taken in fp32 (the reference multiplies bf16 ``w * g`` in bf16 first, so the
  two agree to bf16 rounding of that product on bf16 models and to fp32 rounding otherwise).

``importance.fused`` chooses: ``auto`` (Triton where CUDA and Triton are present, else the reference),
``true`` (Triton, an error where it cannot run; on CPU tensors only under ``TRITON_INTERPRET=1``) or
``false`` (the reference). Triton is imported only when asked for.

**bf16 + Kahan storage** (3 bytes per weight instead of 4): ``hi`` is the bf16 running sum, ``q`` an int8
compensation in units of 1/256 of ``hi``'s last bit (``ulp``), so the sum is ``hi - q * ulp(hi) / 256``.
One step adds ``x = scale * g``: ``y = x - c``, ``t = bf16(hi + y)``, ``c' = (t - hi) - y`` (the rounding
error of ``t``, at most half an ulp, so ``|q'| <= 128``, clamped to 127), ``hi = t``. Every scaling is by a
power of two, so it is exact; the kept sum has ~16 significant bits instead of bf16's 8.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from prune.errors import ConfigError

FUSED_CHOICES = ("auto", "true", "false")
KAHAN_UNITS = 256.0  # the compensation is kept in 1/256 of the bf16 sum's last bit


@dataclass
class BatchReduction:
    """What one batch gradient contributes besides the running mean."""

    abs_sum: torch.Tensor  # 0-d fp64: sum |g|
    sq_sum: torch.Tensor  # 0-d fp64: sum g^2
    channel_sq: torch.Tensor | None  # fp32, per channel sum (w g)^2 (per element for a bias); None if not asked


# ------------------------------------------------------------------------------------- choosing a path
@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def normalise_setting(setting) -> str:
    """``importance.fused`` as one of FUSED_CHOICES (YAML turns ``true``/``false`` into booleans)."""
    if setting is None or isinstance(setting, bool):
        value = {None: "auto", True: "true", False: "false"}[setting]
    else:
        value = str(setting).lower()
    if value not in FUSED_CHOICES:
        raise ConfigError(f"unknown importance.fused '{setting}': choose one of {', '.join(FUSED_CHOICES)}")
    return value


def resolve_backend(setting, device: torch.device) -> str:
    """'triton' or 'reference' for gradients on ``device``; see the module docstring."""
    value = normalise_setting(setting)
    if value == "false":
        return "reference"
    if value == "auto":  # (Triton is not even imported for a CPU model)
        return "triton" if device.type == "cuda" and triton_available() else "reference"
    runnable = triton_available() and (device.type == "cuda" or _interpreting())
    if not triton_available():
        raise RuntimeError("importance.fused=true needs Triton, which is not importable here (use auto or false)")
    if not runnable:
        raise RuntimeError(f"importance.fused=true: Triton cannot run on {device} (CUDA only; on CPU with TRITON_INTERPRET=1)")
    return "triton"


def reduce_grad(g, w, mean, comp, scale: float, channel_dim: int | None, channels: bool, backend: str) -> BatchReduction:
    """Update ``mean`` (fp32; bf16 with int8 ``comp`` = Kahan; or None) with ``scale * g``; return the sums.

    ``mean`` may also be bf16 with ``comp=None``: plain bf16 summation (kept only to measure what the
    compensation buys; no setting uses it).
    """
    if backend == "triton":
        return _reduce_triton(g, w, mean, comp, scale, channel_dim, channels)
    return reduce_reference(g, w, mean, comp, scale, channel_dim, channels)


# ----------------------------------------------------------------------------------- reference (torch)
def channel_values_reference(w: torch.Tensor, g: torch.Tensor, channel_dim: int | None) -> torch.Tensor:
    """Per-channel sum of (w * g)^2 in fp32: the formula of ``_Accumulator._channel_values``."""
    w, g = w.detach(), g.detach()
    if w.dtype == torch.float16 or g.dtype == torch.float16:
        w, g = w.float(), g.float()
    wg = w * g
    if channel_dim is None:
        return wg.float().square()
    return torch.linalg.vector_norm(wg, ord=2, dim=1 - channel_dim, dtype=torch.float32).square()


def bf16_ulp(v: torch.Tensor) -> torch.Tensor:
    """The last bit of bf16 values held in fp32, ``2^(e - 7)`` for exponent ``e`` (at least 2^-126)."""
    e = (v.view(torch.int32) >> 23) & 0xFF
    return ((e.clamp_min(8) - 7) << 23).view(torch.float32)


def kahan_value(hi: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
    """The compensated sum ``hi - c`` in fp32."""
    h = hi.float()
    return h - comp.float() * bf16_ulp(h) * (1.0 / KAHAN_UNITS)


def kahan_add_(hi: torch.Tensor, comp: torch.Tensor, x: torch.Tensor) -> None:
    """``hi, comp += x`` (x fp32), one compensated step; see the module docstring."""
    h = hi.float()
    y = x - comp.float() * bf16_ulp(h) * (1.0 / KAHAN_UNITS)
    t = (h + y).to(torch.bfloat16)
    tf = t.float()
    c = (tf - h) - y
    inv_ulp = ((261 - ((tf.view(torch.int32) >> 23) & 0xFF).clamp_min(8)) << 23).view(torch.float32)
    q = torch.floor(c * inv_ulp * KAHAN_UNITS + 0.5).clamp_(-127, 127)
    hi.copy_(t)
    comp.copy_(q.to(torch.int8))


def reduce_reference(g, w, mean, comp, scale, channel_dim, channels) -> BatchReduction:
    g = g.detach()
    if mean is not None:
        if comp is not None:
            kahan_add_(mean, comp, g.float() * scale)
        else:
            mean.add_(g, alpha=scale)  # accumulates in mean's dtype, no fp32 temporary for an fp32 mean
    # norms reduce in fp32 without materialising an fp32 copy of the gradient
    l1 = torch.linalg.vector_norm(g, ord=1, dtype=torch.float32).double()
    l2 = torch.linalg.vector_norm(g, ord=2, dtype=torch.float32).double()
    ch = channel_values_reference(w, g, channel_dim) if channels else None
    return BatchReduction(l1, l2 * l2, ch)


# -------------------------------------------------------------------------------------------- Triton
BLOCK_R, BLOCK_C = 32, 128


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def _fused_kernel(g_ptr, w_ptr, mean_ptr, comp_ptr, abs_ptr, sq_ptr, ch_ptr, R, C, scale,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, MEAN: tl.constexpr, CHANNELS: tl.constexpr):
        # MEAN: 0 none, 1 fp32, 2 bf16 + int8 Kahan; CHANNELS: 0 none, 1 per row, 2 per column
        pid_r = tl.program_id(0)
        pid_c = tl.program_id(1)
        rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (rows[:, None] < R) & (cols[None, :] < C)
        offs = rows[:, None].to(tl.int64) * C + cols[None, :]
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if MEAN == 1:
            m = tl.load(mean_ptr + offs, mask=mask, other=0.0)
            tl.store(mean_ptr + offs, m + g * scale, mask=mask)
        if MEAN == 2:
            h = tl.load(mean_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            q = tl.load(comp_ptr + offs, mask=mask, other=0).to(tl.float32)
            e = tl.maximum((h.to(tl.int32, bitcast=True) >> 23) & 0xFF, 8)
            y = g * scale - q * ((e - 7) << 23).to(tl.float32, bitcast=True) * (1.0 / 256.0)
            # round to nearest even bf16 by hand (the Triton interpreter's casts truncate); exact cast after
            tb = (h + y).to(tl.int32, bitcast=True)
            tf = ((tb + 0x7FFF + ((tb >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
            t = tf.to(tl.bfloat16)
            c = (tf - h) - y
            e2 = tl.maximum((tf.to(tl.int32, bitcast=True) >> 23) & 0xFF, 8)
            qn = tl.floor(c * ((261 - e2) << 23).to(tl.float32, bitcast=True) * 256.0 + 0.5)
            qn = tl.minimum(tl.maximum(qn, -127.0), 127.0)
            tl.store(mean_ptr + offs, t, mask=mask)
            tl.store(comp_ptr + offs, qn.to(tl.int8), mask=mask)
        pid = pid_r * tl.num_programs(1) + pid_c
        tl.store(abs_ptr + pid, tl.sum(tl.sum(tl.abs(g), axis=1), axis=0))
        tl.store(sq_ptr + pid, tl.sum(tl.sum(g * g, axis=1), axis=0))
        if CHANNELS != 0:
            w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            wg = w * g
            if CHANNELS == 1:
                tl.store(ch_ptr + pid_c * R + rows, tl.sum(wg * wg, axis=1), mask=rows < R)
            else:
                tl.store(ch_ptr + pid_r * C + cols, tl.sum(wg * wg, axis=0), mask=cols < C)

    return _fused_kernel


def _reduce_triton(g, w, mean, comp, scale, channel_dim, channels) -> BatchReduction:
    import triton

    g = g.detach()
    if g.dim() == 1:  # a grouped bias: one "row" per element
        R, C, mode = g.shape[0], 1, 1
    else:
        R, C = g.shape
        mode = 1 if channel_dim == 0 else 2
    if not channels:
        mode = 0
    for t in (g, w, mean, comp):
        if t is not None and not t.is_contiguous():
            raise ValueError("the fused reduction needs contiguous tensors")
    if mean is None:
        mean_mode = 0
    elif comp is not None:
        mean_mode = 2
    elif mean.dtype == torch.float32:
        mean_mode = 1
    else:  # plain low-precision summation exists only in the reference
        return reduce_reference(g, w, mean, comp, scale, channel_dim, channels)
    grid = (triton.cdiv(R, BLOCK_R), triton.cdiv(C, BLOCK_C))
    n_prog = grid[0] * grid[1]
    abs_part = torch.empty(n_prog, device=g.device, dtype=torch.float32)
    sq_part = torch.empty(n_prog, device=g.device, dtype=torch.float32)
    if mode == 1:
        ch_part = torch.empty(grid[1], R, device=g.device, dtype=torch.float32)
    elif mode == 2:
        ch_part = torch.empty(grid[0], C, device=g.device, dtype=torch.float32)
    else:
        ch_part = abs_part  # never written
    _kernel()[grid](g, w if channels else g, mean if mean is not None else g, comp if comp is not None else g,
                    abs_part, sq_part, ch_part, R, C, float(scale),
                    BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, MEAN=mean_mode, CHANNELS=mode, num_warps=4)
    ch = ch_part.sum(0) if mode else None
    return BatchReduction(abs_part.double().sum(), sq_part.double().sum(), ch)
