"""The models prune-bench times: seeded random LLaMAs of a given shape, presets, random token windows."""
from __future__ import annotations

from dataclasses import dataclass

import torch


# --------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class Shape:
    """A random LLaMA config."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    rope_theta: float = 500000.0
    max_positions: int = 4096
    tie_embeddings: bool = False

    def config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=self.max_positions,
            rope_theta=self.rope_theta,
            tie_word_embeddings=self.tie_embeddings,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            attn_implementation="sdpa",
        )


def _testbed_shape() -> Shape:
    """The default testbed model's shape (taken from its spec, so the two cannot drift apart)."""
    from prune.testbed.build import TestbedSpec

    spec = TestbedSpec()
    m = spec.model
    return Shape(layers=m.num_layers, hidden=m.hidden_size, heads=m.num_heads, kv_heads=m.num_kv_heads,
                 intermediate=m.intermediate_size, vocab=spec.corpus.vocab_size, rope_theta=m.rope_theta,
                 max_positions=m.max_positions, tie_embeddings=True)


TESTBED_SHAPE = _testbed_shape()
BENCH_SHAPE = Shape(layers=12, hidden=768, heads=12, kv_heads=4, intermediate=2048, vocab=32000)
LLAMA3_8B_SHAPE = Shape(layers=32, hidden=4096, heads=32, kv_heads=8, intermediate=14336, vocab=128256,
                        rope_theta=500000.0, max_positions=8192)
QUICK_SHAPE = Shape(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=256, max_positions=512)

PRESETS: dict[str, dict] = {
    # ~3-4 minutes on 2 idle CPU cores (about 5-6 when other processes share them)
    "cpu": dict(
        shape=BENCH_SHAPE, taylor_model="testbed", seq_len=512, batch_size=4, num_samples=16, repeats=5, warmup=1,
        exact=True, memory_model="bench", memory_seq_len=64, memory_batch_size=2, memory_num_samples=4,
        prefill_batch=4, prefill_len=256, decode_batches=[1], prompt_len=32, new_tokens=64,
        removal_model="testbed", removal_seq_len=512, removal_num_samples=8,
    ),
    # Llama-3-8B shapes, bf16 on one GPU: everything on the 8B model; under 8 minutes on an H200
    "llama3_8b": dict(
        shape=LLAMA3_8B_SHAPE, taylor_model="bench", seq_len=512, seq_lens=[128, 512, 2048], batch_size=4,
        num_samples=8, repeats=1, warmup=1, exact=True, memory_model="same",
        prefill_batch=4, prefill_len=512, decode_batches=[1, 8], prompt_len=128, new_tokens=64,
        removal_model="bench", removal_seq_len=512, removal_num_samples=4,
    ),
    # a few seconds, for tests
    "quick": dict(
        shape=QUICK_SHAPE, taylor_model="bench", seq_len=32, batch_size=2, num_samples=4, repeats=1, warmup=1,
        exact=True, memory_model="same", prefill_batch=2, prefill_len=32, decode_batches=[1, 2], prompt_len=8,
        new_tokens=8, removal_model="bench", removal_seq_len=32, removal_num_samples=4,
    ),
}


def build_model(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A seeded random LLaMA built directly on ``device`` (no CPU copy of GPU weights)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(shape.config(), dtype=dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def random_windows(n: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Token windows on the CPU (each loop moves its batches to the device itself)."""
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
