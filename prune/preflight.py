"""Checks that need no model: run before anything is loaded, each refusal one ``ConfigError`` line.

Types, choices and unknown keys given as ``key=value`` are refused earlier, by Hydra, against the schema
(``prune.schema``). ``preflight(cfg, out_dir)`` then checks, in this order: required settings left at
``???``, keys added with ``+`` that the schema does not have (``+seqlen=128`` adds a key nothing reads),
the range of every number the schema gives one, the sweep objective, the device and dtype, the model
folder, the output and cache folders, the logger; ``build_parts`` instantiates the data source, the
importance method and the strategy (their own checks: files exist, are readable text, differ...).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from prune.errors import ConfigError, first_line, instantiate_checked
from prune.metrics import OBJECTIVES
from prune.schema import CHECKS, Config

WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")
# the nodes chosen as group=option: their type comes from the option, so the top-level schema says Any
GROUPS = tuple(name for name, hint in typing.get_type_hints(Config).items() if hint is typing.Any)


def preflight(cfg: DictConfig, out_dir: str | os.PathLike | None = None) -> None:
    """Every check that needs no model (see the module docstring); raises ``PruneLabError``."""
    check_required(cfg)
    data = _plain(cfg, "the config")
    check_added_keys(cfg)
    check_ranges(cfg)
    check_objective(data)
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
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True) if isinstance(node, (DictConfig, ListConfig)) else node
    except Exception as exc:  # noqa: BLE001 - an interpolation that cannot resolve is a setting error
        raise ConfigError(f"{what} does not resolve: {first_line(exc)}") from exc


def check_required(cfg: DictConfig) -> None:
    """Settings still ``???`` (``model.path`` of ``model=hf``, the files of ``data=text``...)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required: set "
                          + " ".join(f"{key}=<value>" for key in missing))


def _schema_nodes(node: DictConfig, path: str = ""):
    """(path, node, schema dataclass) of every config node that has a schema, outermost first."""
    kind = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(kind):
        yield path, node, kind
    for key in node.keys():
        if not (OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key)) and OmegaConf.is_dict(node[key]):
            yield from _schema_nodes(node[key], f"{path}{key}.")


def _fields(kind) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(kind)}


def suggest(key: str, kind=None) -> str:
    """The nearest setting to a mistyped ``key`` (in schema ``kind``, else along the top-level schema)."""
    parts = key.split(".")
    if kind is None:
        kind = Config
        for part in parts[:-1]:
            hint = typing.get_type_hints(kind).get(part) if dataclasses.is_dataclass(kind) else None
            kind = hint if dataclasses.is_dataclass(hint) else None
    names = [name for name in _fields(kind) if not name.startswith("_")] if dataclasses.is_dataclass(kind) else []
    near = difflib.get_close_matches(parts[-1], names, n=1)
    if near:
        return f"did you mean {'.'.join([*parts[:-1], near[0]])}?"
    return "no such setting; `prune-run --cfg job` prints every setting"


def check_added_keys(cfg: DictConfig) -> None:
    """Keys added with ``+`` / ``++`` (Hydra lets them past the schema) that no schema has: nothing reads them."""
    for path, node, kind in _schema_nodes(cfg):
        known = _fields(kind)
        for key in node.keys():
            if key in known:
                continue
            full = f"{path}{key}"
            group = path.split(".")[0]
            if group in GROUPS:
                where = f"{group}={node.name}" if "name" in node else group
                raise ConfigError(f"{full} is not a setting of {where}; {suggest(full, kind)}")
            raise ConfigError(f"unknown setting {full} (added with +?): nothing reads it; {suggest(full, kind)}")


def check_ranges(cfg: DictConfig) -> None:
    """Each number against the range its schema field names (``check=`` metadata, see ``prune.schema.CHECKS``)."""
    for path, node, kind in _schema_nodes(cfg):
        hints = typing.get_type_hints(kind)
        for name, spec in _fields(kind).items():
            check = spec.metadata.get("check")
            if check is None or name not in node:
                continue
            value = _plain(node[name], f"{path}{name}")
            test, phrase = CHECKS[check]
            if value is not None and not test(value):
                optional = type(None) in typing.get_args(hints[name])
                raise ConfigError(f"{path}{name}={_show(value)} must be {phrase}{' or null' if optional else ''}")


def check_objective(data: dict) -> None:
    """``objective``: a numeric metric of metrics.json, and its entry one this job will produce."""
    head, _, entry = str(data["objective"]).partition(".")
    if head not in OBJECTIVES:
        raise ConfigError(f"objective={data['objective']} is not a metric: use one of {', '.join(OBJECTIVES)} "
                          "(optionally .<eval length> / .<task>)")
    entries = {"lengths": [str(n) for n in data["eval"]["lengths"]], "tasks": list(data["eval"]["tasks"]),
               None: []}[OBJECTIVES[head]]
    if (entry or OBJECTIVES[head] == "tasks") and entry not in entries:
        raise ConfigError(f"objective={data['objective']}: {head} has the entries {entries or 'none here'}")
    if head.endswith("_recovered") and data["recovery"].get("name") == "none":
        raise ConfigError(f"objective={data['objective']} needs recovery=lora|full")


def _show(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "[]" if value == [] else ("null" if value is None else str(value).replace("\n", " "))


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
    if model.get("package") and not model.get("path"):  # a packaged model: fetched into cache_dir on first use
        from prune.fetch import PACKAGED

        if model["package"] not in PACKAGED:
            raise ConfigError(f"model.package={model['package']} is unknown: choose one of {', '.join(sorted(PACKAGED))}")
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
            if key == "path" and not (local / "config.json").exists():
                raise ConfigError(f"model.path={value} has no config.json: not a Hugging Face model folder")
        elif _looks_local(str(value)):
            raise ConfigError(f"model.{key}={value}: no such folder")
    folder = Path(os.path.expanduser(str(model["path"])))
    if folder.is_dir():  # a local folder: its files are inputs too (a hub id is checked when it is fetched)
        from prune.model_files import check_model_folder

        tokenizer = model.get("tokenizer_path")
        check_model_folder(folder, Path(os.path.expanduser(str(tokenizer))) if tokenizer else None)


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
