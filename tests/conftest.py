"""Shared fixtures. Every test runs offline with caches and outputs in a temporary folder."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# the repository's own tooling (findings page, testbed analysis) is not installed with prune; tests import it
import sys  # noqa: E402

sys.path.insert(0, str(REPO / "experiments"))
SHARED = REPO.parent / "shared"
CONF = REPO / "prune" / "conf"
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="prune-lab-tests-"))

# Set before transformers / datasets / wandb are imported by any test module.
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "HF_HOME": str(_SESSION_TMP / "hf"),
    "HF_DATASETS_CACHE": str(_SESSION_TMP / "hf" / "datasets"),
    "WANDB_DIR": str(_SESSION_TMP / "wandb"),
    "WANDB_CACHE_DIR": str(_SESSION_TMP / "wandb-cache"),
    "WANDB_CONFIG_DIR": str(_SESSION_TMP / "wandb-config"),
    "PRUNE_LAB_CACHE": os.environ.get("PRUNE_LAB_TEST_CACHE", str(_SESSION_TMP / "cache")),
    "PRUNE_LAB_OUTPUTS": str(_SESSION_TMP / "outputs"),
    "MPLBACKEND": "Agg",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[key] = value

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture(scope="session")
def cache_dir() -> str:
    return os.environ["PRUNE_LAB_CACHE"]


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared test assets live beside the checkout)")
    return path


@pytest.fixture
def stories260k() -> Path:
    return shared_path("models", "stories260k")


@pytest.fixture
def tinystories_file() -> Path:
    return shared_path("data", "tinystories", "tinystories_validation_head.txt")


def tiny_config(model_type: str = "llama", **overrides):
    """A random tiny LLaMA-family config with GQA (4 query heads sharing 2 KV heads)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[model_type]
    kwargs = dict(
        vocab_size=61, hidden_size=32, intermediate_size=24, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return cls(**kwargs)


def tiny_model(model_type: str = "llama", seed: int = 0, dtype=torch.float32, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), attn_implementation="sdpa")
    if model_type == "qwen2":  # random, non-zero q/k/v biases so that they matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.1)
    # a less degenerate random model than the default 0.02 init
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.to(dtype).eval()


@pytest.fixture(scope="session")
def tiny_testbed(cache_dir):
    """The small testbed used by job tests (built once per session, ~15 s)."""
    from omegaconf import OmegaConf

    from prune.testbed.build import TestbedSpec, ensure_model

    cfg = compose_config("testbed=tiny")
    spec = TestbedSpec.from_dict(OmegaConf.to_container(cfg.testbed, resolve=True))
    return spec, ensure_model(spec, cache_dir, progress=False)


def compose_config(*overrides: str):
    from prune.schema import compose

    return compose(*overrides)
