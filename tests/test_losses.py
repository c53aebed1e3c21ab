"""The chunked LM-head loss equals the plain cross entropy of the full logits, in value and in gradient."""
import pytest
import torch
from conftest import tiny_model

import prune.eval.losses as losses
from prune.eval.losses import LinearNLL, next_token_nll, plain_head, sequence_nll, token_nll


def _prunable(model):
    for p in model.parameters():
        p.requires_grad_(False)
    weights = [model.model.layers[0].mlp.up_proj.weight, model.model.layers[2].self_attn.q_proj.weight,
               model.model.layers[1].self_attn.v_proj.weight]
    for w in weights:
        w.requires_grad_(True)
    return weights


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("tied", [False, True])
def test_token_nll_and_its_gradient_equal_the_full_logits_loss(model_type, tied, monkeypatch):
    model = tiny_model(model_type, tie_word_embeddings=tied, dtype=torch.float64)
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 61 * 7)  # 7 rows per chunk: 48 rows make 7 chunks, the last short
    weights = _prunable(model)  # as in the gradient pass: only prunable weights require grad
    assert plain_head(model) is model.lm_head
    ids = torch.randint(0, 61, (3, 17), generator=torch.Generator().manual_seed(1))
    # a different weight per token: a backward that ignored the incoming per-token gradient would differ
    per_token = torch.rand(3, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    chunked = token_nll(model, ids)
    plain = next_token_nll(model(input_ids=ids).logits, ids)
    assert chunked.shape == plain.shape == (3, 16)
    torch.testing.assert_close(chunked.double(), plain.double(), rtol=0, atol=1e-5)
    g_chunked = torch.autograd.grad((chunked * per_token).sum(), weights)
    g_plain = torch.autograd.grad((plain * per_token).sum(), weights)
    for a, b in zip(g_chunked, g_plain):
        assert b.abs().max() > 1e-3
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_linear_nll_gradient_is_softmax_minus_onehot_through_the_head():
    torch.manual_seed(0)
    hidden = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64)
    targets = torch.randint(0, 11, (9,))
    nll = LinearNLL.apply(hidden, weight, targets, 4)
    expected = torch.nn.functional.cross_entropy((hidden @ weight.T).float(), targets, reduction="none")
    torch.testing.assert_close(nll, expected)
    upstream = torch.rand(9, dtype=torch.float32)
    (grad,) = torch.autograd.grad(nll, hidden, upstream)
    probs = torch.softmax(hidden.detach() @ weight.T, dim=-1)
    probs[torch.arange(9), targets] -= 1
    torch.testing.assert_close(grad, upstream.double()[:, None] * (probs @ weight), rtol=1e-5, atol=1e-7)


def test_no_gradient_work_without_grad():
    model = tiny_model("llama")
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        out = token_nll(model, ids)
    assert not out.requires_grad
    torch.testing.assert_close(sequence_nll(model, ids), out.mean(1), rtol=0, atol=0)


def test_scaled_or_trainable_heads_take_the_plain_path():
    model = tiny_model("llama")
    model.config.logit_scale = 0.5  # logits = 0.5 * head(h) in such a model: the chunked path would be wrong
    assert plain_head(model) is None
    model.config.logit_scale = None
    model.lm_head.weight.requires_grad_(True)  # a head being trained needs its own gradient
    assert plain_head(model) is None
    with torch.no_grad():  # ... but not in evaluation
        assert plain_head(model) is model.lm_head
    model.lm_head.weight.requires_grad_(False)
    assert plain_head(model) is model.lm_head
