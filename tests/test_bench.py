"""prune-bench: the quick preset end to end, the fairness of its baselines, and the sweep read-back.

Timing goals are never asserted here (timings are noise on a shared CPU); only that every figure exists,
is a finite number of the right sign, and that the relations that must hold do hold.
"""
import json
import math
import os

import pytest
import torch

from prune import bench


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The whole quick benchmark (every section, timed with repeats: about 20 s); its users are slow tests."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_quick_json_has_every_ratio_and_context(quick):
    assert quick["complete"] is True
    for key in bench.RESULT_KEYS:
        assert finite(quick[key]), (key, quick[key])
        if key != "taylor_2nd_extra_memory_ratio":  # a pass may well peak *below* the bare loop
            assert quick[key] > 0, (key, quick[key])
    assert finite(quick["taylor_2nd_exact_time_ratio"]) and quick["taylor_2nd_exact_time_ratio"] > 0
    for key, goal in quick["goals"].items():
        assert key in bench.GOALS and goal["met"] in (True, False) and goal["value"] == quick[key]
    ctx = quick["context"]
    for key in ("date", "device", "dtype", "torch", "transformers", "torch_threads", "cpu_count", "loadavg_start",
                "loadavg_end", "models", "taylor", "removal", "repeats", "warmup", "wall_s"):
        assert key in ctx, key
    assert ctx["device"] == "cpu" and ctx["dtype"] == "float32" and ctx["torch_threads"] >= 1
    assert ctx["omp_wait_policy"] == (os.environ.get("OMP_WAIT_POLICY") or "PASSIVE")
    assert ctx["models"]["bench"]["hidden"] == bench.QUICK_SHAPE.hidden


@pytest.mark.slow
def test_quick_sanity_relations(quick):
    taylor = quick["taylor"]["per_seq_len"][0]
    assert taylor["tokens"] == taylor["num_samples"] * taylor["seq_len"] == quick["context"]["taylor"]["tokens"]
    assert taylor["num_batches"] >= 2
    for name, timing in taylor["times"].items():
        assert len(timing["times_s"]) == quick["context"]["repeats"] and all(t > 0 for t in timing["times_s"]), name

    speed = quick["speed"]
    assert speed["params_pruned"] < speed["params_dense"]
    assert speed["prunable_params_pruned"] < speed["prunable_params_dense"]
    assert 0.3 <= speed["prunable_ratio_removed"] < 0.45  # the target, overshot by less than a group or so
    assert speed["prefill_flop_ratio"] > 1
    assert speed["score_source"] == "taylor_2nd"
    assert all(v > 0 for part in speed["tokens_per_s"].values() for v in part.values())

    memory = quick["memory"]
    assert memory["prunable_fp32_bytes"] == 4 * memory["prunable_params"] > 0
    for run in memory["runs"].values():
        assert run["peak_rss_bytes"] >= run["rss_start_bytes"] > 0

    removal = quick["removal"]
    calls = removal["decoder_layer_calls_per_batch"]
    n_layers = bench.QUICK_SHAPE.layers
    assert calls["layer_naive"] == (n_layers + 1) * n_layers  # one full forward per unit plus the intact model
    assert calls["block_naive"] == (2 * n_layers + 1) * n_layers
    assert calls["layer_prefix"] <= calls["layer_naive"] and calls["block_prefix"] <= calls["block_naive"]
    assert removal["layer_max_abs_loss_diff"] < 1e-4 and removal["block_max_abs_loss_diff"] < 1e-4


@pytest.mark.slow
def test_quick_static_decode_and_mean_grad_sections(quick):
    speed = quick["speed"]
    assert speed["decode"]["compiled"] is False and "skipped on CPU" in speed["decode"]["compile_note"]
    assert set(speed["decode_speedup_by_batch"]) == {"1", "2"}
    assert speed["decode_speedup"] == min(speed["decode_speedup_by_batch"].values())
    assert speed["prefill_of_flop_ratio"] == pytest.approx(speed["prefill_speedup"] / speed["prefill_flop_ratio"])
    assert finite(speed["decode_generate_speedup"])
    mean_grad = quick["mean_grad"]
    assert set(mean_grad["by_store"]) == {"fp32", "bf16_kahan", "cpu"}
    for kind, row in mean_grad["by_store"].items():
        assert row["scores_within_tolerance"] is True, kind
        assert finite(row["time_ratio_vs_fp32"]) and row["estimate_gib"] > 0
    assert mean_grad["by_store"]["cpu"]["store"] == "Fp32Mean"  # nothing to move on a CPU model
    assert 0 < mean_grad["by_store"]["bf16_kahan"]["score_max_rel_diff"] <= 1e-4
    # the CPU pass is bit-reproducible: the measured noise floor is 0, so each store is held to its stated tolerance
    assert mean_grad["fp32_repeat_max_rel_diff"] == 0.0
    assert mean_grad["by_store"]["bf16_kahan"]["score_allowed_rel_diff"] == mean_grad["score_tolerance"]["bf16_kahan"]
    assert mean_grad["goal"]["met"] is None  # a GPU goal


