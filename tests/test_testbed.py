"""The testbed corpus has the long-range structure it promises; the trained model uses it (slow)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prune.testbed.build import TestbedSpec, ensure_data, load_split_texts, make_tokenizer
from prune.testbed.corpus import BOS_ID, CorpusSpec, dependency_distances, generate_documents, render, vocabulary


def test_every_long_range_dependency_is_longer_than_min_gap():
    spec = CorpusSpec()
    docs = generate_documents(spec, 6, seed=3)
    ids = np.concatenate([[BOS_ID] + d for d in docs])
    dist = dependency_distances(ids, spec)
    assert dist[dist > 0].min() >= spec.min_gap and dist.max() <= spec.max_gap + 4
    assert 0.02 < (dist > 0).mean() < 0.1
    # the dependency really is a copy: the value equals the one `dist` tokens back
    pos = np.flatnonzero(dist)
    assert np.array_equal(ids[pos], ids[pos - dist[pos]])
    # and documents reset facts: nothing depends across a <s>
    bos = np.flatnonzero(ids == BOS_ID)
    for p in pos:
        assert not ((bos > p - dist[p]) & (bos < p)).any()


def test_tokenizer_is_one_token_per_word_with_bos():
    spec = CorpusSpec()
    tok = make_tokenizer(spec)
    doc = generate_documents(spec, 1, seed=0)[0][:50]
    assert tok(render(doc, vocabulary(spec)))["input_ids"] == [BOS_ID] + doc


def test_train_and_test_splits_are_disjoint_and_cached(tmp_path):
    spec = CorpusSpec(train_docs=4, test_docs=2, doc_tokens=256)
    folder = ensure_data(spec, tmp_path)
    assert ensure_data(spec, tmp_path) == folder  # second call reuses the cache
    train, test = load_split_texts(spec, tmp_path, "train"), load_split_texts(spec, tmp_path, "test")
    assert len(train) == 4 and len(test) == 2 and not set(train) & set(test)
    assert ensure_data(CorpusSpec(train_docs=5, test_docs=2, doc_tokens=256), tmp_path) != folder


def test_a_cache_dir_with_tilde_lands_in_the_home_folder(tmp_path, monkeypatch):
    """The default cache_dir is "~/.cache/prune-lab": the whole build must go to $HOME, none to a "./~"."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    spec = CorpusSpec(train_docs=2, test_docs=1, doc_tokens=128)
    folder = ensure_data(spec, "~/plc")
    assert folder.is_relative_to(home / "plc") and (folder / "DONE").exists()
    assert len(load_split_texts(spec, "~/plc", "test")) == 1
    assert list(cwd.iterdir()) == []


def test_a_failed_build_leaves_no_half_built_folder(tmp_path, monkeypatch):
    import datasets

    def broken_save(self, path, *args, **kwargs):  # writes part of the data, then fails
        Path(path).mkdir(parents=True)
        (Path(path) / "part-0.arrow").write_bytes(b"x")
        raise OSError("disk full")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ensure_data(CorpusSpec(train_docs=2, test_docs=1, doc_tokens=128), tmp_path)
    leftovers = [p.name for p in (tmp_path / "testbed").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_unknown_testbed_settings_are_refused_by_the_schema():
    from hydra.errors import ConfigCompositionException

    from conftest import compose_config
    from prune.errors import ConfigError
    from prune.preflight import check_added_keys

    with pytest.raises(ConfigCompositionException) as info:
        compose_config("testbed.model.hidden=3")
    assert "testbed.model.hidden" in f"{info.value} {info.value.__cause__}"  # the key, not Hydra's wording
    with pytest.raises(ConfigError) as info:
        check_added_keys(compose_config("+testbed.model.hidden=3"))
    assert str(info.value) == "testbed.model.hidden is not a setting of testbed; did you mean testbed.model.hidden_size?"


@pytest.mark.slow
def test_default_testbed_learns_long_range_facts(cache_dir):
    """Acceptance: far above chance on facts > 128 tokens back, and context beyond 128 tokens helps."""
    from omegaconf import OmegaConf

    from conftest import compose_config
    from prune.checkpoint import load_pruned
    from testbed_analysis import dependency_losses_by_window
    from prune.testbed.build import ensure_model, token_stream

    spec = TestbedSpec.from_dict(OmegaConf.to_container(compose_config().testbed, resolve=True))
    model = load_pruned(ensure_model(spec, cache_dir, progress=False)).eval()
    stream = token_stream(spec.corpus, cache_dir, "test")
    res = dependency_losses_by_window(model, stream, spec.corpus, (128, 1024), max_tokens=16384)
    chance = 1 / spec.corpus.values_per_attribute
    assert res[1024]["accuracy"] > 4 * chance
    assert res[128]["accuracy"] < 2 * chance
    assert res[1024]["loss"] < res[128]["loss"] - 0.8


def _default_spec():
    from omegaconf import OmegaConf

    from conftest import compose_config

    return TestbedSpec.from_dict(OmegaConf.to_container(compose_config().testbed, resolve=True))


def _shipped_digests() -> tuple[str, dict]:
    from prune.testbed.build import model_dir
    from prune.testbed.shipped import DIGESTS, shipped_folder

    name = model_dir(_default_spec(), "unused").name
    folder = shipped_folder(name)
    assert folder is not None, f"no shipped weights for the default testbed ({name}): run python -m prune.testbed.reship"
    return name, json.loads((folder / DIGESTS).read_text())


def test_the_default_testbed_comes_shipped_and_trains_nothing(tmp_path, monkeypatch):
    """From an empty cache the default testbed is the package's weights, checked by digest; no training runs."""
    import prune.testbed.train
    from transformers import AutoModelForCausalLM

    from prune.testbed.build import ensure_model
    from prune.testbed.shipped import sha256

    def no_training(*args, **kwargs):
        raise AssertionError("the default testbed was trained")

    monkeypatch.setattr(prune.testbed.train, "train_model", no_training)
    name, digests = _shipped_digests()
    folder = ensure_model(_default_spec(), tmp_path, progress=False)
    assert folder.name == name and sha256(folder / "model.safetensors") == digests["model.safetensors"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 6 and (folder / "tokenizer.json").exists()


def test_a_shipped_copy_that_fails_its_digest_is_not_used(tmp_path):
    import shutil

    from prune.testbed.shipped import WEIGHTS, install

    name, _ = _shipped_digests()
    copy = tmp_path / "weights" / name
    shutil.copytree(WEIGHTS / name, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of one weight
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert not install(name, tmp_path / "dest", root=tmp_path / "weights")
    assert not (tmp_path / "dest").exists()
    assert install(name, tmp_path / "good", root=WEIGHTS) and (tmp_path / "good" / "model.safetensors").exists()


@pytest.mark.slow
def test_retraining_reproduces_the_shipped_weights_bit_identically(tmp_path):
    """The fallback gives the same model: training the default spec again writes the shipped bytes."""
    from prune.testbed.build import ensure_model
    from prune.testbed.shipped import sha256

    _, digests = _shipped_digests()
    folder = ensure_model(_default_spec(), tmp_path, progress=False, use_shipped=False)
    assert sha256(folder / "model.safetensors") == digests["model.safetensors"]
