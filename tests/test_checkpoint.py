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
