"""Model folders are inputs: good ones of every supported shape pass the cheap checks (no false refusal),
faults the checks cannot see cheaply are refused where the weights load, and the issue's own case (a truncated
``model.safetensors`` of a real model) ends in one line and exit status 2. The table of faults is in
tests/test_bad_input.py."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

from conftest import REPO, shared_path, tiny_model
from model_folders import make_folders
from prune.errors import ModelFileError, PruneLabError
from prune.model_files import check_model_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("models"))


def test_model_file_error_is_a_refusal():
    assert issubclass(ModelFileError, PruneLabError)


@pytest.mark.parametrize("name", ["good", "sharded"])
def test_good_folders_pass(folders, name):
    check_model_folder(folders / name)


@pytest.mark.parametrize("model_type,tied", [("llama", False), ("qwen2", False), ("mistral", True)])
def test_pruned_folders_saved_by_prune_lab_pass(tmp_path, model_type, tied, folders):
    """Per-layer widths (a pruned_<base> folder with an emptied attention block), biases, tied embeddings."""
    from prune.checkpoint import save_pruned
    from prune.pruning import PruningPlan, apply_plan
    from prune.structure import model_shape

    model = tiny_model(model_type, tie_word_embeddings=tied)
    plan = PruningPlan.keep_all(model_shape(model))
    plan.keep_attention = [[1], [], [0, 1]]
    plan.keep_mlp = [[0, 5, 6], [1, 2, 3], list(range(12))]
    apply_plan(model, plan)
    from transformers import AutoTokenizer

    save_pruned(model, AutoTokenizer.from_pretrained(folders / "good"), tmp_path / "pruned")
    check_model_folder(tmp_path / "pruned")


def test_a_separate_tokenizer_folder_is_checked_instead(folders):
    check_model_folder(folders / "no-tokenizer", folders / "good")
    with pytest.raises(ModelFileError, match="tokenizer.json is not valid JSON"):
        check_model_folder(folders / "good", folders / "tokenizer-truncated")


def _load(path):
    from prune.models import HFModel

    return HFModel(path=str(path), device="cpu", dtype="float32").load()


def test_faults_found_only_at_load_are_refused_in_one_line(folders, tmp_path):
    with pytest.raises(ModelFileError, match=r"has no tensor model\.layers\.1\.mlp\.up_proj\.weight") as err:
        _load(folders / "missing-tensor")  # transformers alone would fill it with random values and only warn
    assert "\n" not in str(err.value)
    folder = tmp_path / "bin-not-torch"
    shutil.copytree(folders / "good", folder)
    (folder / "model.safetensors").unlink()
    with zipfile.ZipFile(folder / "pytorch_model.bin", "w") as archive:  # a zip, but not a torch checkpoint
        archive.writestr("readme.txt", "not weights")
    check_model_folder(folder)  # the zip directory is intact: only loading can tell
    with pytest.raises(ModelFileError, match="cannot load the weights of .*bin-not-torch") as err:
        _load(folder)
    assert "\n" not in str(err.value)


def test_the_good_folder_loads(folders):
    model = _load(folders / "good")
    assert model.config.num_hidden_layers == 3 and not torch.isnan(next(model.parameters())).any()


@pytest.mark.slow
def test_a_truncated_real_model_is_refused_by_the_console_command(tmp_path):
    """The issue's report: ``head -c 100000`` of a real model.safetensors gave a SafetensorError traceback."""
    source = shared_path("models", "stories260k")
    folder = tmp_path / "stories260k"
    folder.mkdir()
    for path in source.iterdir():  # copied without the shared folder's read-only modes
        if path.name != "model.safetensors":
            shutil.copyfile(path, folder / path.name)
    (folder / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes()[:100000])  # head -c 100000
    text = tmp_path / "a.txt"
    text.write_text("Once upon a time there was a cat.\n\n" * 50)
    out = subprocess.run([sys.executable, "-m", "prune.run", "model=hf", f"model.path={folder}", "data=text_split",
                          f"data.file={text}", "logger=none", "progress=false", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.safetensors is truncated" in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()
