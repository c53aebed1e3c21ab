"""The whole job on the small testbed: metrics, saved model, plots, W&B run, and recorded failures."""
import json
from pathlib import Path

import pytest

from conftest import compose_config
from prune.data import DataError
from prune.job import run_job
from prune.metrics import checked

FAST = ["testbed=tiny", "seq_len=64", "num_samples=8", "batch_size=2", "eval.lengths=[64,256]", "progress=false"]


@pytest.fixture(scope="module")
def finished(tiny_testbed, tmp_path_factory):
    out = tmp_path_factory.mktemp("job")
    metrics = run_job(compose_config(*FAST, "eval.cache_after=false"), out)  # evaluated here: its FLOPs are counted
    return out, metrics


def test_metrics_json_has_every_documented_key(finished):
    out, metrics = finished
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] == "ok"
    assert checked(saved) is saved  # the record matches its declaration (prune.metrics.JobMetrics)
    for key in ("ppl_before", "ppl_after", "params_before", "params_after", "prunable_ratio_removed", "grad_stats",
                "kept", "timings", "peak_memory_mb", "pruned_model_dir", "total_ratio_removed"):
        assert key in saved, key
    assert set(saved["ppl_before"]) == {"64", "256"}
    assert 0.3 <= saved["prunable_ratio_removed"] < 0.35
    assert saved["params_after"] < saved["params_before"]
    for phase in ("data", "load_model", "eval_before", "importance", "pruning", "eval_after", "save"):
        assert saved["timings"][phase] >= 0 and saved["peak_memory_mb"][phase] > 0
    layer0 = saved["grad_stats"]["pass"][0]
    assert layer0["attention"]["abs_mean"] > 0 and layer0["mlp"]["abs_std"] > 0
    assert len(saved["grad_stats"]["batches"]) == 4
    assert [k["layer"] for k in saved["kept"]] == [0, 1]


def test_scoring_and_evaluation_report_their_model_flops(finished):
    """FLOPs per phase from the model shape (dense for scoring, pruned after pruning), and FLOP/s = FLOPs / time."""
    from transformers import AutoConfig

    from prune.preflight import build_parts
    from prune.structure import shape_from_config

    _, metrics = finished
    dense = shape_from_config(build_parts(compose_config(*FAST))[0].config())
    pruned = shape_from_config(AutoConfig.from_pretrained(metrics["pruned_model_dir"], trust_remote_code=True))
    n, length = metrics["data"]["calibration_windows"]["taylor"]
    assert (n, length) == (8, 64)
    assert metrics["flops"]["importance"] == 3 * dense.forward_flops(64, 8)  # Taylor: forward + backward
    windows = {int(L): tokens // (int(L) - 1) for L, tokens in metrics["eval_tokens"].items()}
    assert metrics["flops"]["eval_after"] == sum(pruned.forward_flops(L, w) for L, w in windows.items())
    assert pruned.forward_flops(64) < dense.forward_flops(64)
    if not metrics.get("eval_before_cached"):
        assert metrics["flops"]["eval_before"] == sum(dense.forward_flops(L, w) for L, w in windows.items())
    for phase, flops in metrics["flops"].items():
        assert metrics["flops_per_s"][phase] == pytest.approx(flops / metrics["timings"][phase])
    assert "pruning" not in metrics["flops"]  # no model pass there
    from prune.job import summary_table

    assert f"importance {metrics['flops_per_s']['importance'] / 1e9:.2f}" in summary_table(metrics)


def test_the_printed_summary_carries_the_numbers(finished):
    from prune.job import summary_table

    _, metrics = finished
    text = summary_table(metrics)
    for length, before in metrics["ppl_before"].items():
        after = metrics["ppl_after"][length]
        assert f"{before:.3f}" in text and f"{after:.3f}" in text and f"{100 * (after / before - 1):+.1f}%" in text
    assert f"params {metrics['params_before']:,} -> {metrics['params_after']:,}" in text
    assert f"pruned model: {metrics['pruned_model_dir']}" in text


def test_saved_model_reproduces_the_reported_perplexity(finished):
    from prune.checkpoint import load_pruned
    from prune.data import tokenize_documents
    from prune.eval.perplexity import evaluate_lengths
    from prune.models import TestbedModel
    from prune.data.sources import TestbedSource
    from hydra.utils import instantiate

    out, metrics = finished
    cfg = compose_config(*FAST)
    source: TestbedSource = instantiate(cfg.data)
    tok = instantiate(cfg.model).tokenizer()
    stream = tokenize_documents(source.texts("test"), tok, bos_per_document=True)
    model = load_pruned(metrics["pruned_model_dir"]).eval()
    again = evaluate_lengths(model, stream, [64, 256], 2, None, False, "check")
    for length in (64, 256):
        assert again[length]["ppl"] == pytest.approx(metrics["ppl_after"][str(length)], rel=1e-6)


def test_plots_and_offline_wandb_run_are_written(finished):
    out, metrics = finished
    assert (out / "grad_stats.png").stat().st_size > 1000
    assert (out / "kept_fraction.png").stat().st_size > 1000
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))


