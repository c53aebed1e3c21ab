"""A saved pruned model reloads with exactly the same logits, with or without prune-lab installed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_model
from prune.checkpoint import load_pruned, save_pruned
from prune.pruning import PruningPlan, apply_plan
from prune.structure import model_shape

X = torch.randint(0, 61, (2, 19), generator=torch.Generator().manual_seed(5))


def _pruned(arch):
    model = tiny_model(arch)
    plan = PruningPlan.keep_all(model_shape(model))
    plan.keep_attention = [[1], [], [0, 1]]
    plan.keep_mlp = [[0, 5, 6], [1, 2, 3], []]
    return apply_plan(model, plan)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_save_then_load_gives_identical_logits(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _pruned(arch)
    with torch.no_grad():
        before = model(input_ids=X).logits
    save_pruned(model, None, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == f"pruned_{arch}"
    assert config["layer_shapes"] == [[2, 1, 3], [0, 0, 3], [4, 2, 0]]
    for loaded in (load_pruned(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)):
        with torch.no_grad():
            after = loaded(input_ids=X).logits
        assert (after - before).abs().max().item() == 0.0


@pytest.mark.slow
def test_remote_code_loading_without_prune_lab(tmp_path):
    """The modeling file travels in the folder: plain transformers + trust_remote_code rebuilds it."""
    model = _pruned("llama")
    with torch.no_grad():
        torch.save(model(input_ids=X).logits, tmp_path / "expected.pt")
    save_pruned(model, None, tmp_path / "model")
    torch.save(X, tmp_path / "x.pt")
    script = f"""
import sys, torch
torch.set_num_threads({torch.get_num_threads()})  # the same reduction order as the expected logits
sys.modules['prune'] = None  # make `import prune` fail: only transformers is used
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True)
x = torch.load({str(tmp_path / 'x.pt')!r})
d = (m(input_ids=x).logits - torch.load({str(tmp_path / 'expected.pt')!r})).abs().max().item()
print('maxdiff', d)
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "maxdiff 0.0" in out.stdout


def test_loading_with_the_dense_class_fails_loudly(tmp_path):
    """Shapes differ from the dense config: loading must raise, never silently re-initialise."""
    from transformers import LlamaForCausalLM

    save_pruned(_pruned("llama"), None, tmp_path)
    with pytest.raises(Exception):
        LlamaForCausalLM.from_pretrained(tmp_path)


def test_no_code_path_uses_ignore_mismatched_sizes():
    offenders = [p for p in (REPO / "prune").rglob("*.py") if "ignore_mismatched_sizes=True" in p.read_text()]
    assert not offenders


