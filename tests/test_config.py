"""Config composition (Hydra compose API) and the one-line refusals that come before any model work."""
import subprocess
import sys

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, REPO, compose_config
from prune.job import ConfigError, run_name, validate


def test_defaults_compose_and_seq_len_fans_out():
    cfg = compose_config("seq_len=128")
    assert cfg.lengths.taylor == cfg.lengths.layer == cfg.lengths.block == 128
    cfg = compose_config("seq_len=128", "lengths.layer=512")
    assert (cfg.lengths.taylor, cfg.lengths.layer) == (128, 512)
    assert (cfg.batch_size, cfg.num_samples, cfg.pruning.ratio) == (4, 32, 0.3)
    assert run_name(compose_config("importance=taylor_1st", "batch_size=2")) == "taylor_1st-L512-bs2-s0"


# Every option file of every config group (prune/conf/<group>/*.yaml; subfolders such as schema/ and base/ are
# not options), found on disk so that a new option is tested without editing this list. experiment/ is
# covered by tests/test_sweep.py (each experiment and each of its sweep points).
GROUPS = sorted(d.name for d in CONF.iterdir() if d.is_dir() and d.name != "experiment" and any(d.glob("*.yaml")))
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]
TARGETED = {"importance", "model", "data", "pruning", "logger"}  # built by hydra.utils.instantiate
# built here too: a model source loads nothing when built (no download); data is not, its sources check their files
INSTANTIATED = {"importance", "pruning", "logger", "model"}
REQUIRED = {("model", "hf"): ["model.path=/models/any"]}  # model.path: ??? (instantiate refuses a missing value)


def test_the_option_list_is_found_on_disk():
    assert {"importance", "model", "data", "pruning", "logger", "budget", "testbed", "recovery"} <= set(GROUPS)
    assert {("model", "llama3_8b"), ("pruning", "hybrid"), ("recovery", "lora"), ("budget", "tokens")} <= set(OPTIONS)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_of_every_group_composes_and_instantiates(group, option):
    cfg = compose_config(f"{group}={option}", *REQUIRED.get((group, option), []))
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    path = CONF / group / f"{option}.yaml"
    if "# @package _global_" in path.read_text() and group not in cfg:
        # an option of the global package (budget=...): the values it sets are the job's
        for key, value in OmegaConf.load(path).items():
            if key != "defaults" and not OmegaConf.is_config(value):
                assert cfg[key] == value, (key, cfg[key], value)
        return
    node = OmegaConf.to_container(cfg[group], resolve=True)
    if group in TARGETED:
        assert "_target_" in node
    if group in INSTANTIATED:
        instantiate(cfg[group])
    if group == "testbed":
        from prune.testbed.build import TestbedSpec

        TestbedSpec.from_dict(node)


def test_model_presets_point_at_the_real_hub_models():
    assert compose_config("model=llama3_8b").model.path == "meta-llama/Meta-Llama-3-8B"
    assert compose_config("model=qwen2_5_7b").model.dtype == "bfloat16"


class _Config:
    max_position_embeddings = 512


@pytest.mark.parametrize("overrides,message", [
    (["seq_len=1024"], "exceeds the model's max_position_embeddings (512); choose seq_len <= 512"),
    (["lengths.block=4096"], "lengths.block=4096"),
    (["num_samples=30"], "multiple of batch_size=4"),
    (["num_samples=4", "seq_len=128"], "fisher=token needs at least two batches"),
    (["token_budget=1000", "seq_len=128"], "token_budget=1000 // lengths.taylor=128 = 7 must be a positive multiple of batch_size=4"),
])
def test_settings_that_do_not_fit_together_are_refused_in_one_line(overrides, message):
    cfg = compose_config(*overrides)
    importance = instantiate(cfg.importance)
    with pytest.raises(ConfigError) as info:
        validate(cfg, _Config(), importance)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("overrides,message", [
    (["pruning.ratio=1.5"], "pruning.ratio=1.5 must be a number strictly between 0 and 1"),
    (["pruning.ratio=0"], "pruning.ratio=0.0 must be a number strictly between 0 and 1"),
    (["batch_size=0"], "batch_size=0 must be a positive integer"),
    (["eval.max_tokens=0"], "eval.max_tokens=0 must be a positive integer or null"),
    (["pruning=hybrid", "pruning.depth_share=1.5"], "pruning.depth_share=1.5 must be a number in [0, 1]"),
    (["eval.probe.lengths=[1]"], "eval.probe.lengths=[1] must be a non-empty list of integers >= 16, e.g. [1024,4096]"),
])
def test_ranges_the_schema_names_are_checked_before_any_work(overrides, message):
    from prune.preflight import check_ranges

    check_ranges(compose_config())  # the defaults are in range
    with pytest.raises(ConfigError) as info:
        check_ranges(compose_config(*overrides))
    assert str(info.value) == message


