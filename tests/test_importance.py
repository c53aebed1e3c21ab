"""Importance scores against hand computations on tiny random models."""
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from prune.importance import Calibration, build
from prune.importance.gradients import gradient_pass
from prune.structure import model_shape

S, L = 8, 12  # sequences, tokens per sequence


def windows(seed=0, n=S, length=L, vocab=61):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def mean_nll(model, x):
    logits = model(input_ids=x).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


def prunable_params(model):
    out = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        out += [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight, m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight]
        out += [b for b in (a.q_proj.bias, a.k_proj.bias, a.v_proj.bias) if b is not None]
    return out


def grads_of(model, x):
    params = prunable_params(model)
    return dict(zip(map(id, params), torch.autograd.grad(mean_nll(model, x), params)))


def hand_group_sums(model, elementwise):
    """Written independently of prune.structure: slice every group by hand."""
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    attention, mlp = [], []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        e = lambda p: elementwise(p)  # noqa: E731
        groups = []
        for g in range(cfg.num_key_value_heads):
            q = slice(g * rep * hd, (g + 1) * rep * hd)
            kv = slice(g * hd, (g + 1) * hd)
            total = e(a.q_proj.weight)[q].sum() + e(a.k_proj.weight)[kv].sum() + e(a.v_proj.weight)[kv].sum()
            total = total + e(a.o_proj.weight)[:, q].sum()
            if a.q_proj.bias is not None:
                total = total + e(a.q_proj.bias)[q].sum() + e(a.k_proj.bias)[kv].sum() + e(a.v_proj.bias)[kv].sum()
            groups.append(float(total))
        attention.append(torch.tensor(groups, dtype=torch.float64))
        mlp.append(
            (e(m.gate_proj.weight).sum(1) + e(m.up_proj.weight).sum(1) + e(m.down_proj.weight).sum(0)).double()
        )
    return attention, mlp


def assert_scores_close(scores, attention, mlp, rtol=1e-4):
    for got, want in zip(scores.attention + scores.mlp, attention + mlp):
        torch.testing.assert_close(got, want, rtol=rtol, atol=1e-10)


def run(method, model, x, batch_size=2, **kwargs):
    return build(method, **kwargs).score(model, Calibration({"taylor": x}, batch_size, progress=False))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_taylor_first_order_element_matches_hand_computation(arch):
    model, x = tiny_model(arch), windows()
    G = grads_of(model, x)  # gradient of the mean loss over all 8 sequences, in one go
    want = hand_group_sums(model, lambda p: (p.detach() * G[id(p)]).abs())
    assert_scores_close(run("taylor_1st", model, x).scores, *want)


def test_taylor_first_order_vector_granularity():
    model, x = tiny_model(), windows()
    G = grads_of(model, x)
    attention, mlp = hand_group_sums(model, lambda p: p.detach() * G[id(p)])
    got = run("taylor_1st", model, x, granularity="vector").scores
    assert_scores_close(got, [t.abs() for t in attention], [t.abs() for t in mlp])


def per_sequence_fisher(model, x):
    fisher = {}
    for row in x:
        for key, g in grads_of(model, row[None]).items():
            fisher[key] = fisher.get(key, 0) + g.square() / len(x)
    return fisher


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_taylor_second_order_exact_matches_per_sequence_fisher(arch):
    model, x = tiny_model(arch), windows()
    G, Fs = grads_of(model, x), per_sequence_fisher(model, x)
    first = hand_group_sums(model, lambda p: (p.detach() * G[id(p)]).abs())
    second = hand_group_sums(model, lambda p: 0.5 * p.detach().square() * Fs[id(p)])
    want = ([a + b for a, b in zip(first[0], second[0])], [a + b for a, b in zip(first[1], second[1])])
    assert_scores_close(run("taylor_2nd", model, x, fisher="exact").scores, *want)


