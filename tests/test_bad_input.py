"""Bad input never ends in a traceback: exit status 2, one line on stderr naming the setting, before any work.

The table runs the real entry point (``prune.run.main``: Hydra, the job, the exit status) in-process, with
the model's ``load`` replaced by a trap: a row that reached the model would exit 1, not 2. A refused single
run leaves no run folder behind, so nothing is there for a resume to trust. A few rows run as a real
subprocess; the rest of the file covers the other ways out (bug, Ctrl-C, failed sweep) and W&B.
"""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

from conftest import REPO
from model_folders import make_folders

BASE = ["testbed=tiny", "logger=none", "progress=false"]
CUDA = pytest.importorskip("torch").cuda.is_available()

SMALL_TEXT = ["data=text", "data.train_files={dir}/train.txt", "data.eval_files={dir}/eval.txt", "seq_len=8", "num_samples=4",
              "batch_size=2", "eval.lengths=[16]"]
# (id, overrides, what the one line must name: a string, or a tuple of strings it must all contain); {dir} is a
# folder of prepared files (see `files`). Where Hydra / OmegaConf refuse, only the setting and our own "did you
# mean" are pinned, not their wording, which changes between their releases.
TABLE = [
    # Hydra's own refusals, condensed to one line
    ("typo-key", ["seqlen=128"], ("seqlen", "did you mean seq_len?")),
    ("typo-option", ["importance=taylor_3rd"], "importance/taylor_3rd"),
    ("typo-nested-key", ["pruning.rato=0.5"], ("pruning.rato", "did you mean pruning.ratio?")),
    ("override-syntax", ["seq_len=[1,2"], "cannot parse the override 'seq_len=[1,2'"),
    ("unwritable-output", ["hydra.run.dir=/proc/prune-lab/run"], "cannot write /proc/prune-lab"),
    # keys nothing reads
    ("plus-typo", ["+seqlen=128"], "unknown setting seqlen"),
    ("plusplus-typo", ["++seqlen=128"], "unknown setting seqlen"),
    ("plus-eval", ["+eval.lenghts=[64]"], "eval.lenghts"),
    ("plus-importance", ["+importance.fishr=exact"], "importance.fishr is not a setting of importance=taylor_2nd; did you mean importance.fisher?"),
    ("plus-model", ["+model.device_mapp=auto"], "model.device_mapp"),
    # types and ranges of plain settings
    ("seq_len-zero", ["seq_len=0"], "seq_len=0 must be a positive integer"),
    ("seq_len-text", ["seq_len=abc"], "seq_len=abc"),
    ("batch_size-bool", ["batch_size=true"], "batch_size=true"),
    ("num_samples-negative", ["num_samples=-4"], "num_samples=-4"),
    ("token_budget-negative", ["token_budget=-1"], "token_budget=-1"),
    ("calibration_block-zero", ["calibration_block=0"], "calibration_block=0"),
    ("lengths-layer", ["lengths.layer=1"], "lengths.layer=1"),
    ("eval-lengths-empty", ["eval.lengths=[]"], "eval.lengths=[] must be a non-empty list"),
    ("eval-lengths-zero", ["eval.lengths=[0]"], "eval.lengths=[0]"),
    ("eval-lengths-scalar", ["eval.lengths=512"], "eval.lengths=512"),
    ("eval-batch_size", ["eval.batch_size=0"], "eval.batch_size=0"),
    ("eval-max_tokens", ["eval.max_tokens=0"], "eval.max_tokens=0"),
    ("eval-cache_before", ["eval.cache_before=maybe"], "eval.cache_before=maybe"),
    ("eval-tasks-string", ["eval.tasks=boolq"], "eval.tasks=boolq"),
    ("eval-tasks_limit", ["eval.tasks_limit=0"], "eval.tasks_limit=0"),
    ("eval-tasks_batch_size", ["eval.tasks_batch_size=-1"], "eval.tasks_batch_size=-1"),
    ("ground_truth-mlp_sample", ["eval.ground_truth.mlp_sample=-1"], "eval.ground_truth.mlp_sample=-1"),
    ("save_model-word", ["save_model=sometimes"], "save_model=sometimes"),
    ("threads-zero", ["threads=0"], "threads=0 must be a positive integer or null"),
    ("seed-float", ["seed=1.5"], "seed=1.5"),
    # settings of the chosen options
    ("ratio-above-1", ["pruning.ratio=1.5"], "pruning.ratio=1.5"),
    ("ratio-zero", ["pruning.ratio=0"], "pruning.ratio=0"),
    ("ratio-text", ["pruning.ratio=abc"], "pruning.ratio=abc"),
    ("keep_first-negative", ["pruning.keep_first=-1"], "pruning.keep_first=-1"),
    ("normalize", ["pruning.normalize=weird"], "pruning.normalize=weird"),
    ("max_layer_fraction", ["pruning.max_layer_fraction=0"], "pruning.max_layer_fraction=0"),
    ("depth-unit", ["pruning=depth", "importance=layer", "pruning.unit=row"], "pruning.unit=row"),
    ("fisher", ["importance.fisher=wrong"], "importance.fisher=wrong"),
    ("granularity", ["importance.granularity=row"], "importance.granularity=row"),
    ("micro_batch_size", ["importance.micro_batch_size=0"], "importance.micro_batch_size=0"),
    ("order", ["importance.order=3"], "importance.order=3 must be 1 or 2"),
    ("layer_importance", ["pruning=layer_weighted", "pruning/layer_importance=lyer"], "pruning/layer_importance/lyer"),
    ("layer_importance-value", ["pruning=hybrid", "pruning.layer_importance=angular"],
     "pruning.layer_importance is a config group: choose its option with pruning/layer_importance=<option>"),
    ("layer_importance-setting", ["pruning=hybrid", "pruning.layer_importance.prefix_cache=sometimes"], "pruning.layer_importance.prefix_cache=sometimes"),
    ("objective", ["objective=loss"], "objective=loss is not a metric"),
    ("objective-length", ["objective=ppl_after.4096"], "objective=ppl_after.4096: ppl_after has the entries ['128', '512', '2048']"),
    # device, dtype, model folder
    ("dtype", ["model.dtype=fp8"], "model.dtype=fp8"),
    ("device-name", ["model.device=gpu0"], "model.device=gpu0"),
    pytest.param("device-cuda", ["model.device=cuda"], "model.device=cuda but no CUDA GPU",
                 marks=pytest.mark.skipif(CUDA, reason="a GPU is visible here"), id="device-cuda"),
    ("hf-no-path", ["model=hf"], "model.path is required: set model.path=<value>"),
    ("hf-missing-folder", ["model=hf", "model.path=/nonexistent/model"], "model.path=/nonexistent/model: no such folder"),
    ("hf-file", ["model=hf", "model.path={dir}/train.txt"], "is a file"),
    ("hf-no-config", ["model=hf", "model.path={dir}"], "has no config.json"),
    ("hf-gpt2", ["model=hf", "model.path={dir}/gpt2"], "model type 'gpt2' is not supported"),
    # the model folder's files (tests/model_folders.py): refused before any work, naming the file
    *[(f"model-{name}", ["model=hf", f"model.path={{dir}}/models/{name}"], names) for name, names in (
        ("config-truncated", "config-truncated/config.json is not valid JSON (line 1"),
        ("config-empty", "config-empty/config.json is empty"),
        ("config-folder", "config-folder/config.json is a folder, not a file"),
        ("config-bad-value", "config.json: hidden_size='32' must be a positive integer"),
        ("no-weights", "no-weights has no weights: expected model.safetensors"),
        ("weights-truncated", "weights-truncated/model.safetensors is truncated (the header describes more data"),
        ("weights-empty", "weights-empty/model.safetensors is empty (0 bytes)"),
        ("weights-lfs", "weights-lfs/model.safetensors is a Git LFS pointer, not the weights: run `git lfs pull`"),
        ("weights-garbage", "weights-garbage/model.safetensors is not a valid safetensors file"),
        ("weights-folder", "weights-folder/model.safetensors is a folder, not a weight file"),
        ("shard-missing", "shard-missing/model-00002-of-00002.safetensors is missing: model.safetensors.index.json lists it"),
        ("shard-index-corrupt", "shard-index-corrupt/model.safetensors.index.json is not valid JSON"),
        ("shard-index-wrong", "which model.safetensors.index.json places there: the shards and the index do not match"),
        ("shard-no-index", "has model-00001-of-00002.safetensors but neither model.safetensors nor model.safetensors.index.json"),
        ("edited-hidden", "tensor embed_tokens.weight has shape [61, 32], but config.json implies [61, 64]"),
        ("edited-kv-heads", "tensor layers.0.self_attn.k_proj.weight has shape [16, 32], but config.json implies [8, 32]"),
        ("edited-heads", "tensor layers.0.self_attn.q_proj.weight has shape [32, 32], but config.json implies [16, 32]"),
        ("edited-mlp", "tensor layers.0.mlp.gate_proj.weight has shape [24, 32], but config.json implies [48, 32]"),
        ("edited-vocab", "tensor embed_tokens.weight has shape [61, 32], but config.json implies [32000, 32]"),
        ("edited-more-layers", "has no tensor layers.3.self_attn.q_proj.weight"),
        ("edited-fewer-layers", "holds weights of layer 2, but config.json says num_hidden_layers=2"),
        ("no-lm-head", "has no lm_head.weight, but config.json says tie_word_embeddings=false"),
        ("missing-tensor", "has no tensor layers.1.mlp.up_proj.weight"),
        ("pruned-shapes", "config.json: layer_shapes has 2 layers but num_hidden_layers=3"),
        ("bin-truncated", "bin-truncated/pytorch_model.bin is truncated or not a torch checkpoint"),
        ("gguf-only", "(model-q4.gguf is not a Hugging Face weight file: convert it)"),
        ("no-tokenizer", "no-tokenizer has no tokenizer (tokenizer.json, tokenizer.model)"),
        ("tokenizer-truncated", "tokenizer-truncated/tokenizer.json is not valid JSON"),
        ("tokenizer-config-truncated", "tokenizer-config-truncated/tokenizer_config.json is not valid JSON"),
    )],
    ("model-tokenizer_path-empty", ["model=hf", "model.path={dir}/models/good", "model.tokenizer_path={dir}/models/no-tokenizer"],
     "model.tokenizer_path={dir}/models/no-tokenizer has no tokenizer"),
    # read where they are loaded (before the weights): the tokenizer's own parse, its ids against vocab_size
    ("model-tokenizer-not-a-tokenizer", ["model=hf", "model.path={dir}/models/tokenizer-not-a-tokenizer", *SMALL_TEXT],
     "cannot load the tokenizer from {dir}/models/tokenizer-not-a-tokenizer"),
    ("model-tokenizer-other-model", ["model=hf", "model.path={dir}/models/tokenizer-other-model", *SMALL_TEXT],
     "produces token id 10"),
    ("cache_dir", ["cache_dir=/proc/prune-lab-cache"], "cache_dir /proc/prune-lab-cache is not writable"),
    ("task_dir", ["eval.task_dir=/nonexistent/tasks"], "eval.task_dir=/nonexistent/tasks: no such folder"),
    # files
    ("text-no-files", ["data=text"], "data.eval_files, data.train_files are required"),
    ("text-missing", ["data=text", "data.train_files={dir}/nope.txt", "data.eval_files={dir}/eval.txt"], "{dir}/nope.txt"),
    ("text-same", ["data=text", "data.train_files={dir}/train.txt", "data.eval_files={dir}/train.txt"], "in both data.train_files and data.eval_files"),
    ("text-binary", ["data=text", "data.train_files={dir}/model.bin", "data.eval_files={dir}/eval.txt"], "{dir}/model.bin is not UTF-8 text"),
    ("text-empty", ["data=text", "data.train_files={dir}/empty.txt", "data.eval_files={dir}/eval.txt"], "{dir}/empty.txt is empty"),
    ("text-folder", ["data=text", "data.train_files={dir}", "data.eval_files={dir}/eval.txt"], "is not a file"),
    ("text_split-no-file", ["data=text_split"], "data.file"),
    ("text_split-fraction", ["data=text_split", "data.file={dir}/train.txt", "data.test_fraction=1.5"], "data.test_fraction=1.5"),
    # logger
    ("wandb-mode", ["logger=wandb", "logger.mode=onlin"], "logger.mode=onlin"),
    ("logger-typo", ["logger=wandb", "logger.projet=x"], ("logger.projet", "did you mean logger.project?")),
    ("logger-plus", ["logger=none", "+logger.project=x"], "logger.project is not a setting of logger"),
    ("logger-timeout", ["logger=wandb", "logger.init_timeout=0"], "logger.init_timeout=0.0 must be a positive number"),
    ("logger-tags", ["logger=wandb", "logger.tags=mine"], "logger.tags=mine"),
    # data sets (their schemas)
    ("data-typo", ["data=wikitext2", "data.subst=x"], ("data.subst", "did you mean data.subset?")),
    ("data-plus", ["+data.shufle=true"], "data.shufle is not a setting of data=testbed"),
    ("data-shuffle-word", ["data=c4", "data.shuffle_documents=often"], "data.shuffle_documents=often"),
    ("data-max_documents", ["data=c4", "data.max_documents.train=many"], "data.max_documents.train=many"),
    ("data-test_fraction-text", ["data=text_split", "data.file={dir}/train.txt", "data.test_fraction=half"], "data.test_fraction=half"),
    # recovery (its schema, then prune.recovery's cross-checks: all before the model loads)
    ("recovery-steps", ["recovery=lora", "recovery.steps=0"], "recovery.steps=0 must be a positive integer"),
    ("recovery-lr", ["recovery=full", "recovery.lr=-1"], "recovery.lr=-1.0 must be a positive number"),
    ("recovery-schedule", ["recovery=lora", "recovery.schedule=cosin"], "recovery.schedule=cosin"),
    ("recovery-target", ["recovery=lora", "recovery.target_modules=[q_proj,qkv]"], ("recovery.target_modules", "qkv")),
    ("recovery-dropout", ["recovery=lora", "recovery.dropout=1"], "recovery.dropout=1.0 must be a number in [0, 1)"),
    ("recovery-typo", ["recovery=lora", "recovery.rnk=4"], ("recovery.rnk", "did you mean recovery.rank?")),
    ("recovery-none-setting", ["recovery.steps=10"], "recovery.steps"),
    ("recovery-warmup", ["recovery=lora", "recovery.warmup_steps=500"], "recovery.warmup_steps=500 must be an integer in [0, steps=200)"),
    ("recovery-seq_len", ["recovery=full", "recovery.seq_len=4096"], "recovery.seq_len=4096 exceeds the model's max_position_embeddings (1024)"),
    ("recovery-text", ["recovery=full", "recovery.seq_len=200", *SMALL_TEXT], "tokens, too few for recovery.seq_len=200"),
    # the long-context probe (checked when it is asked for, before any task is generated)
    ("probe-lengths", ["eval.tasks=[prune_passkey]", "eval.probe.lengths=[8]"], "eval.probe.lengths=[8] must be a non-empty list of integers >= 16"),
    ("probe-window", ["eval.tasks=[prune_passkey]", "eval.probe.window=4"], "eval.probe.window=4 must be an integer >= 8 or null"),
    ("probe-depths", ["eval.tasks=[prune_passkey]", "eval.probe.depths=[1.5]"], "eval.probe.depths=[1.5] must be a non-empty list of fractions in [0, 1]"),
    ("probe-format", ["eval.tasks=[prune_passkey]", "eval.probe.format=needle"], "eval.probe.format=needle"),
    # against the model's config (no weights), and the data (no model)
    ("seq_len-above-max-positions", ["seq_len=4096"], "exceeds the model's max_position_embeddings (1024)"),
    ("num_samples-multiple", ["num_samples=30"], "num_samples=30 must be a positive multiple of batch_size=4"),
    ("depth-needs-layer-scores", ["pruning=depth"], "pruning=depth needs layer or block scores"),
    ("layer-scores-for-width", ["importance=layer"], "importance=layer scores layers"),
    ("depth-unreachable", ["pruning=depth", "importance=layer", "pruning.ratio=0.99"], "pruning.ratio=0.99 is unreachable"),
    ("calibration_block-multiple", ["seq_len=64", "calibration_block=100"], "calibration_block=100 must be a multiple of seq_len=64"),
    ("text-too-short", ["data=text", "data.train_files={dir}/train.txt", "data.eval_files={dir}/eval.txt", "seq_len=64", "num_samples=8", "batch_size=2"], "too few for num_samples=8 x seq_len=64"),
    ("eval-text-too-short", ["seq_len=64", "num_samples=8", "batch_size=2", "eval.max_tokens=100", "eval.lengths=[512]"], "less than one window of eval length 512"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from transformers import GPT2Config

    folder = tmp_path_factory.mktemp("inputs")
    (folder / "train.txt").write_text("w1 w2 w3 " * 40)
    (folder / "eval.txt").write_text("w4 w5 " * 400)
    (folder / "empty.txt").write_text("\n")
    (folder / "model.bin").write_bytes(bytes(range(256)) * 4)
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(folder / "gpt2")  # a config, no weights
    make_folders(folder / "models")
    return folder


@pytest.fixture
def no_model(monkeypatch):
    """A row that reaches the model exits 1 (a bug), not 2: refusals must come before it loads."""
    import prune.models

    def trap(self, *args, **kwargs):
        raise RuntimeError("the model was loaded: this input was not refused before work")

    monkeypatch.setattr(prune.models.HFModel, "load", trap)
    monkeypatch.setattr(prune.models.TestbedModel, "model_path", trap)


def _parts(names: str | tuple[str, ...]) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else names


def run_main(argv: list[str], run_dir) -> tuple[int, str]:
    """``prune-run argv`` in-process: the exit status and everything written to stderr."""
    from prune.run import main

    if not any(a.startswith("hydra.run.dir=") for a in argv):
        argv = [*argv, f"hydra.run.dir={run_dir}"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("row_id,overrides,names", [pytest.param(*r, id=r[0]) if type(r) is tuple else r for r in TABLE])
def test_bad_input_is_refused_in_one_line_before_any_work(row_id, overrides, names, files, no_model, tmp_path):
    overrides = [o.replace("{dir}", str(files)) for o in overrides]
    code, err = run_main([*BASE, *overrides], tmp_path / "run")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    for name in _parts(names):
        assert name.replace("{dir}", str(files)) in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # no run folder left behind: nothing computed, nothing to resume


def test_the_table_holds_at_least_40_kinds_of_bad_input():
    assert len(TABLE) >= 40


@pytest.mark.parametrize("overrides,names", [
    (["seqlen=128"], ("prune-run: error: ", "seqlen", "did you mean seq_len?")),
    (["seq_len=abc"], ("prune-run: error: ", "seq_len=abc")),
    (["importance.fisher=wrong"], ("prune-run: error: ", "importance.fisher=wrong")),
    (["model.device=nonsense"], "model.device=nonsense"),
], ids=["unknown-key", "wrong-type", "not-a-choice", "device"])
@pytest.mark.slow
def test_the_console_command_refuses_in_one_line(overrides, names, tmp_path):
    out = subprocess.run([sys.executable, "-m", "prune.run", *BASE, *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(out.stderr.strip().splitlines()) == 1 and all(name in out.stderr for name in _parts(names))
    assert not (tmp_path / "run").exists()


def test_unknown_wandb_mode_in_the_environment_is_refused(monkeypatch, no_model, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "onlien")
    code, err = run_main([*BASE, "logger=wandb"], tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "WANDB_MODE=onlien" in err


# ----------------------------------------------------------------------------- the other ways out
def test_a_bug_exits_1_with_the_traceback_in_run_log_and_metrics(monkeypatch, tmp_path):
    import prune.job.pipeline

    def broken(cfg, metrics, recorder):
        raise RuntimeError("a genuine bug")

    monkeypatch.setattr(prune.job.pipeline, "_prepare", broken)
    code, err = run_main(BASE, tmp_path / "run")
    assert code == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == "RuntimeError: a genuine bug"
    assert "Traceback" in metrics["traceback"] and "Traceback" in (tmp_path / "run" / "run.log").read_text()


def test_a_bare_value_error_is_a_bug_not_a_refusal(monkeypatch, tmp_path):
    import prune.job.pipeline

    def broken(cfg, metrics, recorder):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(prune.job.pipeline, "_prepare", broken)
    code, _ = run_main(BASE, tmp_path / "run")
    assert code == 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


def test_ctrl_c_exits_130_and_records_interrupted_without_a_traceback(monkeypatch, tmp_path):
    import prune.job.pipeline

    def interrupted(cfg, metrics, recorder):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune.job.pipeline, "_prepare", interrupted)
    code, err = run_main(BASE, tmp_path / "run")
    assert code == 130
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_a_sweep_with_refused_jobs_exits_non_zero_after_its_report(no_model, tmp_path):
    sweep = tmp_path / "sweep"
    code, err = run_main(["-m", *BASE, "pruning.ratio=1.5,2.0", f"hydra.sweep.dir={sweep}"], tmp_path / "unused")
    assert code == 1, err[-3000:]
    assert "2 of 2 jobs did not finish ok (refused: 2)" in err.strip().splitlines()[-1]
    statuses = [json.loads(p.read_text())["status"] for p in sorted(sweep.glob("*/metrics.json"))]
    assert statuses == ["refused", "refused"]  # recorded, so the report lists them and a resume re-runs them
    report = (sweep / "report.md").read_text()
    assert "2 jobs: 0 ok, 2 failed. Varying: ratio " in report


def test_varying_names_what_varied_when_only_one_job_is_ok(tmp_path):
    from prune.report.build import Report

    for i, (ratio, status) in enumerate([(0.3, "ok"), (1.5, "refused")]):
        (tmp_path / str(i) / ".hydra").mkdir(parents=True)
        (tmp_path / str(i) / ".hydra" / "overrides.yaml").write_text(f"- pruning.ratio={ratio}\n")
        run = {"seq_len": 512, "ratio": ratio, "seed": 0, "importance": "taylor_2nd"}
        (tmp_path / str(i) / "metrics.json").write_text(json.dumps({"status": status, "run": run}))
    assert Report(tmp_path).varied() == ["ratio"]  # it said seq_len, which did not vary


# ---------------------------------------------------------------------------------------- W&B
class FakeWandb:
    """Records ``wandb.init`` calls; fails the online ones as a server that does not answer would."""

    def __init__(self, fail_online: bool):
        self.calls, self.fail_online = [], fail_online

    def init(self, mode, settings, **kwargs):
        self.calls.append((mode, settings.init_timeout))
        if mode == "online" and self.fail_online:
            raise TimeoutError("wandb.init() timed out")
        run = type("Run", (), {"dir": kwargs["dir"], "finish": lambda self, exit_code=0: None})()
        return run

    def define_metric(self, *args, **kwargs):
        pass

    Settings = staticmethod(lambda **kw: type("S", (), kw)())


@pytest.fixture
def fake_wandb(monkeypatch):
    def install(fail_online: bool) -> FakeWandb:
        import prune.report.tracking

        fake = FakeWandb(fail_online)
        monkeypatch.setitem(sys.modules, "wandb", fake)
        monkeypatch.setattr(prune.report.tracking, "_ONLINE_FAILED", [])
        return fake

    return install


def test_wandb_online_without_a_key_warns_once_and_goes_offline(fake_wandb, monkeypatch, tmp_path, caplog):
    from prune.report.tracking import WandbTracker

    fake = fake_wandb(fail_online=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    tracker = WandbTracker()
    tracker.start({}, "run", None, "prune", str(tmp_path))
    assert [mode for mode, _ in fake.calls] == ["offline"]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "no API key" in warnings[0].getMessage()
    tracker.finish(True)


def test_wandb_server_that_does_not_answer_costs_init_timeout_then_offline(fake_wandb, monkeypatch, tmp_path, caplog):
    from prune.report.tracking import WandbTracker

    fake = fake_wandb(fail_online=True)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    tracker = WandbTracker(init_timeout=5)
    tracker.start({}, "run", None, "prune", str(tmp_path))
    assert fake.calls == [("online", 5.0), ("offline", 5.0)]
    assert tracker._run is not None
    # the next job of the same sweep does not wait for the server again
    WandbTracker(init_timeout=5).start({}, "run2", None, "prune", str(tmp_path))
    assert fake.calls[-1] == ("offline", 5.0) and len(fake.calls) == 3
    assert sum("offline" in r.getMessage() for r in caplog.records if r.levelname == "WARNING") == 2


def test_a_failing_wandb_call_mid_run_never_kills_the_job(fake_wandb, tmp_path):
    from prune.report.tracking import WandbTracker

    fake_wandb(fail_online=False)
    tracker = WandbTracker()
    tracker.start({}, "run", None, "prune", str(tmp_path))

    def broken(*args, **kwargs):
        raise ConnectionError("lost")

    tracker._run.log = broken
    tracker.log({"a": 1})  # warns and stops tracking
    assert tracker._run is None
    tracker.summary({"b": 2})
    tracker.finish(False)


# ------------------------------------------------------------------------------ threads, ratios
def test_threads_changes_neither_the_resume_digest_nor_the_dense_cache_key():
    import torch

    from conftest import compose_config, tiny_model
    from prune.cache import fingerprint
    from prune.job import config_digest

    assert config_digest(compose_config("threads=1")) == config_digest(compose_config())
    model = tiny_model(hidden_size=256, intermediate_size=1024)
    before = torch.get_num_threads()
    try:
        keys = set()
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            keys.add(fingerprint(model))
    finally:
        torch.set_num_threads(before)
    assert len(keys) == 1
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3  # a real change still misses
    assert fingerprint(model) not in keys


def test_an_achieved_ratio_beyond_one_group_of_the_target_is_said():
    from conftest import tiny_config
    from prune.pruning import ratio_deviation
    from prune.structure import shape_from_config

    shape = shape_from_config(tiny_config(num_hidden_layers=6))
    assert ratio_deviation(0.3, 0.3 + 0.5 * shape.mlp_channel_params / shape.prunable_params, shape, "x") is None
    note = ratio_deviation(0.3, 2 / 6, shape, "pruning=depth")
    assert note.startswith("pruning=depth: pruning.ratio=0.3 asked, 0.333 of the prunable parameters removed")
    assert "0.863" in ratio_deviation(0.9, 0.863, shape, "pruning=uniform")


def test_every_exception_the_package_defines_is_a_refusal():
    """A user error of a type outside ``PruneLabError`` is reported as a bug (exit 1, traceback): walk every
    module of the package and find each exception class it defines. An internal (non-user) exception would
    have to be named in ``INTERNAL`` with its reason."""
    import importlib
    import inspect
    import pkgutil

    import prune
    from prune.errors import PruneLabError

    INTERNAL: dict[str, str] = {
        "prune.metrics.MetricsError": "a writer's record that does not match its declaration is a bug; the reader turns a "
                                      "mismatching file into a failed job record, so no user setting ever raises it",
    }
    found, skipped = {}, []
    for info in pkgutil.walk_packages(prune.__path__, "prune."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError as exc:  # an optional dependency (lm-eval, triton...) absent here
            skipped.append(f"{info.name}: {exc}")
            continue
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    assert {"prune.errors.ModelFileError", "prune.errors.RecoveryError", "prune.errors.ProbeError",
            "prune.fetch.FetchError"} <= set(found), sorted(found)
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, PruneLabError) and name not in INTERNAL)
    assert not outside, f"not PruneLabError (a user error would be reported as a bug): {outside}"
    assert len(skipped) <= 3, skipped