def test_a_folder_missing_a_weight_is_refused_not_reinitialised(tmp_path):
    """transformers would fill the missing tensor with random values and only warn."""
    from safetensors.torch import load_file, save_file

    save_pruned(_pruned("llama"), None, tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = next(k for k in weights if k.endswith("layers.2.self_attn.o_proj.weight"))
    save_file({k: v for k, v in weights.items() if k != dropped}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing_keys.*o_proj"):
        load_pruned(tmp_path)


def _uniform(arch):
    """Every layer keeps 1 of 2 KV groups (2 of 4 query heads) and 3 of 24 MLP channels, different ones per layer."""
    model = tiny_model(arch)
    plan = PruningPlan.keep_all(model_shape(model))
    plan.keep_attention = [[1], [0], [1]]
    plan.keep_mlp = [[0, 5, 6], [1, 2, 3], [4, 20, 23]]
    return apply_plan(model, plan)


@pytest.mark.slow
def test_uniform_widths_save_a_standard_config_that_plain_transformers_loads(tmp_path, caplog):
    """No prune, no trust_remote_code, a fresh interpreter: the standard class of the source family gives
    identical logits, for every supported family."""
    caplog.set_level("INFO", logger="prune.checkpoint")
    for arch in ("llama", "mistral", "qwen2"):
        model = _uniform(arch)
        with torch.no_grad():
            torch.save(model(input_ids=X).logits, tmp_path / f"{arch}.pt")
        save_pruned(model, None, tmp_path / arch)
        config = json.loads((tmp_path / arch / "config.json").read_text())
        assert config["model_type"] == arch and config["architectures"] == [type(tiny_model(arch)).__name__]
        assert "auto_map" not in config and "layer_shapes" not in config
        assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (2, 1, 3)
        assert config["head_dim"] == 8 and not (tmp_path / arch / "modeling_pruned.py").exists()
    assert sum("saved as a standard" in r.message for r in caplog.records) == 3
    torch.save(X, tmp_path / "x.pt")
    script = f"""
import sys, torch
torch.set_num_threads({torch.get_num_threads()})
sys.modules['prune'] = None  # make `import prune` fail: only transformers is used
from transformers import AutoModelForCausalLM
x = torch.load({str(tmp_path / 'x.pt')!r})
for arch in ("llama", "mistral", "qwen2"):
    m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r} + "/" + arch)
    print(arch, type(m).__name__, (m(input_ids=x).logits - torch.load({str(tmp_path)!r} + f"/{{arch}}.pt")).abs().max().item())
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == ["llama LlamaForCausalLM 0.0", "mistral MistralForCausalLM 0.0", "qwen2 Qwen2ForCausalLM 0.0"]


def test_differing_widths_say_so_when_saving(tmp_path, caplog):
    caplog.set_level("INFO", logger="prune.checkpoint")
    save_pruned(_pruned("llama"), None, tmp_path)
    assert any("widths differ per layer: saved as pruned_llama" in r.message for r in caplog.records)


PLAIN_LOAD = """
import sys, torch
torch.set_num_threads(1)
sys.modules['prune'] = None  # make `import prune` fail: only transformers is used
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1])
torch.save(m(input_ids=torch.load(sys.argv[2])).logits, sys.argv[3])
print(type(m).__name__)
"""


@pytest.mark.parametrize("overrides", [["pruning=uniform"], ["pruning=global", "pruning.uniform_widths=true"]],
                         ids=["uniform", "global-uniform_widths"])
@pytest.mark.slow
def test_a_job_with_uniform_widths_saves_a_model_plain_transformers_loads(tiny_testbed, tmp_path, overrides):
    from conftest import compose_config

    from prune.job import run_job

    cfg = compose_config("testbed=tiny", "num_samples=4", "batch_size=2", "seq_len=64", "eval.lengths=[64]",
                         "logger=none", "progress=false", "pruning.ratio=0.3", *overrides)
    metrics = run_job(cfg, tmp_path / "job")
    assert metrics["status"] == "ok", metrics.get("error")
    assert len({(k["attention_kept_fraction"], k["mlp_kept_fraction"]) for k in metrics["kept"]}) == 1
    assert 0.2 < metrics["prunable_ratio_removed"] < 0.4
    folder = metrics["pruned_model_dir"]
    config = json.loads((Path(folder) / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    x = torch.randint(0, config["vocab_size"], (2, 33), generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    out = subprocess.run([sys.executable, "-c", PLAIN_LOAD, folder, tmp_path / "x.pt", tmp_path / "plain.pt"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "LlamaForCausalLM"
    torch.set_num_threads(1)
    with torch.no_grad():
        ours = load_pruned(folder)(input_ids=x).logits
    assert (torch.load(tmp_path / "plain.pt") - ours).abs().max().item() == 0.0
    assert sum(p.numel() for p in load_pruned(folder).parameters()) == metrics["params_after"]


def test_uniform_widths_refuses_protected_layers():
    from conftest import compose_config
    from hydra.utils import instantiate

    from prune.errors import PruningError

    strategy = instantiate(compose_config("pruning.uniform_widths=true", "pruning.keep_first=1").pruning)
    with pytest.raises(PruningError, match="keep_first=1"):
        strategy.check(model_shape(tiny_model()))


def test_uniform_widths_the_family_config_refuses_save_in_the_pruned_format_and_reload_exactly(tmp_path, caplog):
    """3 of 4 heads at hidden 32: recent transformers refuse hidden % heads != 0 in a standard LlamaConfig even
    with head_dim given, so the folder is a pruned_llama one; either way it reloads to identical logits."""
    from transformers import LlamaConfig

    caplog.set_level("INFO", logger="prune.checkpoint")
    model = tiny_model("llama", num_key_value_heads=4)  # 4 KV groups of one head each
    plan = PruningPlan.keep_all(model_shape(model))
    plan.keep_attention = [[0, 1, 3], [0, 2, 3], [1, 2, 3]]
    model = apply_plan(model, plan)
    with torch.no_grad():
        before = model(input_ids=X).logits
    save_pruned(model, None, tmp_path)
    try:
        LlamaConfig(hidden_size=32, num_attention_heads=3, num_key_value_heads=3, head_dim=8)
        refused = False
    except Exception:  # noqa: BLE001  (whatever the installed transformers raises for it)
        refused = True
    config = json.loads((tmp_path / "config.json").read_text())
    if refused:
        assert config["model_type"] == "pruned_llama" and config["layer_shapes"] == [[3, 3, 24]] * 3
        assert any("refuses 3 heads at hidden size 32" in r.message for r in caplog.records)
    else:
        assert config["model_type"] == "llama" and config["num_attention_heads"] == 3
    reloaded = load_pruned(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=X).logits, before)


@pytest.mark.slow
def test_reading_results_loads_no_torch_and_transformers_still_finds_the_pruned_types():
    """`prune-report` / `prune-dashboard` read JSON: importing them must not load torch (seconds of start-up
    on a login node); `import prune` then transformers still registers the pruned model types."""
    import subprocess
    import sys

    code = ("import sys; import prune.report.cli, prune.report.dashboard; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'loaded'; "
            "from transformers import AutoConfig, AutoModelForCausalLM; "
            "from transformers.models.auto.configuration_auto import CONFIG_MAPPING; "
            "print(sorted(k for k in CONFIG_MAPPING._extra_content if k.startswith('pruned_')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pruned_llama" in out.stdout and "pruned_qwen2" in out.stdout
    help_out = subprocess.run([sys.executable, "-m", "prune.report", "--help"], capture_output=True, text=True, timeout=120)
    assert help_out.returncode == 0 and "sweep_dir" in help_out.stdout
