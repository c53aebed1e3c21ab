"""One backward pass over the calibration windows, reduced on the fly to what importance needs.

Only the prunable projection weights (and the q/k/v, gate/up biases where a model has them) require
grad, so no gradient is ever computed for embeddings, norms or the LM head. Per batch, each weight's
gradient ``g_b`` (the gradient of that batch's mean next-token loss) is consumed by a post-accumulate
hook and freed straight away:

* ``G += g_b / n_batches`` in fp32 (the gradient of the mean calibration loss over *all* batches),
* the per-group sums that the second-order term needs (``sum w^2 g_b^2``; additive over batches),
* per-layer |g| statistics (sum |g|, sum g^2, count) for this batch.

All three come from one pass over ``g_b`` (``prune.importance.fused``: a Triton kernel on CUDA, the torch
reference elsewhere; ``importance.fused``), and ``G`` may be kept as bf16 + Kahan compensation or on the
host (``prune.importance.mean_grad``; ``importance.mean_grad``).

All squares and sums are taken in fp32/fp64 whatever the model dtype (fp16 squares of gradients
underflow to zero). A batch that runs out of memory restarts the pass with micro-batches half as big;
micro-batches accumulate into the same ``g_b``, so the scores do not change.

Fisher modes (``importance.fisher``): see ``prune.importance.fisher``.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from prune.eval.losses import sequence_nll
from prune.importance.fisher import FISHER_MODES, sequence_fisher, token_fisher
from prune.importance.fused import resolve_backend
from prune.importance.grad_stats import LayerGradMoments, summarize_moments
from prune.importance.mean_grad import MeanGradStore, make_store
from prune.memory import release_freed_memory
from prune.models import is_checkpointing, set_checkpointing
from prune.structure import GroupScores, Projection, add_channel_values, model_shape, projections

log = logging.getLogger(__name__)


@dataclass
class GradientPass:
    """What one calibration pass produced."""

    mean_grad: Mapping[int, torch.Tensor]  # id(parameter) -> G (fp32, on access), prunable weights and grouped biases
    second_moment: GroupScores | None  # sum over each group of w^2 * F, per the fisher mode
    grad_stats: dict
    num_sequences: int
    num_batches: int
    micro_batch_size: int
    oom_restarts: int = 0
    extra: dict = field(default_factory=dict)


class _Accumulator:
    def __init__(self, model: nn.Module, fisher: str | None, batch_size: int, num_sequences: int,
                 fused="auto", mean_grad: str = "fp32"):
        self.shape = model_shape(model)
        self.fisher = fisher
        self.batch_size = batch_size
        self.num_batches = num_sequences // batch_size
        self.num_sequences = num_sequences
        self.owner: dict[int, tuple[Projection, str]] = {}
        for proj in projections(model):
            self.owner[id(proj.module.weight)] = (proj, "weight")
            if proj.grouped_bias:
                self.owner[id(proj.module.bias)] = (proj, "bias")
        # id(param) -> G, read-only mapping of fp32 tensors; where and how G is kept: importance.mean_grad
        params = {key: (proj.module.weight if kind == "weight" else proj.module.bias) for key, (proj, kind) in self.owner.items()}
        self.backend = resolve_backend(fused, next(iter(params.values())).device)
        self.mean_grad: MeanGradStore = make_store(mean_grad, params, 1.0 / self.num_batches)
        # per-channel sums of w^2 g^2, kept on the gradient's device until the end of the pass
        self.batch_sq: dict[int, torch.Tensor] | None = {} if fisher in ("sample", "batch", "token") else None
        self.seq_sq: dict[int, torch.Tensor] | None = {} if fisher == "exact" else None
        self.batch_moments: list[dict] = []
        self.current: dict[tuple[int, str], LayerGradMoments] = {}
        self.last_unit = False
        self.unit_size = batch_size
        self.tokens_per_sequence = 1

    def params(self) -> list[nn.Parameter]:
        return [proj.module.weight if kind == "weight" else proj.module.bias for proj, kind in self.owner.values()]

    def _channel_values(self, param: torch.Tensor, grad: torch.Tensor, proj: Projection, kind: str) -> torch.Tensor:
        """Per-channel sum of (w * g)^2, squared and summed in fp32.

        fp16 inputs are upcast first (their products can underflow); bf16 products keep bf16's fp32-sized
        exponent and lose at most 0.4 % to rounding, which saves a full-size fp32 copy per weight.
        """
        w, g = param.detach(), grad.detach()
        if w.dtype == torch.float16 or g.dtype == torch.float16:
            w, g = w.float(), g.float()
        wg = w * g
        if kind == "bias":
            return wg.float().square()
        return torch.linalg.vector_norm(wg, ord=2, dim=1 - proj.channel_dim, dtype=torch.float32).square()

    @staticmethod
    def _accumulate(store: dict[int, torch.Tensor], key: int, values: torch.Tensor) -> None:
        values = values.double()
        store[key] = values if key not in store else store[key].add_(values)

    def _to_groups(self, store: dict[int, torch.Tensor], scale: float) -> GroupScores:
        scores = GroupScores.zeros(self.shape)
        for key, values in store.items():
            add_channel_values(scores, self.shape, self.owner[key][0], values * scale)
        return scores

    def on_unit_grad(self, param: nn.Parameter, grad: torch.Tensor) -> None:
        """Incoming gradient of one backward (a single sequence in 'exact' mode)."""
        proj, kind = self.owner[id(param)]
        # unit loss = sequence loss / batch_size, so the sequence gradient is batch_size * grad
        per_seq = grad * self.batch_size
        self._accumulate(self.seq_sq, id(param), self._channel_values(param, per_seq, proj, kind))

    def on_batch_grad(self, param: nn.Parameter) -> None:
        """``param.grad`` holds the whole batch's gradient g_b: reduce it and free it."""
        if not self.last_unit:
            return
        proj, kind = self.owner[id(param)]
        grad = param.grad
        key = id(param)
        # one pass over g: G, the |g| sums and (with a Fisher mode) the per-channel sums of (w g)^2
        reduced = self.mean_grad.update(key, grad, None if kind == "bias" else proj.channel_dim,
                                        self.batch_sq is not None, self.backend)
        if self.batch_sq is not None:
            self._accumulate(self.batch_sq, key, reduced.channel_sq)
        self.current.setdefault((proj.layer, proj.block), LayerGradMoments()).add_sums(
            reduced.abs_sum, reduced.sq_sum, grad.numel())
        param.grad = None

    def end_batch(self) -> None:
        self.batch_moments.append(self.current)
        self.current = {}

    def second_moment(self) -> GroupScores | None:
        S, B, nb = self.num_sequences, self.batch_size, self.num_batches
        if self.fisher == "exact":
            return self._to_groups(self.seq_sq, 1 / S)
        if self.fisher is None:
            return None
        mean_batch_sq = self._to_groups(self.batch_sq, 1 / nb)
        if self.fisher == "batch":
            return mean_batch_sq
        g_sq = GroupScores.zeros(self.shape)  # sum over each group of w^2 G^2
        for key, (proj, kind) in self.owner.items():
            param = proj.module.weight if kind == "weight" else proj.module.bias
            add_channel_values(g_sq, self.shape, proj, self._channel_values(param, self.mean_grad[key], proj, kind))
        sample = sequence_fisher(mean_batch_sq, g_sq, S, B)
        if self.fisher == "token":
            return token_fisher(sample, g_sq, S, self.tokens_per_sequence)
        return sample.map(lambda t: t.clamp_min(0))

    def grad_stats(self) -> dict:
        n_layers = len(self.shape.layers)
        totals: dict[tuple[int, str], LayerGradMoments] = {}
        for key, (proj, kind) in self.owner.items():
            totals.setdefault((proj.layer, proj.block), LayerGradMoments()).add(self.mean_grad[key])
        return {
            "pass": summarize_moments(totals, n_layers),
            "batches": [summarize_moments(m, n_layers) for m in self.batch_moments],
        }