def test_batch_fisher_is_the_seed_formula_over_every_batch():
    model, x = tiny_model(), windows()
    batch_sq = {}
    for batch in x.split(2):  # E_b[g_b^2] over all four batches, not the last one only
        for key, g in grads_of(model, batch).items():
            batch_sq[key] = batch_sq.get(key, 0) + g.square() / 4
    want = hand_group_sums(model, lambda p: p.detach().square() * batch_sq[id(p)])
    grads = gradient_pass(model, x, batch_size=2, fisher="batch", progress=False)
    assert_scores_close(grads.second_moment, *want)


def test_second_order_term_changes_when_only_the_first_batch_changes():
    model, x = tiny_model(), windows()
    other = x.clone()
    other[:2] = windows(seed=99, n=2)
    for fisher in ("batch", "sample", "exact", "token"):
        a = gradient_pass(model, x, 2, fisher=fisher, progress=False).second_moment
        b = gradient_pass(model, other, 2, fisher=fisher, progress=False).second_moment
        assert (a.flat("attention") - b.flat("attention")).abs().max() > 1e-3 * a.flat("attention").abs().max(), fisher


def test_sample_fisher_is_exact_with_batches_of_one():
    model, x = tiny_model(), windows()
    exact = gradient_pass(model, x, 1, fisher="exact", progress=False).second_moment
    sample = gradient_pass(model, x, 1, fisher="sample", progress=False).second_moment
    for a, b in zip(exact.attention + exact.mlp, sample.attention + sample.mlp):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-12)


def test_sample_fisher_estimates_per_sequence_fisher_and_batch_fisher_does_not():
    """The unbiased estimate tracks E_s[g_s^2]; the seed's E_b[g_b^2] is about B times too small."""
    model, x = tiny_model(), windows(n=64)
    exact = gradient_pass(model, x, 4, fisher="exact", progress=False).second_moment
    sample = gradient_pass(model, x, 4, fisher="sample", progress=False).second_moment
    batch = gradient_pass(model, x, 4, fisher="batch", progress=False).second_moment
    e, s, b = (torch.cat([t.flatten() for t in r.attention + r.mlp]) for r in (exact, sample, batch))
    assert abs(float(s.sum() / e.sum()) - 1) < 0.15
    assert torch.corrcoef(torch.stack([e, s]))[0, 1] > 0.9
    assert 2.5 < float(e.sum() / b.sum()) < 6.0  # B = 4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_second_order_term_survives_half_precision(dtype):
    """Squares are taken in fp32: a half-precision model's Fisher term is not flushed to zero."""
    x = windows()
    ref = gradient_pass(tiny_model(), x, 2, fisher="batch", progress=False).second_moment
    half = gradient_pass(tiny_model(dtype=dtype), x, 2, fisher="batch", progress=False).second_moment
    r, h = ref.flat("mlp"), half.flat("mlp")
    assert (h > 0).float().mean() > 0.99
    assert abs(float(h.sum() / r.sum()) - 1) < 0.1


def test_magnitude_and_random():
    model = tiny_model("qwen2")
    want = hand_group_sums(model, lambda p: p.detach().abs())
    assert_scores_close(run("magnitude", model, windows()).scores, *want)
    calib = lambda seed: Calibration({}, 2, seed=seed, progress=False)  # noqa: E731
    r0, r0b, r1 = (build("random").score(model, calib(s)).scores.flat("mlp") for s in (0, 0, 1))
    assert torch.equal(r0, r0b) and not torch.equal(r0, r1)


