"""The importance-method interface and its registry.

A method maps (model, calibration windows) to one score per prunable group (``GroupScores``): higher
means more important. Methods are small dataclasses instantiated by Hydra from ``prune/conf/importance/``;
``REGISTRY`` maps config names to classes for code that builds them directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from prune.errors import ConfigError
from prune.structure import GroupScores
from prune.settings import validate

REGISTRY: dict[str, tuple[type["ImportanceMethod"], dict]] = {}


def register(name: str, **defaults):
    """Register a class under a config name, with the settings that name implies (e.g. ``order=2``)."""

    def wrap(cls):
        REGISTRY[name] = (cls, defaults)
        return cls

    return wrap


def build(name, **kwargs) -> "ImportanceMethod":
    """The method registered as ``name``; a method already built (``pruning.layer_importance``) as it is."""
    if isinstance(name, ImportanceMethod) and not kwargs:
        return name
    if name not in REGISTRY:
        raise ConfigError(f"unknown importance method '{name}' (pruning.layer_importance?): choose one of {', '.join(sorted(REGISTRY))}")
    cls, defaults = REGISTRY[name]
    return cls(name=name, **{**defaults, **kwargs})


@dataclass
class Calibration:
    """Calibration windows per role (``taylor``, ``layer``, ``block``), each (num_samples, length)."""

    windows: dict[str, torch.Tensor]
    batch_size: int
    seed: int = 0
    progress: bool = True
    held_out: torch.Tensor | None = None  # evaluation windows, only for ground-truth methods
    max_pass_tokens: int | None = None  # model.max_pass_tokens: the most tokens one forward/backward may take

    def get(self, role: str) -> torch.Tensor:
        return self.windows[role]

    def micro_batch(self, role: str, requested: int | None = None) -> int | None:
        """Sequences per forward/backward: ``requested`` if set, else as many as ``max_pass_tokens`` allows
        (at least one, at most the batch); None (whole batches) without a cap."""
        return micro_batch_size(self.batch_size, self.get(role).shape[1], self.max_pass_tokens, requested)


def micro_batch_size(batch_size: int, seq_len: int, max_pass_tokens: int | None, requested: int | None = None) -> int | None:
    if requested:
        return requested
    if not max_pass_tokens:
        return None
    return max(1, min(batch_size, max_pass_tokens // seq_len))


@dataclass
class ImportanceResult:
    """Group scores (width pruning) and/or layer scores (depth pruning: keys ``layer``, ``attention``, ``mlp``)."""

    scores: GroupScores | None
    grad_stats: dict | None = None
    extra: dict = field(default_factory=dict)
    layer_scores: dict[str, list[float]] | None = None


@dataclass
class ImportanceMethod:
    name: str = ""
    uses: ClassVar[str | None] = "taylor"  # which calibration role it reads (None: no data)
    provides: ClassVar[str] = "groups"  # "groups" (width pruning) or "layers" (layer / block scores)
    # model passes over the calibration windows, in forward-pass FLOPs (a backward counts two); None: no
    # fixed number (no data, or as many passes as units removed)
    passes: ClassVar[float | None] = None

    def __post_init__(self):
        validate(self, "importance")  # the settings declared in prune.settings: their words and ranges

    def score(self, model: nn.Module, calibration: Calibration) -> ImportanceResult:
        raise NotImplementedError
