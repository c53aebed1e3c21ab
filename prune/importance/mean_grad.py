"""Where the running mean of the gradient ``G`` lives during the pass (``importance.mean_grad``).

``G`` has one fp32 value per prunable weight: 4 bytes each, 26 GiB at Llama-3-8B, more than the bf16
weights themselves. Three choices:

* ``fp32`` (default): on the weights' device in fp32.
* ``bf16_kahan``: on the device as bf16 plus an int8 Kahan compensation (3 bytes per weight): the kept sum
  has ~16 significant bits (see ``prune.importance.fused``); against fp32 the scores differ by about
  1e-5 relative (measured on the tiny test model: ``tests/test_fused.py``), while plain bf16 summation
  without the compensation is off by about 1e-3.
* ``cpu``: in fp32 on the host, in pinned memory. Each batch gradient is copied (asynchronously, on a side
  CUDA stream, into one of a few pinned staging buffers) and added on the host by a worker thread while the
  GPU goes on with the backward and the next batch; a hook waits only when every staging buffer is busy.
  Nothing of ``G`` stays on the GPU (the staging adds ``slots`` gradients of the largest weight). Bound by
  PCIe and host memory bandwidth: slower per batch than ``fp32``. On a model that already runs on the
  CPU there is nothing to move and it is the ``fp32`` store.

Every store is a read-only mapping ``id(param) -> G`` that gives fp32 tensors on the parameter's device
(built on access for ``bf16_kahan`` and ``cpu``, so only one parameter's fp32 copy exists at a time when
the consumers go parameter by parameter, as the Taylor scores and the Fisher term do).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Mapping

import torch

from prune.errors import ConfigError
from prune.importance.fused import BatchReduction, kahan_value, reduce_grad
from prune.settings import MEAN_GRAD_CHOICES  # declared with importance.mean_grad

DEVICE_BYTES_PER_WEIGHT = {"fp32": 4, "bf16_kahan": 3, "cpu": 0}
HOST_BYTES_PER_WEIGHT = {"fp32": 0, "bf16_kahan": 0, "cpu": 4}
STAGING_SLOTS = 4


def check_choice(kind: str) -> str:
    if kind not in MEAN_GRAD_CHOICES:
        raise ConfigError(f"unknown importance.mean_grad '{kind}': choose one of {', '.join(MEAN_GRAD_CHOICES)}")
    return kind


class MeanGradStore(Mapping):
    """Base class: ``update`` runs the fused reduction of one batch gradient; ``finish`` ends the pass."""

    def __init__(self, params: dict[int, torch.Tensor], scale: float):
        self.params = params  # key -> parameter (its shape, dtype and device)
        self.scale = scale

    def update(self, key: int, grad: torch.Tensor, channel_dim: int | None, channels: bool, backend: str) -> BatchReduction:
        raise NotImplementedError

    def finish(self) -> None:
        """Wait for outstanding work (host store); after it every value is final."""

    def close(self) -> None:
        """Release threads and buffers (safe to call twice)."""

    def __iter__(self):
        return iter(self.params)

    def __len__(self):
        return len(self.params)


class Fp32Mean(MeanGradStore):
    def __init__(self, params, scale):
        super().__init__(params, scale)
        self.mean: dict[int, torch.Tensor] = {}

    def update(self, key, grad, channel_dim, channels, backend):
        if key not in self.mean:
            self.mean[key] = torch.zeros_like(grad, dtype=torch.float32)
        return reduce_grad(grad, self.params[key], self.mean[key], None, self.scale, channel_dim, channels, backend)

    def __getitem__(self, key):
        if key not in self.params:
            raise KeyError(key)
        return self.mean.get(key)


class Bf16KahanMean(MeanGradStore):
    """bf16 sum + int8 compensation; ``compensated=False`` is plain bf16 summation (for comparison only)."""

    def __init__(self, params, scale, compensated: bool = True):
        super().__init__(params, scale)
        self.compensated = compensated
        self.hi: dict[int, torch.Tensor] = {}
        self.comp: dict[int, torch.Tensor] = {}

    def update(self, key, grad, channel_dim, channels, backend):
        if key not in self.hi:
            self.hi[key] = torch.zeros_like(grad, dtype=torch.bfloat16)
            if self.compensated:
                self.comp[key] = torch.zeros_like(grad, dtype=torch.int8)
        return reduce_grad(grad, self.params[key], self.hi[key], self.comp.get(key), self.scale, channel_dim, channels, backend)

    def __getitem__(self, key):
        if key not in self.params:
            raise KeyError(key)
        if key not in self.hi:
            return None
        return kahan_value(self.hi[key], self.comp[key]) if self.compensated else self.hi[key].float()


class HostMean(MeanGradStore):
    """fp32 ``G`` on the host; gradients go through pinned staging buffers, added by a worker thread."""

    def __init__(self, params, scale, slots: int = STAGING_SLOTS):
        super().__init__(params, scale)
        first = next(iter(params.values()))
        self.device = first.device
        self.cuda = self.device.type == "cuda"
        self.host: dict[int, torch.Tensor] = {}
        biggest = max(p.numel() for p in params.values())
        self.free: queue.Queue = queue.Queue()
        for _ in range(slots):
            self.free.put(torch.empty(biggest, dtype=first.dtype, pin_memory=self.cuda))
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.work: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._worker, name="mean-grad-host", daemon=True)
        self.thread.start()

    def update(self, key, grad, channel_dim, channels, backend):
        reduction = reduce_grad(grad, self.params[key], None, None, self.scale, channel_dim, channels, backend)
        self._raise_if_failed()
        buf = self.free.get()  # blocks while every staging buffer is in flight
        staged = buf[: grad.numel()].view(grad.shape)
        if self.cuda:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                staged.copy_(grad.detach(), non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.stream)
            grad.record_stream(self.stream)  # the caching allocator keeps g until the copy has read it
        else:
            staged.copy_(grad.detach())
            done = None
        self.work.put((key, buf, staged, done))
        return reduction

    def _worker(self) -> None:
        while True:
            item = self.work.get()
            if item is None:  # close(): everything queued before it is done
                self.work.task_done()
                return
            key, buf, staged, done = item
            try:
                if done is not None:
                    done.synchronize()
                if key not in self.host:
                    self.host[key] = torch.zeros(staged.shape, dtype=torch.float32, pin_memory=self.cuda)
                self.host[key].add_(staged, alpha=self.scale)
            except BaseException as exc:  # surfaced in the training thread
                self.error = exc
            finally:
                self.free.put(buf)
                self.work.task_done()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError("the host-side accumulation of the mean gradient failed") from self.error

    def finish(self):
        self.work.join()
        self._raise_if_failed()

    def close(self):
        if self.thread.is_alive():
            self.work.put(None)
            self.thread.join()

    def __getitem__(self, key):
        if key not in self.params:
            raise KeyError(key)
        self.finish()
        value = self.host.get(key)
        return None if value is None else value.to(self.device, non_blocking=False)


def make_store(kind: str, params: dict[int, torch.Tensor], scale: float) -> MeanGradStore:
    """The store for ``importance.mean_grad``; ``cpu`` for a model on the CPU is the fp32 store."""
    kind = check_choice(kind)
    device = next(iter(params.values())).device
    if kind == "bf16_kahan":
        return Bf16KahanMean(params, scale)
    if kind == "cpu" and device.type != "cpu":
        return HostMean(params, scale)
    return Fp32Mean(params, scale)