@pytest.mark.parametrize("strategy", ["global", "layer_weighted"])
def test_random_baseline_removes_the_same_expected_share_of_attention_and_mlp(strategy):
    """A random choice: over many seeds, the share of attention parameters removed is the share of MLP
    parameters removed (plain uniform scores under a score/cost ranking removed ~all attention first)."""
    from prune.pruning import Global, LayerWeighted
    from prune.structure import ATTENTION, MLP

    model = tiny_model(num_key_value_heads=4, num_attention_heads=8, hidden_size=64, intermediate_size=64, num_hidden_layers=4)
    shape = model_shape(model)
    cls = {"global": Global, "layer_weighted": LayerWeighted}[strategy]
    layer_scores = {"layer": [1.0, 2.0, 1.0, 0.5]}
    shares = {ATTENTION: [], MLP: []}
    for seed in range(200):
        scores = build("random").score(model, Calibration({}, 2, seed=seed, progress=False)).scores
        plan = cls(ratio=0.4).plan(scores, shape, layer_scores)
        for block, keep in ((ATTENTION, plan.keep_attention), (MLP, plan.keep_mlp)):
            total = sum(shape.group_counts(block))
            shares[block].append(1 - sum(len(k) for k in keep) / total)
    attention, mlp = (sum(v) / len(v) for v in (shares[ATTENTION], shares[MLP]))
    assert abs(attention - mlp) < 0.05 and abs(mlp - 0.4) < 0.05, (attention, mlp)
    assert len(set(shares[ATTENTION])) > 1  # a random set, not one fixed choice


def test_per_layer_gradient_statistics_match_hand_computation():
    model, x = tiny_model(), windows()
    G = grads_of(model, x)
    result = run("taylor_1st", model, x)
    for i, layer in enumerate(model.model.layers):
        a, m = layer.self_attn, layer.mlp
        attn = torch.cat([G[id(p.weight)].abs().flatten() for p in (a.q_proj, a.k_proj, a.v_proj, a.o_proj)])
        mlp = torch.cat([G[id(p.weight)].abs().flatten() for p in (m.gate_proj, m.up_proj, m.down_proj)])
        row = result.grad_stats["pass"][i]
        assert row["attention"]["abs_mean"] == pytest.approx(float(attn.mean()), rel=1e-4)
        assert row["attention"]["abs_std"] == pytest.approx(float(attn.std(unbiased=False)), rel=1e-3)
        assert row["mlp"]["abs_mean"] == pytest.approx(float(mlp.mean()), rel=1e-4)
    # one entry per calibration batch, each with its own statistics
    per_batch = result.grad_stats["batches"]
    assert len(per_batch) == S // 2
    first = grads_of(model, x[:2])
    m0 = model.model.layers[0].mlp
    batch0 = torch.cat([first[id(p.weight)].abs().flatten() for p in (m0.gate_proj, m0.up_proj, m0.down_proj)])
    assert per_batch[0][0]["mlp"]["abs_mean"] == pytest.approx(float(batch0.mean()), rel=1e-4)


def test_only_prunable_weights_get_gradients_and_flags_are_restored():
    model, x = tiny_model(), windows()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    seen = []
    model.model.embed_tokens.weight.register_hook(lambda g: seen.append("embed"))
    run("taylor_2nd", model, x)
    assert not seen
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("already_on", [False, True])
def test_gradient_checkpointing_gives_the_same_scores_and_is_left_as_found(already_on):
    model, x = tiny_model(), windows()
    plain = run("taylor_2nd", model, x).scores
    from prune.models import is_checkpointing, set_checkpointing

    if already_on:
        set_checkpointing(model, True)
    checkpointed = run("taylor_2nd", model, x, gradient_checkpointing=True).scores
    assert is_checkpointing(model) == already_on and not model.training
    for a, b in zip(plain.attention + plain.mlp, checkpointed.attention + checkpointed.mlp):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("fisher", ["sample", "batch"])