def test_schema_types_reach_the_code_as_the_plain_words_it_compares():
    cfg = compose_config("importance.fisher=exact", "pruning.normalize=zscore")
    method, strategy = instantiate(cfg.importance), instantiate(cfg.pruning)
    assert method.fisher == "exact" and f"{method.fisher}" == "exact" and strategy.normalize == "zscore"
    assert OmegaConf.to_yaml(cfg.importance).count("fisher: exact") == 1


def test_sweep_objective_is_the_configured_metric():
    from prune.run import objective_value

    metrics = {"ppl_after": {"64": 30.0, "256": 20.0}, "acc_after": {"boolq": 0.5}, "prunable_ratio_removed": 0.31}
    assert objective_value(metrics, "ppl_after") == 30.0  # the first eval length
    assert objective_value(metrics, "ppl_after.256") == 20.0
    assert objective_value(metrics, "acc_after.boolq") == 0.5
    assert objective_value(metrics, "prunable_ratio_removed") == 0.31
    assert objective_value(metrics, "ppl_recovered") is None
    assert compose_config("objective=ppl_after.512").objective == "ppl_after.512"


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "prune.run", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_cfg_job_prints_the_resolved_config():
    out = _cli("--cfg", "job", "--resolve", "seq_len=256", "importance=taylor_1st")
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.lengths.taylor == 256 and cfg.importance.order == 1


@pytest.mark.slow
def test_cfg_job_shows_the_layer_importance_settings_and_they_override():
    out = _cli("--cfg", "job", "pruning=layer_weighted", "pruning.layer_importance.prefix_cache=false")
    assert out.returncode == 0, out.stderr
    node = OmegaConf.create(out.stdout).pruning.layer_importance
    assert (node.name, node.prefix_cache, node._target_) == ("layer", False, "prune.importance.depth.LayerRemoval")
    out = _cli("--cfg", "job", "pruning=hybrid", "pruning/layer_importance=angular")
    assert out.returncode == 0, out.stderr
    assert OmegaConf.create(out.stdout).pruning.layer_importance._target_ == "prune.importance.activations.Angular"


@pytest.mark.slow
def test_unknown_method_is_refused_by_hydra_in_one_line():
    out = _cli("importance=taylor_3rd")
    assert out.returncode == 2
    assert "importance/taylor_3rd" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_unsupported_architecture_is_refused_before_loading_weights(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)  # config only: no weights at all
    out = _cli("model=hf", f"model.path={tmp_path}", "data=testbed", "testbed=tiny", "logger=none")
    assert out.returncode == 2
    assert "model type 'gpt2' is not supported" in out.stderr


@pytest.mark.slow
def test_seq_len_above_max_positions_is_refused_before_any_work():
    out = _cli("testbed=tiny", "seq_len=4096", "logger=none")
    assert out.returncode == 2
    assert "exceeds the model's max_position_embeddings (1024)" in out.stderr
    assert "Training the testbed" not in out.stderr


def test_the_resume_digest_ignores_display_settings_but_not_precision():
    from prune.job import config_digest

    default = config_digest(compose_config())
    assert config_digest(compose_config("progress=false")) == default  # also copied into model.progress
    assert config_digest(compose_config("logger=none", "force=true")) == default
    assert config_digest(compose_config("model.dtype=float32")) == default  # what auto means on this CPU
    assert config_digest(compose_config("model.dtype=bfloat16")) != default
    assert config_digest(compose_config("seq_len=128")) != default


def test_the_resume_digest_sees_testbed_settings_only_where_the_testbed_is_used():
    """A testbed setting added after a SmolLM2 sweep started made its finished jobs look unfinished (stop 19):
    the top-level block reaches a result only through model.testbed / data.testbed."""
    from prune.job import config_digest

    real = ["model=smollm2_135m", "data=text_split", "data.file=/nonexistent.txt"]
    assert config_digest(compose_config(*real, "testbed.training.wired=false")) == config_digest(compose_config(*real))
    assert config_digest(compose_config("testbed.training.wired=false")) != config_digest(compose_config())


def test_changed_settings_names_every_differing_key():
    from prune.job.naming import changed_settings, result_settings

    old, new = result_settings(compose_config()), result_settings(compose_config("seq_len=128", "seed=3"))
    assert set(changed_settings(old, new)) >= {"seq_len", "seed", "lengths.taylor"}
    assert changed_settings(old, old) == []
    assert changed_settings({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == ["a.c"]
