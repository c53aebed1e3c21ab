"""The testbed corpus has the long-range structure it promises; the trained model uses it (slow)."""
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
    assert "Key 'hidden' not in 'TestbedModelSpecSchema'" in str(info.value.__cause__)
    with pytest.raises(ConfigError) as info:
        check_added_keys(compose_config("+testbed.model.hidden=3"))
    assert str(info.value) == "testbed.model.hidden is not a setting of testbed; did you mean testbed.model.hidden_size?"


@pytest.mark.slow
def test_default_testbed_learns_long_range_facts(cache_dir):
    """Acceptance: far above chance on facts > 128 tokens back, and context beyond 128 tokens helps."""
    from omegaconf import OmegaConf

    from conftest import compose_config
    from prune.checkpoint import load_pruned
    from prune.testbed.analysis import dependency_losses_by_window
    from prune.testbed.build import ensure_model, token_stream

    spec = TestbedSpec.from_dict(OmegaConf.to_container(compose_config().testbed, resolve=True))
    model = load_pruned(ensure_model(spec, cache_dir, progress=False)).eval()
    stream = token_stream(spec.corpus, cache_dir, "test")
    res = dependency_losses_by_window(model, stream, spec.corpus, (128, 1024), max_tokens=16384)
    chance = 1 / spec.corpus.values_per_attribute
    assert res[1024]["accuracy"] > 4 * chance
    assert res[128]["accuracy"] < 2 * chance
    assert res[1024]["loss"] < res[128]["loss"] - 0.8
