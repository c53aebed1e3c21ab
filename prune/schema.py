"""The config's schema: typed dataclasses in Hydra's ConfigStore, named in the defaults lists of prune/conf.

Hydra merges every YAML file over its schema, so a value of the wrong type, a value outside a choice
(an ``Enum`` field) or an unknown key is refused while the config is composed, in Hydra's words. The values
and their comments stay in the YAML files; here are the types, the choices, the required keys (``???``)
and the range each number must lie in (``check=`` in a field's metadata; ``preflight.check_ranges`` reads
it, since a type cannot say "positive"). Cross-setting checks live with the code that needs them.

The importance methods' and pruning strategies' settings are declared in ``prune.settings`` (defaults
included: their YAML options set only what differs); the other groups keep their values in YAML.

Where the schemas attach: ``config.yaml`` starts with ``base_config``; every option of ``importance``,
``pruning`` (and ``pruning/layer_importance``), ``model``, ``testbed``, ``data``, ``recovery`` and ``logger``
starts with its group's ``schema/<kind>@_here_`` (directly or through a shared ``base/<kind>`` file). The
schemas of the groups chosen whole (model, testbed, data, recovery, logger) are in ``prune.schema_groups``;
the choices, checks and ``setting()`` both use are in ``prune.schema_base``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from prune import settings as S
from prune.schema_base import CHECKS, Choice, Instantiated, choice, setting  # noqa: F401  (CHECKS, Choice: re-exported)

CONF_DIR = Path(__file__).resolve().parent / "conf"  # package data: installed with prune, not beside it


ProbeFormat = choice("ProbeFormat", ("auto", "passkey", "testbed"))



# ------------------------------------------------------------------------------------ top level
@dataclass
class Lengths:
    taylor: int = setting("int>=2")
    layer: int = setting("int>=2")
    block: int = setting("int>=2")


@dataclass
class Probe:
    """The long-context probe's settings; ``prune.eval.probe.check_probe`` reads these checks too."""
    format: ProbeFormat = setting()
    lengths: List[int] = setting("lengths>=16")
    depths: List[float] = setting("fractions[0,1]")
    items: int = setting("int>0")
    digits: int = setting("int>0")
    choices: int = setting("int>=2")
    seed: int = setting()
    window: Optional[int] = setting("int>=8")
    score: bool = setting()


@dataclass
class GroundTruth:
    lengths: List[int] = setting("lengths")
    max_tokens: Optional[int] = setting("int>0")
    mlp_sample: int = setting("int>=0")
    seed: int = setting()


@dataclass
class Eval:
    lengths: List[int] = setting("lengths")
    batch_size: int = setting("int>0")
    max_tokens: Optional[int] = setting("int>0")
    cache_before: bool = setting()
    cache_after: bool = setting()
    tasks: List[str] = setting()
    tasks_limit: Optional[int] = setting("int>0")
    tasks_items: Dict[str, int] = setting()
    tasks_batch_size: Union[int, str] = setting("int>0|auto")
    tasks_fewshot: int = setting("int>=0")
    tasks_before: bool = setting()
    task_dir: Optional[str] = setting()
    task_data: Optional[str] = setting()
    probe: Probe = field(default_factory=Probe)
    importance_accuracy: bool = setting()
    ground_truth: GroundTruth = field(default_factory=GroundTruth)


@dataclass
class Primary:
    """The one comparison a study is built for, declared before it runs (``prune.report.design``)."""
    metric: Optional[str] = None  # ppl_after | ppl_recovered | acc_after; None: no primary endpoint declared
    at: Optional[str] = None  # eval length (PPL) or task (accuracy); None: the longest length / "mean"
    where: Dict[str, Any] = field(default_factory=dict)  # the series: settings (command-line names) of its jobs
    arm: Any = None  # the x value compared with the reference; None: the only other one


@dataclass
class Study:
    """What a multirun is for; read by its report only (no job result depends on it)."""
    reference: Any = None  # the x value every other one is compared with; None: the first (method studies: random)
    primary: Primary = field(default_factory=Primary)  # metric None: every comparison secondary


