"""The fused per-gradient reduction and the stores of G (prune.importance.fused / mean_grad).

* the reference path is the hooks' plain math, and a whole pass equals per-batch gradients computed apart;
* the Triton kernel equals the reference (CUDA when present, else the Triton interpreter on CPU; skipped
  with the reason where Triton is not importable);
* bf16 + Kahan stays within the stated tolerance of fp32 and plain bf16 summation does not;
* the host store (staging buffers, worker thread) gives the fp32 store's scores exactly.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton reads it when it is imported: set before anything imports it
    os.environ.setdefault("TRITON_INTERPRET", "1")

from conftest import tiny_model  # noqa: E402
from prune.importance import fused, mean_grad  # noqa: E402
from prune.importance.grad_stats import LayerGradMoments, summarize_moments  # noqa: E402
from prune.importance.gradients import gradient_pass  # noqa: E402
from prune.importance.taylor import first_order_scores  # noqa: E402
from prune.eval.losses import sequence_nll  # noqa: E402
from prune.structure import model_shape, projections  # noqa: E402

# the stated tolerance of mean_grad=bf16_kahan: every group score within this relative error of fp32
KAHAN_SCORE_RTOL = 1e-4
CUDA = torch.cuda.is_available()


def windows(seed=0, n=8, length=12, vocab=61):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def flat(scores):
    return torch.cat([t.flatten().double() for t in scores.attention + scores.mlp])


def taylor2(model, grads):
    return first_order_scores(model, grads) + grads.second_moment.map(lambda t: 0.5 * t)


def max_rel(a, b):
    return float(((a - b).abs() / b.abs().clamp_min(1e-30)).max())


# ------------------------------------------------------------------------------------------ reference
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,channel_dim", [((24, 40), 0), ((24, 40), 1), ((24,), None)])
def test_reference_is_the_plain_hook_math(dtype, shape, channel_dim):
    gen = torch.Generator().manual_seed(1)
    g, w = (torch.randn(shape, generator=gen).to(dtype) for _ in range(2))
    mean = torch.randn(shape, generator=gen)
    before = mean.clone()
    out = fused.reduce_reference(g, w, mean, None, 0.25, channel_dim, True)
    gd, wd = g.double(), w.double()
    assert torch.allclose(mean.double(), before.double() + 0.25 * gd, rtol=1e-6, atol=1e-7)
    assert float(out.abs_sum) == pytest.approx(float(gd.abs().sum()), rel=1e-6)
    assert float(out.sq_sum) == pytest.approx(float(gd.square().sum()), rel=1e-6)
    expected = (wd * gd).square()
    if channel_dim is not None:
        expected = expected.sum(dim=1 - channel_dim)
    rtol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: the product w * g is rounded to bf16 first
    assert out.channel_sq.dtype == torch.float32
    assert torch.allclose(out.channel_sq.double(), expected, rtol=rtol, atol=1e-6)
    assert fused.reduce_reference(g, w, None, None, 0.25, channel_dim, False).channel_sq is None


def _per_batch_grads(model, x, batch_size):
    params = [p for proj in projections(model) for p in [proj.module.weight]]
    out = []
    for batch in x.split(batch_size):
        loss = sequence_nll(model, batch).sum() / batch_size
        out.append(dict(zip(map(id, params), torch.autograd.grad(loss, params))))
    return out


def test_gradient_pass_equals_gradients_computed_batch_by_batch():
    """G, the per-batch |g| statistics and the first-order scores, against gradients taken apart."""
    model = tiny_model()
    x = windows()
    grads = gradient_pass(model, x, 2, fisher="sample", progress=False)
    per_batch = _per_batch_grads(model, x, 2)
    for proj in projections(model):
        key = id(proj.module.weight)
        expected = sum(b[key] for b in per_batch) / len(per_batch)
        assert torch.allclose(grads.mean_grad[key], expected, rtol=1e-4, atol=1e-7), proj.name
    n_layers = len(model_shape(model).layers)
    for b, stats in enumerate(grads.grad_stats["batches"]):
        moments = {}
        for proj in projections(model):
            moments.setdefault((proj.layer, proj.block), LayerGradMoments()).add(per_batch[b][id(proj.module.weight)])
        expected = summarize_moments(moments, n_layers)
        for got, want in zip(stats, expected):
            for part in ("attention", "mlp", "all"):
                assert got[part]["abs_mean"] == pytest.approx(want[part]["abs_mean"], rel=1e-4)
                assert got[part]["abs_std"] == pytest.approx(want[part]["abs_std"], rel=1e-4)


def test_fused_setting():
    cpu = torch.device("cpu")
    for setting in ("auto", None, "false", False):
        assert fused.resolve_backend(setting, cpu) == "reference"
    with pytest.raises(ValueError, match="importance.fused"):
        fused.resolve_backend("maybe", cpu)
    if not fused.triton_available():
        with pytest.raises(RuntimeError, match="Triton"):
            fused.resolve_backend(True, cpu)
    with pytest.raises(ValueError, match="mean_grad"):
        gradient_pass(tiny_model(), windows(), 2, progress=False, mean_grad="fp8")


# ---------------------------------------------------------------------------------------------- Triton
@pytest.fixture
def triton_device(monkeypatch):
    if not fused.triton_available():
        pytest.skip("Triton is not importable here: the kernel runs only where it is (CUDA, or TRITON_INTERPRET=1)")
    if not CUDA and not fused._interpreting():
        pytest.skip("no CUDA, and TRITON_INTERPRET was not set before Triton was imported")
    fused._kernel.cache_clear()
    yield torch.device("cuda" if CUDA else "cpu")
    fused._kernel.cache_clear()


@pytest.mark.parametrize("mode", ["fp32", "kahan", "none"])
@pytest.mark.parametrize("shape,channel_dim", [((70, 300), 0), ((70, 300), 1), ((45,), None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernel_equals_reference(triton_device, mode, shape, channel_dim, dtype):
    gen = torch.Generator().manual_seed(2)
    g, w = (torch.randn(shape, generator=gen).to(dtype).to(triton_device) for _ in range(2))
    if mode == "fp32":
        m_ref, c_ref = torch.randn(shape, generator=gen).to(triton_device), None
    elif mode == "kahan":
        m_ref = torch.randn(shape, generator=gen).bfloat16().to(triton_device)
        c_ref = torch.randint(-127, 128, shape, generator=gen).to(torch.int8).to(triton_device)
    else:
        m_ref = c_ref = None
    m_tri = None if m_ref is None else m_ref.clone()
    c_tri = None if c_ref is None else c_ref.clone()
    ref = fused.reduce_reference(g, w, m_ref, c_ref, 0.125, channel_dim, True)
    tri = fused.reduce_grad(g, w, m_tri, c_tri, 0.125, channel_dim, True, "triton")
    assert float(tri.abs_sum) == pytest.approx(float(ref.abs_sum), rel=1e-5)
    assert float(tri.sq_sum) == pytest.approx(float(ref.sq_sum), rel=1e-5)
    rtol = 1e-5 if dtype == torch.float32 else 2e-2  # the kernel multiplies w * g in fp32, the reference in bf16
    assert torch.allclose(tri.channel_sq, ref.channel_sq, rtol=rtol, atol=1e-6)
    if mode == "fp32":
        assert torch.allclose(m_tri, m_ref, rtol=1e-6, atol=1e-7)
    elif mode == "kahan":  # the same compensated value (FMA contraction on a GPU may move the last bits)
        a, b = fused.kahan_value(m_tri, c_tri), fused.kahan_value(m_ref, c_ref)
        assert torch.allclose(a, b, rtol=2e-5, atol=1e-7)
    assert fused.reduce_grad(g, w, None, None, 0.125, channel_dim, False, "triton").channel_sq is None


@pytest.mark.parametrize("fisher", [None, "sample"])
def test_gradient_pass_with_the_kernel_equals_the_reference(triton_device, fisher):
    model = tiny_model("qwen2").to(triton_device)  # with grouped q/k/v biases
    x = windows()
    ref = gradient_pass(model, x, 2, fisher=fisher, progress=False, fused=False)
    tri = gradient_pass(model, x, 2, fisher=fisher, progress=False, fused=True)
    assert tri.extra["fused"] == "triton" and ref.extra["fused"] == "reference"
    for key in ref.mean_grad:
        assert torch.allclose(tri.mean_grad[key], ref.mean_grad[key], rtol=1e-5, atol=1e-8)
    scores = (lambda g: taylor2(model, g)) if fisher else (lambda g: first_order_scores(model, g))
    assert max_rel(flat(scores(tri)), flat(scores(ref))) < 1e-4
    for a, b in zip(tri.grad_stats["batches"][-1], ref.grad_stats["batches"][-1]):
        assert a["all"]["abs_mean"] == pytest.approx(b["all"]["abs_mean"], rel=1e-5)


# ------------------------------------------------------------------------------------ bf16 + Kahan
def test_kahan_sum_is_accurate_where_plain_bf16_is_not():
    """Noisy batch gradients around a small mean: the case where bf16 accumulation loses the mean."""
    gen = torch.Generator().manual_seed(3)
    n, shape = 64, (4096,)
    terms = [(0.05 + torch.randn(shape, generator=gen)) for _ in range(n)]
    truth = sum(t.double() for t in terms) / n
    hi, comp = torch.zeros(shape, dtype=torch.bfloat16), torch.zeros(shape, dtype=torch.int8)
    plain = torch.zeros(shape, dtype=torch.bfloat16)
    for t in terms:
        fused.kahan_add_(hi, comp, t / n)
        plain.add_(t, alpha=1 / n)
    scale = float(truth.abs().mean())
    kahan_err = float((fused.kahan_value(hi, comp).double() - truth).abs().mean()) / scale
    plain_err = float((plain.double() - truth).abs().mean()) / scale
    rounded_err = float((truth.to(torch.bfloat16).double() - truth).abs().mean()) / scale
    assert kahan_err < 2e-4  # about 16 significant bits, not bf16's 8
    assert kahan_err < rounded_err / 10  # better than even an exactly rounded bf16 result
    assert plain_err > 10 * kahan_err


def _scores_with_store(monkeypatch, model, x, store_factory):
    import prune.importance.gradients as gradients

    monkeypatch.setattr(gradients, "make_store", lambda kind, params, scale: store_factory(params, scale))
    try:
        grads = gradient_pass(model, x, 2, fisher="sample", progress=False)
        return taylor2(model, grads), grads
    finally:
        monkeypatch.undo()


def test_bf16_kahan_scores_equal_fp32_within_tolerance_and_plain_bf16_does_not(monkeypatch):
    model = tiny_model()
    x = windows(n=16)
    fp32 = flat(taylor2(model, gradient_pass(model, x, 2, fisher="sample", progress=False)))
    kahan_grads = gradient_pass(model, x, 2, fisher="sample", progress=False, mean_grad="bf16_kahan")
    assert kahan_grads.extra["mean_grad"] == "Bf16KahanMean"
    kahan = flat(taylor2(model, kahan_grads))
    plain, _ = _scores_with_store(monkeypatch, model, x,
                                  lambda params, scale: mean_grad.Bf16KahanMean(params, scale, compensated=False))
    kahan_err, plain_err = max_rel(kahan, fp32), max_rel(flat(plain), fp32)
    assert kahan_err < KAHAN_SCORE_RTOL, kahan_err
    assert plain_err > 10 * kahan_err and plain_err > KAHAN_SCORE_RTOL, (plain_err, kahan_err)


# ---------------------------------------------------------------------------------------- host store
def test_cpu_choice_on_a_cpu_model_is_the_fp32_store():
    model = tiny_model()
    x = windows()
    a = gradient_pass(model, x, 2, fisher="sample", progress=False)
    b = gradient_pass(model, x, 2, fisher="sample", progress=False, mean_grad="cpu")
    assert b.extra["mean_grad"] == "Fp32Mean"
    assert torch.equal(flat(taylor2(model, a)), flat(taylor2(model, b)))


def test_host_store_with_staging_and_worker_equals_fp32(monkeypatch):
    """The staged path run on CPU tensors: one staging buffer, so every hook waits for the worker."""
    model = tiny_model()
    x = windows()
    fp32 = gradient_pass(model, x, 2, fisher="sample", progress=False)
    host, grads = _scores_with_store(monkeypatch, model, x, lambda params, scale: mean_grad.HostMean(params, scale, slots=1))
    assert grads.extra["mean_grad"] == "HostMean"
    assert torch.equal(flat(host), flat(taylor2(model, fp32)))
    for key in fp32.mean_grad:
        assert torch.equal(grads.mean_grad[key], fp32.mean_grad[key])


@pytest.mark.skipif(not CUDA, reason="pinned host memory and CUDA streams need a GPU")
def test_cpu_choice_on_cuda_equals_fp32():
    model = tiny_model().cuda()
    x = windows()
    a = gradient_pass(model, x, 2, fisher="sample", progress=False)
    b = gradient_pass(model, x, 2, fisher="sample", progress=False, mean_grad="cpu")
    assert b.extra["mean_grad"] == "HostMean"
    assert max_rel(flat(taylor2(model, b)), flat(taylor2(model, a))) < 1e-6


# ------------------------------------------------------------------------------------ memory estimate
def test_memory_estimate_for_every_mean_grad_choice():
    from transformers import LlamaConfig

    from prune.memory import describe_all, estimate_all
    from prune.structure import shape_from_config

    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
    shape = shape_from_config(config)
    est = estimate_all(config, shape, 512, 4, torch.bfloat16)
    p, gib = shape.prunable_params, 2**30
    assert [est[k]["running_mean"] for k in ("fp32", "bf16_kahan", "cpu")] == [4 * p, 3 * p, 0]
    assert est["cpu"]["host_running_mean"] == 4 * p and est["fp32"]["host_running_mean"] == 0
    # the figures README and bench.md quote for Llama-3-8B at 4 x 512 (chunked LM-head loss: one 128 MiB logits chunk)
    assert [round(est[k]["total"] / gib, 1) for k in ("fp32", "bf16_kahan", "cpu")] == [51.3, 44.8, 25.7]
    lines = describe_all(est, "bf16_kahan").splitlines()
    assert "mean_grad=bf16_kahan" in lines[0] and len(lines) == 5
    assert "<- chosen" in lines[3] and lines[3].split()[0] == "bf16_kahan" and "host 26.00 GiB" in lines[4]