@pytest.fixture
def small_model():
    return bench.build_model(bench.QUICK_SHAPE, torch.device("cpu"), torch.float32, seed=0)


def _batches_seen(model, fn):
    seen = []
    handle = model.model.embed_tokens.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        fn()
    finally:
        handle.remove()
    return seen


@pytest.mark.slow
def test_bare_baseline_and_gradient_pass_see_the_same_batches(small_model):
    windows = bench.random_windows(6, 16, bench.QUICK_SHAPE.vocab, seed=3)
    seen = {kind: _batches_seen(small_model, lambda kind=kind: bench.run_pass(kind, small_model, windows, 2))
            for kind in ("bare", "taylor_1st", "taylor_2nd", "taylor_2nd_exact")}
    expected = list(windows.split(2))
    for kind in ("bare", "taylor_1st", "taylor_2nd"):
        assert len(seen[kind]) == len(expected) == 3, kind
        assert all(torch.equal(a, b) for a, b in zip(seen[kind], expected)), kind
    # exact Fisher runs one sequence per backward: other batches, the very same tokens
    assert torch.equal(torch.cat(seen["taylor_2nd_exact"]), windows)
    assert bench.bare_pass(small_model, windows, 2) == windows.numel()
    # the baseline trains every parameter and leaves nothing behind
    assert all(p.requires_grad and p.grad is None for p in small_model.parameters())


def test_gradient_pass_leaves_the_baseline_model_as_it_found_it(small_model):
    windows = bench.random_windows(4, 8, bench.QUICK_SHAPE.vocab, seed=1)
    bench.run_pass("taylor_2nd", small_model, windows, 2)
    assert all(p.requires_grad and p.grad is None for p in small_model.parameters())


def test_arguments_are_checked():
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--quick", "--num-samples", "3"])
    assert exc.value.code == 2
    args = bench.parse_args(["--preset", "llama3_8b", "--seq-lens", "128,2048", "--batch-size", "4"])
    assert args.seq_lens == [128, 2048, 512] and args.shape == bench.LLAMA3_8B_SHAPE and args.repeats == 1
    args = bench.parse_args(["--hidden", "256", "--layers", "2"])
    assert args.shape.hidden == 256 and args.shape.layers == 2 and args.shape.vocab == bench.BENCH_SHAPE.vocab


def test_sweep_read_back(tmp_path):
    sweep = tmp_path / "sweep"
    for job, (seq_len, phases) in enumerate([(128, {"importance": 2.0, "eval_before": 1.0}),
                                             (512, {"importance": 5.0, "eval_before": 1.5})]):
        (sweep / str(job)).mkdir(parents=True)
        metrics = {"status": "ok", "run": {"seq_len": seq_len}, "timings": {**phases, "total": sum(phases.values()) + 1}}
        (sweep / str(job) / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "bench.json"
    assert bench.main(["--sections", "none", "--sweep", str(sweep), "--out", str(out), "--omp-wait-policy", "inherit"]) == 0
    data = json.loads(out.read_text())
    assert data["sweep"]["jobs"] == 2 and data["sweep"]["status"] == {"ok": 2}
    assert data["sweep"]["jobs_total_s"] == pytest.approx(3.0 + 1 + 6.5 + 1)
    assert data["sweep"]["phase_sums_s"] == pytest.approx({"importance": 7.0, "eval_before": 2.5})
    assert data["sweep"]["by_seq_len"]["512"] == pytest.approx({"jobs": 1, "importance": 5.0, "eval_before": 1.5, "total": 7.5})
    assert all(data[key] is None for key in bench.RESULT_KEYS)


@pytest.mark.slow
def test_static_cache_decode_makes_the_tokens_of_generate(small_model):
    from prune.bench.speed import StaticDecoder, hf_generate, magnitude_scores, prune_copy

    pruned, _ = prune_copy(small_model, magnitude_scores(small_model), 0.3, 8)
    prompt = bench.random_windows(2, 8, bench.QUICK_SHAPE.vocab, seed=5)
    for model in (small_model, pruned):
        expected = hf_generate(model, prompt, 6)[:, 8:]
        decoder = StaticDecoder(model, 8, 6, compile_step=False)
        for _ in range(2):  # the cache is reset between runs
            tokens, prefill_s, decode_s = decoder(prompt)
            assert torch.equal(tokens, expected) and prefill_s > 0 and decode_s > 0