def test_out_of_memory_splits_batches_without_changing_scores(fisher):
    model, x = tiny_model(), windows()
    want = run("taylor_2nd", model, x, batch_size=4, fisher=fisher)
    calls = []

    def fail_on_big_batches(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append(ids.shape[0])
        if ids.shape[0] > 1:
            raise torch.OutOfMemoryError("simulated CUDA out of memory")

    # on the model's body: every pass runs it (the chunked loss calls model.model, not model's own forward)
    handle = model.model.register_forward_pre_hook(fail_on_big_batches, with_kwargs=True)
    try:
        got = run("taylor_2nd", model, x, batch_size=4, fisher=fisher)
    finally:
        handle.remove()
    assert got.extra["micro_batch_size"] == 1 and got.extra["oom_restarts"] == 2
    assert_scores_close(got.scores, want.scores.attention, want.scores.mlp, rtol=1e-5)
    assert max(calls) == 4 and calls[-1] == 1


def test_model_shape_reports_groups():
    shape = model_shape(tiny_model())
    assert [s.num_kv_heads for s in shape.layers] == [2, 2, 2]
    assert shape.heads_per_group == 2


def hand_group_sums_tensor(model, per_param):
    return torch.cat([torch.cat(part) for part in hand_group_sums(model, per_param)])


def test_sample_fisher_correction_is_exact_when_the_mean_dominates():
    """Identical sequences: every g_s equals G, so E_s[w^2 g_s^2] = w^2 G^2 exactly. Dropping the
    correction gives B times that; flipping its sign gives (2SB - B - S) / (S - B) times it."""
    model = tiny_model()
    x = windows(n=1).repeat(S, 1)
    G = grads_of(model, x)
    want = hand_group_sums_tensor(model, lambda p: p.detach().square() * G[id(p)].square())
    for B in (2, 4):
        got = gradient_pass(model, x, B, fisher="sample", progress=False).second_moment
        got = torch.cat([t for t in got.attention + got.mlp])
        torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-12)


def test_sequence_fisher_formula_and_clip():
    from prune.importance.fisher import sequence_fisher
    from prune.structure import GroupScores

    def scores(v):
        return GroupScores([torch.tensor([v], dtype=torch.float64)], [torch.tensor([v], dtype=torch.float64)])

    S, B = 8, 2
    # mean_b(g_b^2) = 3, G^2 = 1: ((S-1) B 3 - S (B-1) 1) / (S - B) = (42 - 8) / 6
    assert float(sequence_fisher(scores(3.0), scores(1.0), S, B).mlp[0]) == pytest.approx(34 / 6)
    # a noisy estimate below zero is negative before the clip and 0 after it
    raw = sequence_fisher(scores(0.1), scores(1.0), S, B)
    assert float(raw.attention[0]) < 0
    model, x = tiny_model(), windows(n=1).repeat(S, 1)
    x[1::2, 3:] = windows(seed=5, n=4, length=L - 3)  # two kinds of sequence: small spread, large mean
    for fisher in ("sample", "token"):
        second = gradient_pass(model, x, B, fisher=fisher, progress=False).second_moment
        assert all(float(t.min()) >= 0 for t in second.attention + second.mlp), fisher


def test_token_fisher_is_the_squared_mean_for_identical_sequences():
    """With identical sequences F_s = G^2, and [(S T - 1) G^2 - S (T - 1) G^2] / (S - 1) = G^2; the plain
    T * F_s would be T times too large."""
    model = tiny_model()
    x = windows(n=1).repeat(S, 1)
    G = grads_of(model, x)
    want = hand_group_sums_tensor(model, lambda p: p.detach().square() * G[id(p)].square())
    token = gradient_pass(model, x, 1, fisher="token", progress=False).second_moment
    torch.testing.assert_close(torch.cat(token.attention + token.mlp), want, rtol=2e-3, atol=1e-12)


