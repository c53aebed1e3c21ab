"""Checks that need no model: run before anything is loaded, each refusal one ``ConfigError`` line.

``preflight(cfg, out_dir)`` checks, in this order: unknown keys (a ``+seqlen=128`` typo adds a key that
nothing reads), the type and range of every top-level setting, the settings of every instantiated node
against its class (``pruning.ratio=abc``, ``+importance.fishr=...``), the device and dtype, the model
folder, the output and cache folders, the logger, and finally instantiates the data source, the
importance method and the strategy (their own checks: files exist, are readable text, differ...).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from prune.errors import ConfigError, first_line, instantiate_checked

from prune.schema import CONF_DIR as CONF
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")


# ----------------------------------------------------------------------------------- value kinds
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive(v) -> bool:
    return _is_int(v) and v > 0


KINDS = {  # name -> (test, phrase used in the refusal)
    "int": (_is_int, "an integer"),
    "int>0": (_positive, "a positive integer"),
    "int>=0": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "int>=2": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "int>0|null": (lambda v: v is None or _positive(v), "a positive integer or null"),
    "int>=2|null": (lambda v: v is None or (_is_int(v) and v >= 2), "an integer >= 2 or null"),
    "int>0|auto": (lambda v: v == "auto" or _positive(v), "a positive integer or 'auto'"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "str|null": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "lengths": (lambda v: isinstance(v, list) and len(v) > 0 and all(_is_int(x) and x >= 2 for x in v),
                "a non-empty list of integers >= 2, e.g. [128,512]"),
    "fraction(0,1)": (lambda v: _number(v) and 0 < v < 1, "a number strictly between 0 and 1"),
    "fraction(0,1]": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "fraction[0,1]": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ">=0": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "normalize": (lambda v: v in ("none", "mean", "max", "zscore"), "one of none, mean, max, zscore"),
    "unit": (lambda v: v in ("layer", "block"), "layer or block"),
    "names": (lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v), "a list of names, e.g. [boolq,piqa]"),
}

SETTINGS = {  # every plain (not instantiated) setting of prune/conf/config.yaml and its kind
    "seed": "int", "seq_len": "int>0", "batch_size": "int>0", "num_samples": "int>0",
    "token_budget": "int>0|null", "calibration_block": "int>0|null",
    "lengths.taylor": "int>=2", "lengths.layer": "int>=2", "lengths.block": "int>=2",
    "eval.lengths": "lengths", "eval.batch_size": "int>0", "eval.max_tokens": "int>0|null",
    "eval.cache_before": "bool", "eval.tasks": "names", "eval.tasks_limit": "int>0|null",
    "eval.tasks_batch_size": "int>0|auto", "eval.tasks_fewshot": "int>=0", "eval.tasks_before": "bool",
    "eval.task_dir": "str|null", "eval.importance_accuracy": "bool",
    "eval.ground_truth.lengths": "lengths", "eval.ground_truth.max_tokens": "int>0|null",
    "eval.ground_truth.mlp_sample": "int>=0", "eval.ground_truth.seed": "int",
    "save_model": "bool", "progress": "bool", "force": "bool", "threads": "int>0|null", "cache_dir": "str",
}
NODE_SETTINGS = {  # settings of instantiated nodes, checked where the chosen option has them
    "pruning.ratio": "fraction(0,1)", "pruning.keep_first": "int>=0", "pruning.keep_last": "int>=0",
    "pruning.min_attention_groups": "int>=0", "pruning.min_mlp_channels": "int>=0", "pruning.width_multiple": "int>0",
    "pruning.max_layer_fraction": "fraction(0,1]", "pruning.depth_share": "fraction[0,1]",
    "pruning.normalize": "normalize", "pruning.unit": "unit", "pruning.strength": ">=0", "pruning.eps": ">=0",
    "importance.micro_batch_size": "int>0|null", "importance.mlp_sample": "int>0|null",
    "model.width_multiple": "int>0", "data.test_fraction": "fraction(0,1)",
}
# the config groups (their own files check their keys): every folder of prune/conf/ but Hydra's
GROUPS = tuple(sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"))


def preflight(cfg: DictConfig, out_dir: str | os.PathLike | None = None) -> None:
    """Every check that needs no model (see the module docstring); raises ``PruneLabError``."""
    data = _plain(cfg, "the config")
    check_unknown_keys(data)
    check_settings(data)
    for node in ("model", "data", "importance", "pruning", "logger"):
        check_node(node, data.get(node))
    check_device(data["model"])
    check_model_path(data["model"])
    check_writable(Path(os.path.expanduser(data["cache_dir"])), "cache_dir", "cache_dir=<folder> or PRUNE_LAB_CACHE")
    if out_dir is not None:
        check_writable(Path(out_dir), "the output folder", "hydra.run.dir=<folder> / hydra.sweep.dir=<folder> or PRUNE_LAB_OUTPUTS")
    check_logger(data.get("logger") or {})
    if data["eval"].get("task_dir") and not Path(os.path.expanduser(data["eval"]["task_dir"])).is_dir():
        raise ConfigError(f"eval.task_dir={data['eval']['task_dir']}: no such folder")


def build_parts(cfg: DictConfig):
    """The model source, data source, importance method and strategy, their refusals unwrapped from Hydra."""
    return (
        instantiate_checked(cfg.model, f"model={cfg.model.get('name', '?')}"),
        instantiate_checked(cfg.data, f"data={cfg.data.get('name', '?')}"),
        instantiate_checked(cfg.importance, f"importance={cfg.importance.get('name', '?')}"),
        instantiate_checked(cfg.pruning, f"pruning={cfg.pruning.get('name', '?')}"),
    )


# --------------------------------------------------------------------------------------- checks
def _plain(node, what: str):
    try:
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node
    except Exception as exc:  # noqa: BLE001 - an interpolation that cannot resolve is a setting error
        raise ConfigError(f"{what} does not resolve: {first_line(exc)}") from exc


@lru_cache(maxsize=1)
def _known_tree() -> dict:
    tree = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"), resolve=False)
    tree.pop("defaults", None)
    return tree


def suggest(key: str) -> str:
    """The nearest known setting to a mistyped ``key`` (top level, eval, lengths), or how to list them."""
    known, prefix, node = _known_tree(), "", None
    parts = key.split(".")
    node = known
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            node = None
            break
        node, prefix = node[part], f"{prefix}{part}."
    names = [str(k) for k in node] + (list(GROUPS) if prefix == "" else []) if isinstance(node, dict) else []
    near = difflib.get_close_matches(parts[-1], names, n=1)
    if near:
        return f"did you mean {prefix}{near[0]}?"
    return "no such setting; `prune-run --cfg job` prints every setting"


def check_unknown_keys(data: dict) -> None:
    """Refuse keys that nothing reads (added with ``+``): top level, ``eval``, ``lengths``, ``eval.ground_truth``."""
    known = _known_tree()

    def walk(node: dict, ref: dict, prefix: str):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if prefix == "" and (key in GROUPS or key == "hydra"):
                continue
            if key not in ref:
                raise ConfigError(f"unknown setting {path} (added with +?): nothing reads it; {suggest(path)}")
            if isinstance(value, dict) and isinstance(ref[key], dict):
                walk(value, ref[key], f"{path}.")

    walk(data, known, "")


def _get(data: dict, path: str):
    node = data
    for part in path.split("."):
        node = node[part]
    return node


def check_settings(data: dict) -> None:
    for path, kind in {**SETTINGS, **NODE_SETTINGS}.items():
        try:
            value = _get(data, path)
        except (KeyError, TypeError):
            continue  # removed with ~key: the code's default applies
        test, phrase = KINDS[kind]
        if not test(value):
            extra = " (an empty list evaluates nothing)" if path == "eval.lengths" and value == [] else ""
            raise ConfigError(f"{path}={_show(value)} must be {phrase}{extra}")


def _show(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "[]" if value == [] else ("null" if value is None else str(value).replace("\n", " "))


def _hint_ok(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_hint_ok(value, a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _is_int(value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is list or origin is list:
        return isinstance(value, list)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: the class decides


def _hint_words(hint) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a mapping", type(None): "null"}
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return " or ".join(names.get(a, names.get(typing.get_origin(a), str(a))) for a in args)


def check_node(group: str, node) -> None:
    """Keys and value types of an instantiated node against the fields of its ``_target_`` dataclass."""
    if not isinstance(node, dict) or "_target_" not in node:
        return
    from hydra._internal.utils import _locate

    try:
        cls = _locate(node["_target_"])
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{group}._target_={node['_target_']} cannot be imported: {first_line(exc)}") from exc
    if not dataclasses.is_dataclass(cls):
        return
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    option = node.get("name", "?")
    for key, value in node.items():
        if key.startswith("_"):
            continue
        if key not in fields:
            near = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f"did you mean {group}.{near[0]}?" if near else f"its settings: {', '.join(sorted(fields))}"
            raise ConfigError(f"{group}.{key} is not a setting of {group}={option}; {hint}")
        if key in hints and not _hint_ok(value, hints[key]):
            raise ConfigError(f"{group}.{key}={_show(value)} must be {_hint_words(hints[key])}")


def check_device(model: dict) -> None:
    import torch

    from prune.models import DTYPES

    device = model.get("device", "auto")
    dtype = model.get("dtype", "auto")
    if dtype not in (None, "auto", *DTYPES):
        raise ConfigError(f"model.dtype={dtype} is unknown: choose auto, {', '.join(DTYPES)}")
    if device in (None, "auto"):
        return
    try:
        parsed = torch.device(str(device))
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"model.device={device} is not a device: use auto, cpu, cuda or cuda:<index>") from exc
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"model.device={device} but no CUDA GPU is visible here; use model.device=auto or cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"model.device={device} but only {count} CUDA GPU(s) are visible (cuda:0..cuda:{count - 1})")
    elif parsed.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"model.device={device} but MPS is not available here; use model.device=auto or cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"model.device={device} is not supported: use auto, cpu, cuda or cuda:<index>")


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path


def check_model_path(model: dict) -> None:
    """``model.path`` / ``model.tokenizer_path``: an existing model folder, or something shaped like a hub id."""
    if model.get("name") == "testbed" or "_target_" in model and model["_target_"].endswith("TestbedModel"):
        return
    if not model.get("path"):
        raise ConfigError(f"model={model.get('name', 'hf')} needs model.path=<local folder or hub id>")
    for key in ("path", "tokenizer_path"):
        value = model.get(key)
        if not value:
            continue
        local = Path(os.path.expanduser(str(value)))
        if local.exists():
            if not local.is_dir():
                raise ConfigError(f"model.{key}={value} is a file: give the model's folder (with config.json)")
            if key == "path" and not (local / "config.json").is_file():
                raise ConfigError(f"model.path={value} has no config.json: not a Hugging Face model folder")
        elif _looks_local(str(value)):
            raise ConfigError(f"model.{key}={value}: no such folder")


def check_writable(folder: Path, what: str, fix: str) -> None:
    """``folder`` exists (or can be made) and accepts a file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".prune-lab-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{what} {folder} is not writable ({exc.strerror or first_line(exc)}); set {fix}") from exc


def check_logger(logger: dict) -> None:
    target = str(logger.get("_target_", ""))
    if not target.endswith("WandbTracker"):
        return
    mode = logger.get("mode")
    if mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"logger.mode={mode} is unknown: choose offline, online or disabled (or logger=none)")
    env = os.environ.get("WANDB_MODE")
    if env and env not in WANDB_MODES:
        raise ConfigError(f"WANDB_MODE={env} is unknown: set it to offline, online or disabled (or unset it)")


__all__ = ["build_parts", "check_writable", "preflight", "suggest"]