def test_too_little_calibration_text_fails_before_the_model_loads(tiny_testbed, tmp_path):
    train, test = tmp_path / "a.txt", tmp_path / "b.txt"
    train.write_text("w1 w2 w3 " * 40)
    test.write_text("w4 w5 " * 400)
    cfg = compose_config(*FAST, "data=text", f"data.train_files={train}", f"data.eval_files={test}", "logger=none")
    with pytest.raises(DataError, match="too few for num_samples=8 x seq_len=64"):
        run_job(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["status"] == "refused" and "too few" in saved["error"]
    assert "load_model" not in saved["timings"]


def test_offline_wandb_run_holds_the_same_per_layer_values_as_metrics_json(finished):
    """Read the .wandb record stream back with `wandb leet inspect --json`."""
    import shutil
    import subprocess
    import sys

    out, metrics = finished
    beside = Path(sys.executable).with_name("wandb")
    wandb_bin = str(beside) if beside.exists() else shutil.which("wandb")
    if wandb_bin is None:
        pytest.skip("the wandb command is not on PATH")
    run_dir = next((out / "wandb").glob("offline-run-*"))
    printed = subprocess.run([wandb_bin, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    by_layer = {}
    for line in printed.stdout.splitlines():
        record = json.loads(line)
        if record.get("type") == "history" and "layer" in record["history"]["item"]:
            item = record["history"]["item"]
            by_layer[item["layer"]] = item
    assert sorted(by_layer) == [0, 1]
    for row in metrics["grad_stats"]["pass"]:
        logged = by_layer[row["layer"]]
        assert logged["by_layer/grad_abs_mean"] == pytest.approx(row["all"]["abs_mean"], rel=1e-9)
        assert logged["by_layer/attention_grad_abs_std"] == pytest.approx(row["attention"]["abs_std"], rel=1e-9)
        assert logged["by_layer/mlp_kept_fraction"] == pytest.approx(metrics["kept"][row["layer"]]["mlp_kept_fraction"])


def test_downstream_tasks_run_before_and_after_pruning(tiny_testbed, tmp_path):
    pytest.importorskip("lm_eval")
    cfg = compose_config(*FAST, "logger=none", "eval.tasks=[testbed_local]", "eval.tasks_limit=8", "save_model=false")
    metrics = run_job(cfg, tmp_path)
    assert set(metrics["acc_after"]) == {"testbed_local", "mean"}
    assert 0 <= metrics["acc_before"]["testbed_local"] <= 1
    assert metrics["downstream"]["after"]["tasks"]["testbed_local"]["n"] == 8


@pytest.mark.slow
def test_unavailable_task_is_refused_before_the_model_loads(tiny_testbed, tmp_path):
    pytest.importorskip("lm_eval")
    cfg = compose_config(*FAST, "logger=none", "eval.tasks=[boolq]")
    with pytest.raises(ValueError, match="boolq") as info:
        run_job(cfg, tmp_path)
    assert "\n" not in str(info.value)
    assert "load_model" not in json.loads((tmp_path / "metrics.json").read_text())["timings"]


@pytest.mark.parametrize("overrides, message", [
    (["eval.tasks=[testbed_local]", "eval.tasks_limit=0"], "eval.tasks_limit=0 must be a positive integer"),
    (["eval.tasks=[testbed_local]", "eval.tasks_batch_size=-1"], "eval.tasks_batch_size=-1 must be"),
    (["eval.importance_accuracy=true", "eval.ground_truth.max_tokens=100"], "eval.ground_truth.max_tokens=100 leaves less"),
], ids=["tasks_limit", "tasks_batch_size", "ground_truth_tokens"])
def test_late_settings_are_refused_before_the_model_loads(tiny_testbed, tmp_path, overrides, message):
    pytest.importorskip("lm_eval")
    with pytest.raises(ValueError, match=message):
        run_job(compose_config(*FAST, "logger=none", *overrides), tmp_path)
    assert "load_model" not in json.loads((tmp_path / "metrics.json").read_text())["timings"]


@pytest.mark.parametrize("overrides", [
    ["pruning=depth", "importance=layer", "pruning.keep_first=0", "pruning.keep_last=0"],
    ["pruning=depth", "importance=block", "pruning.unit=block", "pruning.keep_first=0", "pruning.keep_last=0"],
    ["pruning=depth", "importance=angular", "pruning.keep_first=0", "pruning.keep_last=0"],
    ["pruning=layer_weighted"],
    ["pruning=hybrid", "pruning.keep_first=0", "pruning.keep_last=0", "pruning.depth_share=0.3", "pruning.ratio=0.6"],
    ["importance=wanda"],
], ids=["depth-layer", "depth-block", "depth-angular", "layer_weighted", "hybrid", "wanda"])
def test_depth_and_width_strategies_on_the_testbed(tiny_testbed, tmp_path, overrides):
    from prune.checkpoint import load_pruned

    metrics = run_job(compose_config(*FAST, "logger=none", *overrides), tmp_path)
    model = load_pruned(metrics["pruned_model_dir"])
    assert sum(p.numel() for p in model.parameters()) == metrics["params_after"]
    assert metrics["prunable_ratio_removed"] >= 0.3 - 1e-9
    assert model.config.num_hidden_layers == len([k for k in metrics["kept"] if not k["removed"]])


def test_a_rerun_marks_the_folder_unfinished_before_any_work(tmp_path, monkeypatch):
    """A job killed half-way must not leave an earlier run's `status: ok` behind (resume would skip it)."""
    import prune.job.pipeline

    (tmp_path / "metrics.json").write_text(json.dumps({"status": "ok", "config_digest": "from-an-earlier-run"}))
    seen = []

    def prepare(cfg, metrics, recorder):
        seen.append(json.loads((tmp_path / "metrics.json").read_text())["status"])
        raise KeyboardInterrupt  # as if killed

    monkeypatch.setattr(prune.job.pipeline, "_prepare", prepare)
    with pytest.raises(KeyboardInterrupt):
        run_job(compose_config(*FAST, "logger=none"), tmp_path)
    assert seen == ["running"]
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "interrupted"
    kept = tmp_path / ".superseded" / "from-an-earlier-run" / "metrics.json"  # the finished result is not lost
    assert json.loads(kept.read_text())["config_digest"] == "from-an-earlier-run"


def test_a_rerun_sets_a_finished_result_aside_and_says_what_changed(tmp_path, caplog):
    """Resume with a changed setting (or force=true) re-runs the job; its finished files move, never vanish,
    and the report does not read them twice."""
    import logging

    from prune.job.naming import result_settings, set_aside_finished
    from prune.report.jobs import metrics_files

    job = tmp_path / "job"
    (job / ".hydra").mkdir(parents=True)
    old = {"status": "ok", "config_digest": "abc", "settings": result_settings(compose_config(*FAST))}
    (job / "metrics.json").write_text(json.dumps(old))
    (job / "plan.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        target = set_aside_finished(job, result_settings(compose_config(*FAST, "seq_len=32")), logging.getLogger("t"))
    assert Path(target) == job / ".superseded" / "abc"
    assert sorted(p.name for p in Path(target).iterdir()) == ["metrics.json", "plan.json"]
    assert sorted(p.name for p in job.iterdir()) == [".hydra", ".superseded"]
    assert "seq_len" in caplog.text and "lengths.taylor" in caplog.text
    assert metrics_files(tmp_path, nested=True) == []  # the set-aside result is not a job of its own
    (job / "metrics.json").write_text(json.dumps({"status": "failed"}))
    assert set_aside_finished(job, {}, logging.getLogger("t")) is None  # nothing finished: nothing moved
    assert (job / "metrics.json").exists()


def test_a_setting_that_breaks_before_the_pipeline_is_still_recorded(tmp_path):
    cfg = compose_config(*FAST, "logger=none", "token_budget=4096", "seq_len=0")
    with pytest.raises(Exception):
        run_job(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "refused" and "seq_len=0" in metrics["error"]


def test_pruned_evaluation_is_reused_only_for_identical_pruned_weights(tiny_testbed, tmp_path):
    """importance=magnitude prunes to the same weights at every seq_len: the second job reads its PPL from the
    cache. Taylor at another seq_len prunes differently: evaluated afresh, never served a stale number."""
    common = [*FAST, "logger=none", "save_model=false", "eval.cache_before=false", "eval.max_tokens=1984"]  # a key no other test uses
    first = run_job(compose_config(*common, "importance=magnitude", "seq_len=64"), tmp_path / "m64")
    second = run_job(compose_config(*common, "importance=magnitude", "seq_len=32"), tmp_path / "m32")
    assert first["eval_after_cached"] is False and second["eval_after_cached"] is True
    assert second["ppl_after"] == first["ppl_after"]
    taylor = run_job(compose_config(*common, "importance=taylor_1st", "seq_len=32"), tmp_path / "t32")
    assert taylor["eval_after_cached"] is False and taylor["ppl_after"] != first["ppl_after"]
    off = run_job(compose_config(*common, "importance=magnitude", "seq_len=32", "eval.cache_after=false"), tmp_path / "off")
    assert "eval_after_cached" not in off and off["ppl_after"] == pytest.approx(first["ppl_after"], rel=1e-6)


@pytest.mark.slow
def test_pruned_task_scores_are_reused_only_for_identical_pruned_weights(tiny_testbed, tmp_path):
    """The same for downstream tasks: magnitude at two seq_len scores its (identical) pruned model once, with
    the per-item record; Taylor is scored afresh. The extra (empty) task folder makes the cache key unique."""
    pytest.importorskip("lm_eval")
    (tmp_path / "tasks").mkdir()
    common = [*FAST, "logger=none", "save_model=false", "eval.cache_before=false", "eval.max_tokens=1920",
              "eval.tasks=[testbed_local]", "eval.tasks_limit=6", "eval.tasks_before=false", f"eval.task_dir={tmp_path / 'tasks'}"]
    first = run_job(compose_config(*common, "importance=magnitude", "seq_len=64"), tmp_path / "m64")
    second = run_job(compose_config(*common, "importance=magnitude", "seq_len=32"), tmp_path / "m32")
    assert first["tasks_after_cached"] is False and second["tasks_after_cached"] is True
    record = first["downstream"]["after"]["tasks"]["testbed_local"]["items"]
    assert record["doc_ids"] == list(range(6)) and len(record["acc"]) == 6
    assert second["downstream"]["after"] == first["downstream"]["after"]
    taylor = run_job(compose_config(*common, "importance=taylor_1st", "seq_len=32"), tmp_path / "t32")
    assert taylor["tasks_after_cached"] is False
