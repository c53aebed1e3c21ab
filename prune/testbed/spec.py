"""What a testbed is: its settings (corpus, model shape, training; the Hydra node ``testbed``), the digest
that names its cache folders, and the model config it builds. No dependency on how it is built or trained,
so ``build``, ``train``, ``graded`` and the config schema all import it without a cycle."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields

from prune.testbed.corpus import BOS_ID, EOS_ID, PAD_ID, CorpusSpec


@dataclass(frozen=True)
class TestbedModelSpec:
    hidden_size: int = 128
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 2048
    rope_theta: float = 500000.0
    init_std: float = 0.08


@dataclass(frozen=True)
class TestbedTrainingSpec:
    lr: float = 3e-3
    warmup_window: int = 128
    warmup_batch: int = 16
    warmup_min_gap: int = 16
    warmup_max_gap: int = 96
    warmup_max_steps: int = 500
    warmup_target_accuracy: float = 0.9
    dense_docs: int = 600
    doc_window: int = 512
    doc_batch: int = 4
    doc_steps: int = 180
    dense_rows: int = 1
    long_window: int = 1024
    long_batch: int = 4
    long_steps: int = 80
    seed: int = 0
    # positive control (prune/testbed/control.py): long-range recall through this one KV group only
    dedicated_layer: int | None = None
    dedicated_group: int = 0
    # true: the group is the only path by wiring (zeros held); false: by staged training (prune.testbed.graded)
    wired: bool = True


@dataclass(frozen=True)
class TestbedSpec:
    __test__ = False  # not a pytest test class

    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    model: TestbedModelSpec = field(default_factory=TestbedModelSpec)
    training: TestbedTrainingSpec = field(default_factory=TestbedTrainingSpec)

    @classmethod
    def from_dict(cls, cfg) -> "TestbedSpec":
        """Build from a (possibly partial) mapping such as the Hydra node ``testbed`` (typed by its schema)."""
        cfg = cfg or {}
        return cls(**{f.name: f.default_factory(**(cfg.get(f.name) or {})) for f in fields(cls)})  # type: ignore[misc]


def json_digest(obj) -> str:
    """A short SHA-256 of a JSON-able value (sorted keys): the name of a cache folder built from it."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]



def model_config(spec: TestbedSpec):
    from transformers import LlamaConfig

    m = spec.model
    return LlamaConfig(
        vocab_size=spec.corpus.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads,
        max_position_embeddings=m.max_positions,
        rope_theta=m.rope_theta,
        initializer_range=m.init_std,
        # the wired control reads out apart from its input; the graded one is an ordinary (tied) LLaMA
        tie_word_embeddings=spec.training.dedicated_layer is None or not spec.training.wired,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