@dataclass
class Config:
    """The top level of ``config.yaml``; the groups' nodes get their types from their own schemas."""

    testbed: Any = MISSING
    model: Any = MISSING
    data: Any = MISSING
    importance: Any = MISSING
    pruning: Any = MISSING
    recovery: Any = MISSING
    logger: Any = MISSING
    seed: int = setting()
    seq_len: int = setting("int>0")
    batch_size: int = setting("int>0")
    num_samples: int = setting("int>0")
    token_budget: Optional[int] = setting("int>0")
    lengths: Lengths = field(default_factory=Lengths)
    calibration_block: Optional[int] = setting("int>0")
    eval: Eval = field(default_factory=Eval)
    study: Study = field(default_factory=Study)  # declared here only (defaults); experiments set it
    objective: str = setting()
    save_model: bool = setting()
    progress: bool = setting()
    force: bool = setting()
    threads: Optional[int] = setting("int>0")
    cache_dir: str = setting()


# ------------------------------------------------------------ importance methods, pruning strategies
# Their settings (defaults, types, words, ranges) are declared once, in ``prune.settings``, and inherited by
# the classes that implement them; a node adds what Hydra needs: the class to build and the option's name.
@dataclass
class Method(Instantiated):
    """Every importance method; the base of those with settings."""


def node(settings: type, base: type = Instantiated, *extra: tuple) -> type:
    """The ConfigStore node of an option: its settings dataclass plus ``_target_`` and ``name`` (``base``)."""
    return make_dataclass(settings.__name__.removesuffix("Settings"), [*extra], bases=(base, settings))


Taylor = node(S.TaylorSettings, Method)
Removal = node(S.RemovalSettings, Method)
GroupRemoval = node(S.GroupRemovalSettings, Removal)
LAYER_IMPORTANCE = ("layer_importance", Method, field(default=MISSING))  # the pruning/layer_importance group
Width = node(S.WidthSettings)
Global = node(S.GlobalSettings)
Depth = node(S.DepthSettings)
LayerWeighted = node(S.LayerWeightedSettings, Instantiated, LAYER_IMPORTANCE)
Hybrid = node(S.HybridSettings, Instantiated, LAYER_IMPORTANCE)


def register() -> None:
    """Put every schema into Hydra's ConfigStore (idempotent; done on import)."""
    from prune.schema_groups import GROUP_SCHEMAS

    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for group, nodes in {
        "importance": {"method": Method, "taylor": Taylor, "removal": Removal, "group_removal": GroupRemoval},
        "pruning": {"width": Width, "global": Global, "depth": Depth, "layer_weighted": LayerWeighted, "hybrid": Hybrid},
        **GROUP_SCHEMAS(),
    }.items():
        for name, node in nodes.items():
            store.store(group=f"{group}/schema", name=name, node=node)


def compose(*overrides: str, return_hydra_config: bool = False):
    """The job config as ``prune-run <overrides>`` would compose it (for scripts and tests)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def by_device(device: str, cpu_value, gpu_value):
    """``${by_device:${model.device},<cpu>,<gpu>}``: a default that depends on where the model runs."""
    from prune.models import resolve_device

    try:
        kind = resolve_device(None if device in (None, "auto") else str(device)).type
    except RuntimeError:
        kind = "cpu"
    return cpu_value if kind == "cpu" else gpu_value


def batch_of(tokens, seq_len) -> int:
    """``batch_size: ${batch_of:2048,${seq_len}}``: the batch that holds ``tokens`` calibration tokens at any
    length, so per-batch statistics (the gradient's batch-to-batch spread) compare like with like."""
    tokens, seq_len = int(tokens), int(seq_len)
    if seq_len <= 0 or tokens % seq_len:
        raise ValueError(f"batch_of: {tokens} tokens per batch is not a whole number of seq_len={seq_len} windows; "
                         "pick lengths that divide it")
    return tokens // seq_len


OmegaConf.register_new_resolver("by_device", by_device, replace=True)
OmegaConf.register_new_resolver("batch_of", batch_of, replace=True)
register()
