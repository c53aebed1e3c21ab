"""Save a pruned model as a Hugging Face folder, and load it back with identical weights."""
from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

import prune.modeling_pruned as modeling
from prune.structure import base_model_type, model_shape


def save_pruned(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """Write config (with ``layer_shapes``), safetensors, tokenizer and the modeling file to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = base_model_type(model.config)
    config_cls, model_cls = modeling.PRUNED_CLASSES[base]
    data = model.config.to_dict()
    for key in ("model_type", "architectures", "auto_map"):
        data.pop(key, None)
    config = config_cls.from_dict(data)
    config.layer_shapes = [s.as_list() for s in model_shape(model).layers]
    config.auto_map = {
        "AutoConfig": f"modeling_pruned.{config_cls.__name__}",
        "AutoModelForCausalLM": f"modeling_pruned.{model_cls.__name__}",
    }
    model.config = config
    model.__class__ = model_cls  # same modules and weights; only the class that knows the layer shapes
    model.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    shutil.copyfile(modeling.__file__, out / "modeling_pruned.py")
    return out


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
