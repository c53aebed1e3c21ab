"""Downstream accuracy with lm-eval: the local testbed tasks, the evaluation wrapper and the up-front checks."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from conftest import REPO, compose_config

SPEC_CACHE: dict = {}


def tiny_spec():
    """The test suite's tiny testbed spec (prune/conf/testbed/tiny.yaml): vocab 256, 1024 positions."""
    if "spec" not in SPEC_CACHE:
        from omegaconf import OmegaConf

        from prune.testbed.build import TestbedSpec

        cfg = compose_config("testbed=tiny")
        SPEC_CACHE["spec"] = TestbedSpec.from_dict(OmegaConf.to_container(cfg.testbed, resolve=True))
    return SPEC_CACHE["spec"]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    from prune.testbed.tasks import write_task_dir

    return write_task_dir(tiny_spec().corpus, tmp_path_factory.mktemp("testbed_tasks"), n_items=60)


def _items(task_dir: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (task_dir / f"{name}.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ the generated tasks
def test_longrange_gold_is_the_value_stated_earlier(task_dir):
    """An oracle that copies the attribute's last value from the context text scores 1.0."""
    spec = tiny_spec().corpus
    items = _items(task_dir, "testbed_longrange")
    assert 30 <= len(items) <= 60
    hits = 0
    for item in items:
        tokens = item["context"].split(" ")
        assert len(tokens) == item["context_tokens"] <= 1023
        marker = tokens[-1]
        assert item["choices"] == [f"{marker}:{v}" for v in range(spec.values_per_attribute)]
        last = max(i for i, t in enumerate(tokens) if t.startswith(marker + ":"))
        distance = len(tokens) - last  # from the stated value to the answer position
        assert distance == item["distance"] > 128
        hits += item["choices"][item["gold"]] == tokens[last]
    assert hits == len(items)
    assert len({item["gold"] for item in items}) > 4  # answers spread over the values


def test_local_gold_is_the_most_likely_successor(task_dir):
    from prune.testbed.corpus import successor_table, vocabulary

    spec = tiny_spec().corpus
    successors = successor_table(spec)
    index = {tok: i for i, tok in enumerate(vocabulary(spec))}
    items = _items(task_dir, "testbed_local")
    assert len(items) == 60
    for item in items:
        tokens = item["context"].split(" ")
        word = index[tokens[-1]] - spec.first_word_id
        assert word >= 0 and len(tokens) <= 256
        choices = [index[c] - spec.first_word_id for c in item["choices"]]
        assert len(set(choices)) == 4
        assert choices[item["gold"]] == successors[word][0]
        assert all(c not in successors[word] for i, c in enumerate(choices) if i != item["gold"])


def test_tasks_come_from_the_test_split_and_are_deterministic(task_dir, tmp_path):
    from prune.testbed.corpus import generate_documents, render, split_seeds, vocabulary
    from prune.testbed.tasks import ensure_task_dir, write_task_dir

    spec = tiny_spec().corpus
    vocab = vocabulary(spec)
    seeds = split_seeds(spec)
    test = [render(d, vocab) for d in generate_documents(spec, spec.test_docs, seeds["test"])]
    train = [render(d, vocab) for d in generate_documents(spec, spec.train_docs, seeds["train"])]
    for name in ("testbed_longrange", "testbed_local"):
        for item in _items(task_dir, name):
            assert test[item["doc"]].startswith(item["context"] + " ")
            assert not any(doc.startswith(item["context"]) for doc in train)
    again = write_task_dir(spec, tmp_path / "again", n_items=60)
    for name in ("testbed_longrange.jsonl", "testbed_local.jsonl"):
        assert (again / name).read_bytes() == (task_dir / name).read_bytes()
    cached = ensure_task_dir(spec, tmp_path / "cache", n_items=60)
    assert (cached / "DONE").exists() and ensure_task_dir(spec, tmp_path / "cache", n_items=60) == cached


def test_lm_eval_is_imported_lazily():
    for path in (*sorted(str(p.relative_to(REPO)) for p in (REPO / "prune" / "downstream").glob("*.py")), "prune/testbed/tasks.py"):
        tree = ast.parse((REPO / path).read_text())
        for node in tree.body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "lm_eval" for n in names), f"{path} imports lm_eval at module level"


def test_missing_lm_eval_is_one_line(monkeypatch):
    import sys

    from prune.eval.downstream import INSTALL_HINT, check_tasks

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    with pytest.raises(ValueError) as err:
        check_tasks(["testbed_local"], None)
    assert str(err.value) == INSTALL_HINT == "downstream tasks need lm-eval: pip install -e .[eval]"


# ---------------------------------------------------------------------------------- with lm-eval
def test_check_tasks_accepts_local_tasks_and_their_tag(task_dir):
    pytest.importorskip("lm_eval")
    from prune.eval.downstream import check_tasks

    check_tasks(["testbed_longrange", "testbed_local"], task_dir)
    check_tasks(["prune_testbed"], str(task_dir))
    check_tasks(["testbed_local"], [task_dir])  # several folders may be given


def test_check_tasks_refuses_missing_local_data(task_dir, tmp_path):
    pytest.importorskip("lm_eval")
    import shutil

    from prune.eval.downstream import check_tasks

    broken = tmp_path / "broken"
    shutil.copytree(task_dir, broken)
    yaml_text = (broken / "testbed_local.yaml").read_text().replace(str(task_dir), str(broken))
    (broken / "testbed_local.yaml").write_text(yaml_text)
    (broken / "testbed_local.jsonl").unlink()
    with pytest.raises(ValueError, match="testbed_local.*data file .* is missing") as err:
        check_tasks(["testbed_local"], broken)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_check_tasks_refuses_unknown_and_offline_hub_tasks(task_dir):
    pytest.importorskip("lm_eval")
    import os

    from prune.eval.downstream import check_tasks

    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    with pytest.raises(ValueError, match="nonexistent_task") as err:
        check_tasks(["nonexistent_task"], task_dir)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="boolq") as err:
        check_tasks(["boolq"], None)  # a real lm-eval task; its hub data set is not cached in the test HF_HOME
    message = str(err.value)
    assert "\n" not in message and "HF_DATASETS_OFFLINE=1" in message and "testbed_longrange" in message


