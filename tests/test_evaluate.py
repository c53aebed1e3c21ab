"""Perplexity is the standard token-weighted one, checked against direct computations."""
import math

import pytest
import torch

from conftest import tiny_model
from prune.eval.perplexity import effective_lengths, perplexity


def test_perplexity_equals_direct_token_weighted_computation():
    model = tiny_model()
    windows = torch.randint(0, 61, (5, 33), generator=torch.Generator().manual_seed(2))
    res = perplexity(model, windows, batch_size=2)
    with torch.no_grad():
        # Hugging Face's own shifted loss, one window at a time; equal window lengths make the token mean
        # over all windows the mean of the per-window means
        losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in windows]
    assert res["tokens"] == 5 * 32  # the first token of each window is never scored; nothing is padded
    assert res["nll"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert res["ppl"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)


def test_batch_size_does_not_change_perplexity():
    model = tiny_model()
    windows = torch.randint(0, 61, (6, 20), generator=torch.Generator().manual_seed(3))
    assert perplexity(model, windows, 1)["nll"] == pytest.approx(perplexity(model, windows, 4)["nll"], rel=1e-6)


def test_eval_lengths_are_capped_at_max_positions():
    assert effective_lengths([128, 512, 2048], 512) == [128, 512]
    assert effective_lengths([128, 2048], 1024) == [128, 1024]


@pytest.mark.slow
def test_stories260k_perplexity_matches_the_published_measurement(stories260k, tinystories_file):
    """One BOS, non-overlapping windows, mean next-token loss: the shared README reports 1.680 / 1.619."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prune.data import evaluation_windows, tokenize_documents

    tok = AutoTokenizer.from_pretrained(stories260k)
    model = AutoModelForCausalLM.from_pretrained(stories260k).eval()
    stream = tokenize_documents([tinystories_file.read_text()], tok)
    assert stream[0].item() == tok.bos_token_id and (stream == tok.bos_token_id).sum() == 1
    for length, loss in ((128, 1.680), (512, 1.619)):
        res = perplexity(model, evaluation_windows(stream, length), batch_size=16)
        assert res["nll"] == pytest.approx(loss, abs=0.002)
