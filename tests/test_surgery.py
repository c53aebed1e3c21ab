"""Physical pruning equals masking, for every supported architecture; group costs are exact."""
import pytest
import torch

from conftest import tiny_model
from prune.pruning import PruningPlan, apply_plan, masked
from prune.structure import model_shape, projections

ARCHS = ["llama", "mistral", "qwen2"]


def _plan(shape, attention, mlp):
    plan = PruningPlan.keep_all(shape)
    plan.keep_attention = [list(a) for a in attention]
    plan.keep_mlp = [list(m) for m in mlp]
    return plan


def _inputs(vocab=61, batch=2, length=17, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


PLANS = {
    "partial": ([[1], [0, 1], [0]], [[0, 3, 5, 7], list(range(24)), [2, 9, 23]]),
    "empty_blocks": ([[], [0], [1]], [[1, 2], [], list(range(0, 24, 2))]),
    "removed_layer": ([[0], [], [1]], [[4, 5], [], [0]]),
}


def _model(arch: str):
    if arch != "llama_bias":
        return tiny_model(arch)
    model = tiny_model("llama", attention_bias=True, mlp_bias=True)  # every projection has a bias
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("arch", ARCHS + ["llama_bias"])
@pytest.mark.parametrize("which", sorted(PLANS))
def test_pruned_logits_equal_masked_dense(arch, which):
    dense = _model(arch)
    shape = model_shape(dense)
    plan = _plan(shape, *PLANS[which])
    x = _inputs()
    with torch.no_grad(), masked(dense, plan):
        expected = dense(input_ids=x).logits
    pruned = _model(arch)
    apply_plan(pruned, plan)
    with torch.no_grad():
        got = pruned(input_ids=x).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the masked forward really changed something (the plan is not a no-op)
    with torch.no_grad():
        assert not torch.allclose(dense(input_ids=x).logits, expected, atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_matches_plan(arch):
    model = tiny_model(arch)
    shape = model_shape(model)
    plan = _plan(shape, *PLANS["empty_blocks"])
    total_before = sum(p.numel() for p in model.parameters())
    prunable = sum(p.numel() for proj in projections(model) for p in proj.module.parameters())
    assert prunable == shape.prunable_params + _unprunable_biases(model)
    apply_plan(model, plan)
    total_after = sum(p.numel() for p in model.parameters())
    assert total_before - total_after == plan.removed_params(shape)
    assert model_shape(model).prunable_params == plan.params_after(shape)


def _unprunable_biases(model):
    """o_proj / down_proj biases are hidden-sized outputs, not part of any group."""
    return sum(
        proj.module.bias.numel() for proj in projections(model) if proj.module.bias is not None and proj.axis == "in"
    )


def test_removed_layer_makes_model_shallower_and_renumbers_cache_slots():
    model = tiny_model("llama")
    plan = _plan(model_shape(model), *PLANS["removed_layer"])
    apply_plan(model, plan)
    assert model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert model.config.layer_shapes == [[2, 1, 2], [2, 1, 1]]


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_and_backward_after_pruning(arch):
    dense = tiny_model(arch)
    plan = _plan(model_shape(dense), *PLANS["empty_blocks"])  # layer 0 has no attention at all
    x = _inputs(batch=1, length=6)
    with torch.no_grad(), masked(dense, plan):
        expected = dense.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)
    pruned = apply_plan(tiny_model(arch), plan)
    got = pruned.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(got, expected)
    loss = pruned(input_ids=x, labels=x).loss
    loss.backward()
    # every parameter gets a finite gradient, except the norms in front of the removed blocks
    unused = {"model.layers.0.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight"}
    for name, p in pruned.named_parameters():
        if name in unused:
            assert p.grad is None
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_group_cost_is_the_parameter_count_of_the_group():
    model = tiny_model("qwen2")  # with q/k/v biases
    shape = model_shape(model)
    attn = model.model.layers[0].self_attn
    per_group = sum(p.numel() for m in (attn.q_proj, attn.k_proj, attn.v_proj) for p in m.parameters()) // 2
    per_group += attn.o_proj.weight.numel() // 2
    assert shape.attention_group_params == per_group
    mlp = model.model.layers[0].mlp
    assert shape.mlp_channel_params * 24 == sum(p.numel() for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj) for p in m.parameters())