def test_dataset_check_loads_metadata_only(tmp_path):
    """A data set that resolves offline (here a local folder) passes; an uncached hub one does not."""
    pytest.importorskip("lm_eval")
    from prune.eval.downstream import _dataset_problem

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.jsonl").write_text('{"text": "a"}\n')
    assert _dataset_problem({"dataset_path": str(tmp_path / "data")}) is None
    assert _dataset_problem({"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(tmp_path / "data" / "test.jsonl")}}}) is None
    problem = _dataset_problem({"dataset_path": "someone/not_cached_anywhere", "dataset_name": "x"})
    assert "someone/not_cached_anywhere/x" in problem and "HF_DATASETS_OFFLINE=1" in problem


def test_evaluate_tasks_on_a_pruned_model(task_dir):
    """A (random, pruned) testbed-shaped model through lm-eval: structure, ranges and item counts."""
    pytest.importorskip("lm_eval")
    from transformers import LlamaForCausalLM

    from prune.eval.downstream import evaluate_tasks
    from prune.pruning import PruningPlan, apply_plan
    from prune.structure import model_shape
    from prune.testbed.build import make_tokenizer, model_config

    spec = tiny_spec()
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(model_config(spec), attn_implementation="sdpa").eval()
    shape = model_shape(model)
    plan = PruningPlan.keep_all(shape)
    plan.keep_attention[0] = [1]  # one KV group left in layer 0
    plan.keep_mlp[1] = list(range(0, shape.layers[1].intermediate_size, 2))
    apply_plan(model, plan)
    model.train()  # the caller's mode comes back
    rng_before = torch.get_rng_state()

    limit = 5
    result = evaluate_tasks(
        model, make_tokenizer(spec.corpus), ["prune_testbed"], batch_size=4, limit=limit, device="cpu",
        local_task_dir=task_dir,
    )
    assert set(result["tasks"]) == {"testbed_longrange", "testbed_local"}
    for name, task in result["tasks"].items():
        assert task["metric"] == "acc"
        assert 0.0 <= task["value"] <= 1.0
        assert task["stderr"] is None or task["stderr"] >= 0
        assert task["n"] == limit
        assert task["metrics"]["acc"] == task["value"]
    values = [t["value"] for t in result["tasks"].values()]
    assert result["mean"] == pytest.approx(sum(values) / len(values))
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng_before)
    json.dumps(result)  # goes into metrics.json as is
