"""Layer and block importance, activation criteria, depth / layer-weighted / hybrid strategies."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from prune.importance import Calibration, build
from prune.importance.removal import Unit, removal_losses, removed
from prune.pruning import Depth, Global, Hybrid, LayerWeighted, PruningError, apply_plan
from prune.structure import ATTENTION, MLP, model_shape, projections

X = torch.randint(0, 61, (4, 16), generator=torch.Generator().manual_seed(0))


def layer_io(model, layer_idx, x=X):
    """Input and output hidden states of one decoder layer."""
    seen = {}

    def hook(module, args, kwargs, output):
        seen["in"] = args[0] if args else kwargs["hidden_states"]
        seen["out"] = output[0] if isinstance(output, tuple) else output

    h = model.model.layers[layer_idx].register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(input_ids=x)
    h.remove()
    return seen["in"], seen["out"]


def test_removed_attention_block_adds_exactly_nothing():
    """The seed toolkit returned the normalised input, which still leaks into the residual stream."""
    model = tiny_model()
    layer = model.model.layers[1]
    with removed(model, Unit("attention", 1)):
        h, out = layer_io(model, 1)
    with torch.no_grad():
        expected = h + layer.mlp(layer.post_attention_layernorm(h))  # input + only the MLP's contribution
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_removed_mlp_block_and_skipped_layer():
    model = tiny_model()
    layer = model.model.layers[2]
    with removed(model, Unit("mlp", 2)):
        h, out = layer_io(model, 2)
    with torch.no_grad():
        pos = torch.arange(X.shape[1])[None]
        attn, _ = layer.self_attn(layer.input_layernorm(h), position_embeddings=model.model.rotary_emb(h, pos), attention_mask=None)
    torch.testing.assert_close(out, h + attn, rtol=1e-5, atol=1e-5)
    with removed(model, Unit("layer", 0)):
        h, out = layer_io(model, 0)
    assert torch.equal(h, out)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_prefix_cached_removal_equals_the_naive_loop(arch):
    model = tiny_model(arch)
    shape = model_shape(model)
    units = [Unit("layer", i) for i in range(3)] + [Unit(k, i) for i in range(3) for k in ("attention", "mlp")]
    units += [Unit("attention_group", 1, 1), Unit("mlp_channel", 2, 5)]
    base_a, fast = removal_losses(model, X, units, batch_size=3, prefix_cache=True)
    base_b, slow = removal_losses(model, X, units, batch_size=3, prefix_cache=False)
    assert base_a == pytest.approx(base_b, rel=1e-5)
    for u in units:
        assert fast[u] == pytest.approx(slow[u], rel=1e-5), u
    # and the naive loop is itself right: a direct masked forward for one group
    from prune.pruning import PruningPlan, masked

    plan = PruningPlan.keep_all(shape)
    plan.keep_mlp[2] = [c for c in range(24) if c != 5]
    with torch.no_grad(), masked(model, plan):
        direct = model(input_ids=X, labels=X).loss.item()
    assert slow[Unit("mlp_channel", 2, 5)] == pytest.approx(direct, rel=1e-5)


def calib(role="layer"):
    return Calibration({"taylor": X, "layer": X, "block": X}, batch_size=2, progress=False)


def test_layer_and_block_scores_are_loss_increases():
    model = tiny_model()
    res = build("layer").score(model, calib())
    with torch.no_grad():
        base = model(input_ids=X, labels=X).loss.item()
        with removed(model, Unit("layer", 1)):
            skipped = model(input_ids=X, labels=X).loss.item()
    assert res.layer_scores["layer"][1] == pytest.approx(skipped - base, rel=1e-4)
    blocks = build("block").score(model, calib())
    assert set(blocks.layer_scores) == {ATTENTION, MLP} and len(blocks.layer_scores[MLP]) == 3


def test_block_influence_and_angular_match_hand_computation():
    model = tiny_model()
    bi = build("block_influence").score(model, calib()).layer_scores
    ang = build("angular").score(model, calib()).layer_scores
    for i in range(3):
        h, out = layer_io(model, i)
        cos = F.cosine_similarity(h, out, dim=-1).flatten()
        assert bi["layer"][i] == pytest.approx(float((1 - cos).mean()), rel=1e-4)
        assert ang["layer"][i] == pytest.approx(float((cos.clamp(-1, 1).acos() / math.pi).mean()), rel=1e-4)
        assert 0 <= bi["attention"][i] <= 2 and 0 <= ang["mlp"][i] <= 1


def test_wanda_matches_hand_computation():
    model = tiny_model()
    norms = {}
    hooks = [p.module.register_forward_pre_hook(lambda m, a, p=p: norms.__setitem__(id(p.module), norms.get(id(p.module), 0) + a[0].square().sum((0, 1))))
             for p in projections(model)]
    with torch.no_grad():
        model(input_ids=X)
    for h in hooks:
        h.remove()
    got = build("wanda").score(model, Calibration({"taylor": X}, 4, progress=False)).scores
    mlp = model.model.layers[0].mlp
    up_in = norms[id(mlp.up_proj)].sqrt()
    down_in = norms[id(mlp.down_proj)].sqrt()
    c = 7
    want = (mlp.gate_proj.weight[c].abs() * up_in).sum() + (mlp.up_proj.weight[c].abs() * up_in).sum()
    want = want + (mlp.down_proj.weight[:, c].abs() * down_in[c]).sum()
    assert float(got.mlp[0][c]) == pytest.approx(float(want.detach()), rel=1e-4)


def test_depth_pruning_is_physical_and_reloads_exactly(tmp_path):
    from prune.checkpoint import load_pruned, save_pruned

    model = tiny_model()
    shape = model_shape(model)
    layer_scores = {"layer": [0.5, 0.01, 0.3]}
    plan = Depth(ratio=0.3, keep_first=0, keep_last=0).plan(None, shape, layer_scores)
    assert plan.removed_layers == [1]
    params_before = sum(p.numel() for p in model.parameters())
    apply_plan(model, plan)
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    norms = 2 * model.config.hidden_size  # the removed layer's two RMSNorm weights go too
    assert params_before - sum(p.numel() for p in model.parameters()) == plan.removed_params(shape) + norms
    save_pruned(model, None, tmp_path)
    with torch.no_grad():
        assert (load_pruned(tmp_path)(input_ids=X).logits - model(input_ids=X).logits).abs().max().item() == 0.0


def test_depth_and_protection_errors_are_one_line():
    shape = model_shape(tiny_model())
    with pytest.raises(PruningError, match="would remove every one of the 3 layers"):
        Depth(ratio=0.9, keep_first=0, keep_last=0).check(shape)  # (the class defaults keep the first and last)
    with pytest.raises(PruningError, match="unreachable with depth pruning"):
        Depth(ratio=0.5, keep_first=1, keep_last=1).check(shape)
    with pytest.raises(PruningError, match="unreachable: the protections"):
        Global(ratio=0.5, keep_first=2).check(shape)
    with pytest.raises(PruningError, match="needs layer scores|needs layer"):
        Depth(ratio=0.3).plan(None, shape, None)


def test_global_protections_are_respected():
    model = tiny_model()
    shape = model_shape(model)
    scores = build("magnitude").score(model, calib()).scores
    plan = Global(ratio=0.3, keep_first=1, max_layer_fraction=0.6).plan(scores, shape)
    assert plan.keep_attention[0] == [0, 1] and len(plan.keep_mlp[0]) == 24
    for i in (1, 2):
        removed = shape.layer_params(i)[ATTENTION] - len(plan.keep_attention[i]) * shape.attention_group_params
        removed += shape.layer_params(i)[MLP] - len(plan.keep_mlp[i]) * shape.mlp_channel_params
        assert removed <= 0.6 * sum(shape.layer_params(i).values())
    assert plan.removed_params(shape) >= 0.3 * shape.prunable_params


def test_emptied_blocks_are_removed_physically():
    model = tiny_model()
    shape = model_shape(model)
    scores = build("magnitude").score(model, calib()).scores
    scores.attention[1] = scores.attention[1] * 0  # layer 1's attention is worthless
    plan = Global(ratio=0.2, min_attention_groups=0).plan(scores, shape)
    assert plan.keep_attention[1] == []
    apply_plan(model, plan)
    assert model.config.layer_shapes[1][1] == 0


def test_layer_weighted_fractions_follow_the_formula():
    shape = model_shape(tiny_model())
    strategy = LayerWeighted(ratio=0.3, strength=1.0, eps=0.05, max_layer_fraction=0.8)
    r = strategy.fractions([0.2, 1.0, 3.0], shape)
    params = [sum(shape.layer_params(i).values()) for i in range(3)]
    assert sum(ri * p for ri, p in zip(r, params)) == pytest.approx(0.3 * sum(params))
    assert r[0] > r[1] > r[2]  # least important layer pruned most
    capped = LayerWeighted(ratio=0.3, strength=3.0, max_layer_fraction=0.5).fractions([0.01, 1.0, 3.0], shape)
    assert max(capped) <= 0.5 + 1e-9
    assert sum(ri * p for ri, p in zip(capped, params)) == pytest.approx(0.3 * sum(params))
    assert LayerWeighted(ratio=0.3, strength=0.0).fractions([0.2, 1.0, 3.0], shape) == pytest.approx([0.3] * 3)


def test_layer_weighted_and_hybrid_plans_meet_the_target():
    model = tiny_model()
    shape = model_shape(model)
    scores = build("magnitude").score(model, calib()).scores
    layer_scores = {"layer": [0.5, 0.01, 0.3]}
    lw = LayerWeighted(ratio=0.3).plan(scores, shape, layer_scores)
    assert lw.removed_params(shape) >= 0.3 * shape.prunable_params * 0.95
    hy = Hybrid(ratio=0.5, depth_share=0.5, keep_first=0, keep_last=0).plan(scores, shape, layer_scores)
    assert hy.removed_layers == [1]
    assert hy.removed_params(shape) >= 0.5 * shape.prunable_params


def test_width_multiple_rounds_kept_mlp_widths():
    model = tiny_model(intermediate_size=40)
    shape = model_shape(model)
    scores = build("magnitude").score(model, calib()).scores
    plan = Global(ratio=0.3, width_multiple=8).plan(scores, shape)
    assert all(len(k) % 8 == 0 for k in plan.keep_mlp)
    assert abs(plan.removed_params(shape) / shape.prunable_params - 0.3) < 0.1
    # the restored / dropped channels are those nearest the cut: kept channels outscore removed ones
    for layer, kept in enumerate(plan.keep_mlp):
        removed = set(range(40)) - set(kept)
        if kept and removed:
            assert min(scores.mlp[layer][list(kept)]) >= max(scores.mlp[layer][list(removed)])


def test_width_rounding_never_breaks_the_per_layer_cap():
    model = tiny_model(intermediate_size=40)
    shape = model_shape(model)
    scores = build("magnitude").score(model, calib()).scores
    cap = 0.5  # layer 1 ends at the cap; rounding its width down to a multiple of 16 would break it
    plan = Global(ratio=0.3, width_multiple=16, max_layer_fraction=cap).plan(scores, shape)
    for i in range(3):
        removed = shape.layer_params(i)[ATTENTION] - len(plan.keep_attention[i]) * shape.attention_group_params
        removed += shape.layer_params(i)[MLP] - len(plan.keep_mlp[i]) * shape.mlp_channel_params
        assert removed <= cap * sum(shape.layer_params(i).values()) + 1e-9, i
        assert len(plan.keep_mlp[i]) % 16 == 0 or len(plan.keep_mlp[i]) == 40


def test_per_layer_normalization_keeps_the_order_of_negative_scores():
    from prune.pruning.strategies import normalize_per_layer
    from prune.structure import GroupScores

    scores = GroupScores([torch.tensor([-3.0, -1.0, 2.0])], [torch.tensor([-0.5, -0.25])])
    for how in ("mean", "max"):
        out = normalize_per_layer(scores, how)
        assert torch.equal(out.attention[0].argsort(), scores.attention[0].argsort())
        assert torch.equal(out.mlp[0].argsort(), scores.mlp[0].argsort())
        assert out.mlp[0].abs().max() < 10  # no division by a clamped, near-zero negative mean


def test_uniform_refuses_a_ratio_above_the_layer_cap():
    from prune.pruning import Uniform

    with pytest.raises(PruningError, match="max_layer_fraction=0.2"):
        Uniform(ratio=0.3, max_layer_fraction=0.2).check(model_shape(tiny_model()))
