"""The settings of every importance method and pruning strategy, each declared once: name, type, default,
allowed words and range. Nothing here imports torch.

Three readers share these dataclasses:

* the implementing classes inherit them (``class Taylor(ImportanceMethod, TaylorSettings)``), so a method
  built from Python has the same defaults as one built from a config, and checks itself with ``validate``;
* ``prune.schema`` stores them in Hydra's ConfigStore (with ``_target_`` and ``name``), so a word outside a
  choice or a value of the wrong type is refused while the config is composed, and ``prune.preflight``
  checks every range before any model work;
* the YAML options (``prune/conf/importance``, ``prune/conf/pruning``) set only what differs from here.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, fields

from prune.errors import ConfigError
from prune.schema_base import CHECKS, choice, setting

FISHER_MODES = ("sample", "exact", "batch", "token")
MEAN_GRAD_CHOICES = ("fp32", "bf16_kahan", "cpu")
GRANULARITIES = ("element", "vector")
NORMALIZATIONS = ("none", "mean", "max", "zscore")
UNITS = ("layer", "block")

Fisher = choice("Fisher", FISHER_MODES)
MeanGrad = choice("MeanGrad", MEAN_GRAD_CHOICES)
Granularity = choice("Granularity", GRANULARITIES)
Normalize = choice("Normalize", NORMALIZATIONS)
Unit = choice("Unit", UNITS)


# ----------------------------------------------------------------------------- importance methods
@dataclass
class TaylorSettings:
    order: int = setting("1|2", 2)  # 1: |w.G| | 2: plus 1/2 w^2 F (Fisher diagonal)
    granularity: Granularity = setting(None, Granularity.element)  # element: sum |w*G| | vector: |sum w*G|
    # (order 2) token: per-token E_t[g_t^2] = T F_sample - (T-1) G^2 (chosen by experiment=fisher_scale) | sample:
    # per-sequence E_s[g_s^2] | exact: per-sequence backward | batch: E_b[g_b^2] (seed toolkit)
    fisher: Fisher = setting(None, Fisher.token)
    gradient_checkpointing: bool = setting(None, False)  # trade compute for memory on long sequences
    micro_batch_size: typing.Optional[int] = setting("int>0", None)  # split each batch (same scores); set on OOM
    fused: typing.Union[bool, str] = setting(None, "auto")  # one pass per gradient: auto (Triton on CUDA) | true | false
    # where the running mean G lives: fp32 (4 B/weight) | bf16_kahan (3 B, ~1e-5 of fp32) | cpu (host, pinned; slower)
    mean_grad: MeanGrad = setting(None, MeanGrad.fp32)


@dataclass
class RemovalSettings:
    prefix_cache: bool = setting(None, True)  # re-run only the layers after the removed one (false: full forwards)


@dataclass
class GroupRemovalSettings(RemovalSettings):
    mlp_sample: typing.Optional[int] = setting("int>0", None)  # measure only this many MLP channels (seeded)


# ---------------------------------------------------------------------------- pruning strategies
@dataclass
class StrategySettings:
    ratio: float = setting("fraction(0,1)", 0.3)  # fraction of prunable parameters (attention + MLP) to remove
    keep_first: int = setting("int>=0", 0)  # never prune the first k layers
    keep_last: int = setting("int>=0", 0)  # ... nor the last k


@dataclass
class WidthSettings(StrategySettings):
    min_attention_groups: int = setting("int>=0", 1)  # every layer keeps this many KV groups (0: a block may go)
    min_mlp_channels: int = setting("int>=0", 1)  # ... and this many MLP channels
    max_layer_fraction: float = setting("fraction(0,1]", 1.0)  # no layer loses more of its prunable parameters
    width_multiple: int = setting("int>0", 1)  # round kept MLP widths to this multiple (the YAML: the model's)


@dataclass
class RankedSettings(WidthSettings):
    normalize: Normalize = setting(None, Normalize.none)  # rescale scores per layer before the global ranking


@dataclass
class GlobalSettings(RankedSettings):
    uniform_widths: bool = setting(None, False)  # every layer keeps the same widths: a standard model is saved


@dataclass
class DepthSettings(StrategySettings):
    unit: Unit = setting(None, Unit.layer)  # remove whole layers, or attention / MLP blocks
    keep_first: int = setting("int>=0", 1)  # the first and last layers are usually the most important (ShortGPT)
    keep_last: int = setting("int>=0", 1)


@dataclass
class LayerWeightedSettings(WidthSettings):
    strength: float = setting(">=0", 1.0)  # 0 = uniform; larger = prune unimportant layers harder
    eps: float = setting(">=0", 0.05)
    max_layer_fraction: float = setting("fraction(0,1]", 0.8)


@dataclass
class HybridSettings(RankedSettings):
    unit: Unit = setting(None, Unit.layer)
    depth_share: float = setting("fraction[0,1]", 0.5)  # share of the ratio removed as whole layers / blocks
    keep_first: int = setting("int>=0", 1)
    keep_last: int = setting("int>=0", 1)


# --------------------------------------------------------------------------------------- checks
def problem(owner: type, name: str, value) -> str | None:
    """What is wrong with ``value`` for the field ``name`` of the settings class ``owner`` (None: nothing)."""
    spec = {f.name: f for f in fields(owner)}[name]
    kind = typing.get_type_hints(owner)[name]
    if isinstance(kind, type) and issubclass(kind, str) and hasattr(kind, "__members__"):  # a Choice
        words = [m.value for m in kind]
        if str(value) not in words:
            return f"is unknown: choose one of {', '.join(words)}"
    check = spec.metadata.get("check")
    if check is not None and value is not None:
        test, phrase = CHECKS[check]
        try:
            ok = bool(test(value))
        except TypeError:  # a value of another type (a script's dict; Hydra refuses these while composing)
            ok = False
        if not ok:
            optional = type(None) in typing.get_args(kind)
            return f"must be {phrase}{' or null' if optional else ''}"
    return None


def validate(obj, prefix: str) -> None:
    """Refuse the first field of a settings dataclass instance whose value breaks its declaration."""
    for f in fields(obj):
        owner = next((c for c in type(obj).__mro__ if f.name in getattr(c, "__dataclass_fields__", {})
                      and c.__module__ == __name__), None)
        if owner is None:
            continue
        why = problem(owner, f.name, getattr(obj, f.name))
        if why:
            raise ConfigError(f"{prefix}.{f.name}={getattr(obj, f.name)} {why}")