def test_token_fisher_formula_by_hand():
    """S = 4 sequences of T = 10 tokens, F_s = 3, G^2 = 1: [(40 - 1) 3 - 4 (10 - 1) 1] / (4 - 1) = 27.
    The form without the variance part of G^2 (T F_s - (T - 1) G^2) gives 21; no correction gives 30."""
    from prune.importance.fisher import token_fisher
    from prune.structure import GroupScores

    def scores(v):
        return GroupScores([torch.tensor([v], dtype=torch.float64)], [torch.tensor([v, 2 * v], dtype=torch.float64)])

    got = token_fisher(scores(3.0), scores(1.0), S=4, T=10)
    assert float(got.attention[0]) == pytest.approx(27.0)
    assert got.mlp[0].tolist() == pytest.approx([27.0, 54.0])
    # below zero before the clip (F_s = 0.1 < G^2 = 1): clipped to 0
    assert float(token_fisher(scores(0.1), scores(1.0), S=4, T=10).attention[0]) == 0.0
    with pytest.raises(ValueError):
        token_fisher(scores(3.0), scores(1.0), S=1, T=10)


def test_token_fisher_matches_the_hand_formula_on_ordinary_text():
    model, x = tiny_model(), windows()
    G, Fs = grads_of(model, x), per_sequence_fisher(model, x)
    T, n = L - 1, len(x)
    a, b = (n * T - 1) / (n - 1), n * (T - 1) / (n - 1)
    attention, mlp = hand_group_sums(model, lambda p: p.detach().square() * (a * Fs[id(p)] - b * G[id(p)].square()))
    want = torch.cat([t.clamp_min(0) for t in attention + mlp])
    token = gradient_pass(model, x, 1, fisher="token", progress=False).second_moment
    torch.testing.assert_close(torch.cat(token.attention + token.mlp), want, rtol=1e-3, atol=1e-10)


def per_token_fisher(model, x):
    """E over every (sequence, token) of the squared gradient of that one token's loss, computed directly."""
    from prune.eval.losses import next_token_nll

    params = prunable_params(model)
    acc = {id(p): torch.zeros_like(p, dtype=torch.float64) for p in params}
    n = 0
    for seq in x:
        nll = next_token_nll(model(input_ids=seq[None]).logits, seq[None])[0]
        for t in range(len(nll)):
            for p, g in zip(params, torch.autograd.grad(nll[t], params, retain_graph=True)):
                acc[id(p)] += g.double().square()
            n += 1
    return {k: v / n for k, v in acc.items()}


def _total(scores) -> float:
    return float(sum(t.sum() for t in scores.attention + scores.mlp))


@pytest.mark.parametrize("B", [1, 4])
def test_token_fisher_estimates_the_true_per_token_fisher_and_states_its_inflation_on_correlated_tokens(B):
    """Against the true mean of per-token squared gradients (w^2-weighted, summed over all groups) on a
    tiny random model, 48 sequences of T = 15 scored tokens.

    Random tokens (nearly independent token gradients): the estimate is within about 6 % of the truth
    (measured 0.98-1.06). Each sequence one token repeated (token gradients nearly identical within a
    sequence: the assumption fails): the per-sequence Fisher then *is* the per-token one (ratio 1.0) and
    the token estimate inflates it by about T = 15 (measured 14.3-14.8), as 1 + (T - 1) rho with rho ~ 1."""
    model, T = tiny_model(), 15
    cases = {"random": windows(n=48, length=T + 1), "random, other draw": windows(seed=3, n=48, length=T + 1),
             "repeated": windows(n=48, length=1).repeat(1, T + 1)}
    ratios = {}
    for name, x in cases.items():
        F = per_token_fisher(model, x)
        true = float(hand_group_sums_tensor(model, lambda p: p.detach().double().square() * F[id(p)]).sum())
        ratios[name] = _total(gradient_pass(model, x, B, fisher="token", progress=False).second_moment) / true
        ratios[name + " (sample)"] = _total(gradient_pass(model, x, B, fisher="sample", progress=False).second_moment) / true
    assert 0.9 < ratios["random"] < 1.12 and 0.9 < ratios["random, other draw"] < 1.12, ratios
    assert ratios["random (sample)"] < 0.1, ratios  # the per-sequence Fisher is about T times smaller
    assert 0.9 < ratios["repeated (sample)"] < 1.05, ratios
    assert 0.85 * T < ratios["repeated"] < 1.02 * T, ratios  # inflation by about T
