"""FLOPs from the model shape: a hand count for a tiny LLaMA, and torch's own FLOP counter on its forward."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from prune.structure import model_shape, shape_from_config


@pytest.fixture(scope="module")
def tiny():
    config = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=64, attn_implementation="eager")
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_flop_count_by_hand(tiny):
    shape = model_shape(tiny)
    # a layer: q 8x8 + k 8x4 + v 8x4 + o 8x8 = 192, gate/up/down 3 x 8x16 = 384; the LM head 32x8 = 256
    assert shape.matmul_params == 2 * (192 + 384) + 256 == 1408
    # per token at seq_len 5: 2 x 1408, and per layer 2 x 2 x 5 keys x 4 (head_dim) x 2 heads = 160
    assert shape.forward_flops(5, sequences=3) == (2 * 1408 + 2 * 160) * 5 * 3 == 47_040
    assert shape_from_config(tiny.config) == shape  # the count needs no weights


def test_flop_count_matches_torch_flop_counter(tiny):
    tokens = torch.randint(0, 32, (3, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tiny(input_ids=tokens, use_cache=False)
    assert counter.get_total_flops() == model_shape(tiny).forward_flops(5, sequences=3)


def test_flops_count_towards_the_innermost_open_phase():
    import time

    from prune.profiling import PhaseRecorder

    recorder = PhaseRecorder("cpu")
    with recorder.phase("eval"):
        time.sleep(0.02)
        recorder.count(2e9)
        with recorder.phase("inner"):
            recorder.count(1e9)
        recorder.count(None)  # work of unknown size
    recorder.count(5e9)  # outside any phase: nowhere to put it
    assert recorder.flops == {"eval": 2e9, "inner": 1e9}
    assert recorder.flops_per_s()["eval"] == pytest.approx(2e9 / recorder.timings["eval"])