@contextlib.contextmanager
def _only_prunable_require_grad(model: nn.Module, params: list[nn.Parameter]):
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None


def gradient_pass(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int,
    fisher: str | None = None,
    micro_batch_size: int | None = None,
    gradient_checkpointing: bool = False,
    progress: bool = True,
    fused="auto",
    mean_grad: str = "fp32",
) -> GradientPass:
    """Run the calibration windows through forward and backward once; see the module docstring.

    ``fused`` and ``mean_grad`` choose how each batch gradient is reduced and where ``G`` is kept
    (``prune.importance.fused``, ``prune.importance.mean_grad``); neither changes the scores beyond rounding.
    """
    from tqdm.auto import tqdm

    if fisher is not None and fisher not in FISHER_MODES:
        raise ValueError(f"unknown fisher mode '{fisher}': choose one of {', '.join(FISHER_MODES)}")
    n = len(windows)
    if n % batch_size:
        raise ValueError(f"num_samples={n} must be a multiple of batch_size={batch_size}")
    if fisher in ("sample", "token") and n <= batch_size and batch_size > 1:
        raise ValueError(
            f"fisher={fisher} needs at least two batches (num_samples={n}, batch_size={batch_size}); "
            "use more samples, a smaller batch_size or fisher=exact"
        )
    micro = 1 if fisher == "exact" else (micro_batch_size or batch_size)
    device = next(model.parameters()).device
    restarts = 0
    acc = None
    was_training = model.training
    was_checkpointing = is_checkpointing(model)
    if gradient_checkpointing:
        set_checkpointing(model, True)
        model.train()
    else:
        model.eval()
    try:
        while True:
            acc = _Accumulator(model, fisher, batch_size, n, fused, mean_grad)
            acc.tokens_per_sequence = windows.shape[1] - 1
            try:
                with _only_prunable_require_grad(model, acc.params()), _hooks(acc):
                    acc.unit_size = micro
                    batches = windows.split(batch_size)
                    for batch in tqdm(batches, desc=f"gradients (L={windows.shape[1]})", disable=not progress, leave=False):
                        units = batch.split(micro)
                        for k, unit in enumerate(units):
                            acc.last_unit = k == len(units) - 1
                            release_freed_memory(device)  # the last unit's activations: back to the kernel
                            loss = sequence_nll(model, unit.to(device)).sum() / batch_size
                            loss.backward()
                        acc.end_batch()
                acc.mean_grad.finish()
                break
            except torch.OutOfMemoryError:
                acc.mean_grad.close()
                if micro == 1:
                    raise
                restarts += 1
                micro = max(1, micro // 2)
                log.warning("Out of memory in the importance pass: restarting with micro-batches of %d", micro)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    except BaseException:
        if acc is not None:
            acc.mean_grad.close()
        raise
    finally:
        if gradient_checkpointing and not was_checkpointing:
            set_checkpointing(model, False)
        model.train(was_training)
    try:
        return GradientPass(
            mean_grad=acc.mean_grad,
            second_moment=acc.second_moment(),
            grad_stats=acc.grad_stats(),
            num_sequences=n,
            num_batches=n // batch_size,
            micro_batch_size=micro,
            oom_restarts=restarts,
            extra={"fused": acc.backend, "mean_grad": type(acc.mean_grad).__name__},
        )
    finally:
        acc.mean_grad.close()


@contextlib.contextmanager
def _hooks(acc: _Accumulator):
    handles = []
    try:
        for p in acc.params():
            if acc.fisher == "exact":
                handles.append(p.register_hook(lambda grad, p=p: acc.on_unit_grad(p, grad)))
            handles.append(p.register_post_accumulate_grad_hook(acc.on_batch_grad))
        yield
    finally:
        for h in handles:
            h.remove()
