"""The schemas of the option groups chosen whole: ``model``, ``testbed``, ``data``, ``recovery``, ``logger``.

Same style as ``prune.schema``: types, choices and required keys here, the values and their comments in the
YAML files (``prune/conf/<group>/``), whose options start with ``schema/<kind>@_here_``. ``GROUP_SCHEMAS()``
names them for ``prune.schema.register``.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from prune.schema_base import Instantiated, choice, setting

Schedule = choice("Schedule", ("constant", "linear", "cosine"))  # prune.recovery.SCHEDULES
Projection = choice("Projection", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
WandbMode = choice("WandbMode", ("offline", "online", "disabled"))


# ------------------------------------------------------------------------------------------ model
@dataclass
class Model(Instantiated):
    dtype: str = setting()  # the words are checked with the device (preflight.check_device)
    device: str = setting()
    max_pass_tokens: Optional[int] = setting("int>0")
    width_multiple: int = setting("int>0")


@dataclass
class HFModel(Model):
    path: str = setting()
    tokenizer_path: Optional[str] = setting()
    revision: Optional[str] = setting()
    device_map: Optional[str] = setting()
    attn_implementation: Optional[str] = setting()
    trust_remote_code: bool = setting()


@dataclass
class PackagedModel(HFModel):
    path: Optional[str] = setting()  # null: the cached conversion of `package` (prune.fetch)
    package: str = setting()
    cache_dir: str = setting()


@dataclass
class TestbedModel(Model):
    __test__ = False  # not a pytest test class
    testbed: Any = MISSING
    cache_dir: str = setting()
    progress: bool = setting()


# -------------------------------------------------------------------------------------- testbed
def _editable(cls) -> type:
    """A settable copy of a frozen spec dataclass (same fields, types and defaults) to serve as a schema."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            part = _editable(kind)
            specs.append((f.name, part, field(default_factory=part)))
        else:
            specs.append((f.name, kind, field(default=f.default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", specs)


# ------------------------------------------------------------------------------------------- data
@dataclass
class Source(Instantiated):
    """Every data source (``data/base/source.yaml``)."""
    _convert_: str = setting()


@dataclass
class HubData(Source):
    join: str = setting()  # put between documents before a split is tokenized as one text
    path: str = setting()
    subset: Optional[str] = setting()
    data_files: Any = setting()  # null, or the data set's file(s) per split (Any: OmegaConf cannot merge a dict over a null Dict)
    splits: Dict[str, str] = setting()
    text_field: str = setting()
    bos_per_document: bool = setting()
    max_documents: Dict[str, int] = setting()  # {} for none (not null: a dict could not be merged over it)
    shuffle_documents: bool = setting()
    revision: Optional[str] = setting()
    load_kwargs: Dict[str, Any] = setting()


@dataclass
class TextData(Source):
    join: str = setting()
    train_files: Any = MISSING  # a file or a list of files
    eval_files: Any = MISSING


@dataclass
class TextSplitData(Source):
    join: str = setting()
    file: str = setting()
    test_fraction: float = setting("fraction(0,1)")
    separator: str = setting()


@dataclass
class TestbedData(Source):
    __test__ = False  # not a pytest test class
    testbed: Any = MISSING
    cache_dir: str = setting()


# --------------------------------------------------------------------------------------- recovery
@dataclass
class Recovery:
    """``recovery=none``: nothing is trained."""
    name: str = setting()


@dataclass
class TrainedRecovery(Recovery):
    """What ``recovery=lora`` and ``full`` share (``recovery/base/train.yaml``); ``prune.recovery`` checks the
    settings that depend on each other (warm-up below steps, seq_len within the model's positions)."""
    schedule: Schedule = setting()
    warmup_steps: int = setting("int>=0")
    weight_decay: float = setting(">=0")
    max_grad_norm: Optional[float] = setting(">=0")  # 0 or null: no clipping
    steps: Optional[int] = setting("int>0")  # null: from epochs
    epochs: Optional[float] = setting(">0")  # null: steps
    batch_size: int = setting("int>0")
    grad_accum: int = setting("int>0")
    seq_len: int = setting("int>=2")
    seed: Optional[int] = setting()  # null: the job's seed
    data_files: Optional[List[str]] = setting()  # null: the calibration data's train split
    dense_control: bool = setting()
    log_every: int = setting("int>0")
    lr: float = setting(">0")


@dataclass
class LoraRecovery(TrainedRecovery):
    rank: int = setting("int>0")
    alpha: float = setting(">0")
    dropout: float = setting("fraction[0,1)")
    target_modules: List[Projection] = setting()


# ----------------------------------------------------------------------------------------- logger
@dataclass
class Logger:
    """``logger=none``: the class only."""
    _target_: str = setting()


@dataclass
class WandbLogger(Logger):
    project: str = setting()
    entity: Optional[str] = setting()
    mode: WandbMode = setting()  # WANDB_MODE, when set, decides (checked by preflight.check_logger)
    group: Optional[str] = setting()
    tags: List[str] = setting()
    dir: Optional[str] = setting()
    init_timeout: float = setting(">0")


def GROUP_SCHEMAS() -> dict[str, dict[str, type]]:  # noqa: N802 - a table, built on demand (the testbed import)
    from prune.testbed.spec import TestbedSpec

    return {
        "model": {"hf": HFModel, "packaged": PackagedModel, "testbed": TestbedModel},
        "testbed": {"spec": _editable(TestbedSpec)},
        "data": {"source": Source, "hub": HubData, "text": TextData, "text_split": TextSplitData, "testbed": TestbedData},
        "recovery": {"none": Recovery, "train": TrainedRecovery, "lora": LoraRecovery},
        "logger": {"none": Logger, "wandb": WandbLogger},
    }
