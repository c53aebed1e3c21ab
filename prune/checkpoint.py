"""Save a pruned model as a Hugging Face folder, and load it back with identical weights.

Where every decoder layer kept the same widths (e.g. ``pruning=uniform``, or ``pruning=global`` with
``pruning.uniform_widths=true``) the folder is a standard one of the source family (``model_type: llama``
with the kept ``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size`` and the unchanged
``head_dim``): plain ``AutoModelForCausalLM.from_pretrained``, serving and conversion tools read it. Only
where the widths differ per layer is it a ``pruned_<base>`` folder with its modeling file.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from torch import nn

import prune.modeling_pruned as modeling
from prune.errors import disk_full
from prune.structure import base_model_type, model_shape

log = logging.getLogger(__name__)

try:  # what a config class's validators raise in recent transformers (not a ValueError)
    from huggingface_hub.errors import StrictDataclassError as _StrictError
except ImportError:  # older huggingface_hub: configs are not validated
    _StrictError = ValueError
_CONFIG_REFUSALS = (ValueError, TypeError, _StrictError)


def uniform_widths(model: nn.Module) -> list[int] | None:
    """``[num_heads, num_kv_heads, intermediate_size]`` shared by every decoder layer (no block emptied), else None."""
    shapes = {tuple(s.as_list()) for s in model_shape(model).layers}
    if len(shapes) != 1:
        return None
    shape = list(shapes.pop())
    return shape if min(shape) > 0 else None


def _config_data(model: nn.Module) -> dict:
    data = model.config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "layer_shapes"):
        data.pop(key, None)
    # the head size stays that of the source when heads are removed (hidden_size / heads no longer gives it)
    data["head_dim"] = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    return data


def _standard_config(config_cls, data: dict, widths: list[int]):
    """The source family's own config with the kept widths, or None where that class refuses them.

    Recent transformers validate ``hidden_size % num_attention_heads == 0`` even when ``head_dim`` is given, so
    e.g. 6 of 8 heads at hidden 64 cannot be a standard llama config; such a model is saved (and reloads) in the
    ``pruned_<base>`` format instead, which keeps the source's head count in the config and the widths per layer."""
    try:
        return config_cls.from_dict({**data, "num_attention_heads": widths[0], "num_key_value_heads": widths[1],
                                     "intermediate_size": widths[2]})
    except _CONFIG_REFUSALS as err:
        log.info("pruned model: the standard %s config refuses %d heads at hidden size %d (%s)", config_cls.__name__,
                 widths[0], data["hidden_size"], str(err).strip().splitlines()[-1].strip())
        return None


def save_pruned(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """Write config, safetensors and tokenizer to ``out_dir``: a standard config of the source family where
    every layer kept the same widths, else a ``pruned_<base>`` config (``layer_shapes``) and its modeling file.

    Everything is written into ``<out_dir>.partial-<pid>`` first, which is renamed to ``out_dir`` once complete
    (an earlier ``out_dir`` is removed just before): a process killed while saving leaves no folder under the
    final name that looks complete but is not, and the next save removes the partial one."""
    final = Path(out_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f"{final.name}.partial-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    out = final.with_name(f"{final.name}.partial-{os.getpid()}")
    out.mkdir()
    try:
        try:
            _write_folder(model, tokenizer, out)
        except Exception as exc:
            full = disk_full(exc, final)
            if full is None:
                raise
            raise full from exc
        if final.exists():
            shutil.rmtree(final)
        os.replace(out, final)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return final


def _write_folder(model: nn.Module, tokenizer, out: Path) -> None:
    base = base_model_type(model.config)
    config_cls, model_cls = modeling.PRUNED_CLASSES[base]
    data = _config_data(model)
    widths = uniform_widths(model)
    standard = _standard_config(config_cls.__bases__[0], data, widths) if widths else None
    if standard is not None:
        config, model_cls = standard, model_cls.__bases__[0]  # LlamaConfig, LlamaForCausalLM, ...
        log.info("pruned model: every layer keeps %d heads, %d KV heads, %d MLP channels: saved as a standard %s "
                 "model (plain from_pretrained loads it)", *widths, base)
    else:
        config = config_cls.from_dict(data)
        config.layer_shapes = [s.as_list() for s in model_shape(model).layers]
        config.auto_map = {
            "AutoConfig": f"modeling_pruned.{config_cls.__name__}",
            "AutoModelForCausalLM": f"modeling_pruned.{model_cls.__name__}",
        }
        log.info("pruned model: widths differ per layer: saved as %s (load with `import prune` or trust_remote_code=True;"
                 " pruning.uniform_widths=true gives a standard %s model)", config.model_type, base)
    model.config = config
    model.__class__ = model_cls  # same modules and weights; only the class that knows the layer shapes
    model.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    if not widths:
        shutil.copyfile(modeling.__file__, out / "modeling_pruned.py")


def load_pruned(path: str | Path, **kwargs) -> nn.Module:
    """Load a folder written by ``save_pruned`` (or any LLaMA-family folder) with its exact weights."""
    from transformers import AutoModelForCausalLM

    modeling.register_auto_classes()
    model, info = AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True, **kwargs)
    # transformers fills a tensor missing from the checkpoint with fresh random values and only warns:
    # a pruned model that reloads like that looks fine and is silently wrong, so refuse it here.
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    if problems:
        detail = "; ".join(f"{k}: {sorted(map(str, v))[:3]}" for k, v in problems.items())
        raise ValueError(f"{path} does not hold exactly the model's weights ({detail}); it was not written by save_pruned "
                         "or has been altered")
    return model
