"""The local benchmarks (LAMBADA, ARC-Easy, PIQA, BLiMP from JSONL): the same requests as lm-eval's
built-in tasks, one-line refusals of bad data, the seeded item subset and the per-item record."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import compose_config, shared_path

TASKS = ["local_lambada_openai", "local_arc_easy", "local_piqa", "local_blimp"]
BUILTIN = {"local_lambada_openai": "lambada/lambada_openai.yaml", "local_arc_easy": "arc/arc_easy.yaml",
           "local_piqa": "piqa/piqa.yaml", "local_blimp": "blimp/anaphor_number_agreement.yaml"}
N = 12


def _original(task: str, doc: dict) -> dict:
    """A local item in the layout of the hub data set the built-in task reads."""
    if task == "local_lambada_openai":
        return {"text": doc["text"]}
    if task == "local_arc_easy":
        letters = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
        return {"id": doc["id"], "question": doc["question"], "answerKey": letters[doc["label"]],
                "choices": {"text": doc["choices"], "label": letters}}
    if task == "local_piqa":
        return {"goal": doc["goal"], "sol1": doc["choices"][0], "sol2": doc["choices"][1], "label": doc["label"]}
    good = doc["choices"][doc["label"]]
    return {"sentence_good": good, "sentence_bad": doc["choices"][1 - doc["label"]]}


def _requests(task) -> list[tuple[list, object]]:
    """Per doc: the (context, continuation) pairs the task asks the model for, and the gold continuation."""
    task.build_all_requests(limit=N, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    out = []
    for doc_id in sorted(by_doc):
        insts = sorted(by_doc[doc_id], key=lambda i: i.idx)
        doc = insts[0].doc
        target = task.doc_to_target(doc)
        pairs = [tuple(i.args) for i in insts]
        gold = pairs[target][1] if isinstance(target, int) else target
        out.append((sorted(pairs), gold))
    return out


@pytest.fixture(scope="module")
def data() -> Path:
    return shared_path("data", "tasks")


def test_local_tasks_build_the_builtin_requests(data, tmp_path):
    """On the first items of each file: the same context/continuation strings, and the same gold answer,
    as lm-eval's own task definition gives for the same documents in the hub layout."""
    pytest.importorskip("lm_eval")
    import lm_eval
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks import TaskManager, get_task_dict
    from lm_eval.tasks._yaml_loader import load_yaml

    from prune.eval.downstream.benchmarks import BENCHMARKS, ensure_benchmark_dir, read_items

    folder = ensure_benchmark_dir(TASKS, data, tmp_path / "cache")
    local = get_task_dict(TASKS, TaskManager(include_path=str(folder), include_defaults=False))
    builtin_dir = Path(lm_eval.__file__).parent / "tasks"
    for task in TASKS:
        docs = read_items(task, data / BENCHMARKS[task]["file"])[:N]
        original = tmp_path / f"{task}.jsonl"
        original.write_text("".join(json.dumps(_original(task, d)) + "\n" for d in docs))
        config = load_yaml(builtin_dir / BUILTIN[task])
        config.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {"test": str(original)}},
                      training_split=None, validation_split=None, test_split="test")
        expected = _requests(ConfigurableTask(config=config))
        got = _requests(local[task])
        assert len(got) == len(expected) == N, task
        assert got == expected, task
    first = _requests(local["local_arc_easy"])[0]
    assert first[0][0][0] == "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    assert first[1] == " Sunlight is the source of energy for nearly all ecosystems."
    lam = _requests(local["local_lambada_openai"])[0]
    assert lam[0][0][1] == " signs" and lam[0][0][0].endswith("I don't care about")


def test_check_task_data_counts_every_item(data):
    from prune.eval.downstream.benchmarks import check_task_data

    assert check_task_data(TASKS, data) == {"local_lambada_openai": 5153, "local_arc_easy": 2376, "local_piqa": 1838,
                                            "local_blimp": 6000}
    assert check_task_data(["testbed_local"], None) == {}  # no local benchmark asked for: nothing to check


@pytest.mark.parametrize("line, why", [
    ("{not json", "line 2 is not JSON"),
    ('{"question": "q", "choices": ["a", "b"]}', "line 2: no field label"),
    ('{"question": "q", "choices": ["a", "b"], "label": 2}', r"line 2: 'label' must be an index into 'choices' \(0..1\)"),
    ('{"question": "q", "choices": ["a"], "label": 0}', "line 2: 'choices' must be a list of at least two"),
    ('["q"]', "line 2: not a JSON object"),
])
def test_malformed_data_is_refused_in_one_line(tmp_path, line, why):
    from prune.eval.downstream.benchmarks import TaskDataError, check_task_data
    from prune.errors import PruneLabError

    (tmp_path / "arc_easy").mkdir()
    good = '{"question": "Why?", "choices": ["a", "b", "c"], "label": 1}'
    (tmp_path / "arc_easy" / "arc_easy_test.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(TaskDataError, match=why) as err:
        check_task_data(["local_arc_easy"], tmp_path)
    assert isinstance(err.value, PruneLabError) and "\n" not in str(err.value)
    assert "arc_easy_test.jsonl" in str(err.value)


def test_missing_folder_or_file_is_refused(tmp_path):
    from prune.eval.downstream.benchmarks import TaskDataError, check_task_data

    with pytest.raises(TaskDataError, match="set eval.task_data"):
        check_task_data(["local_piqa"], None)
    with pytest.raises(TaskDataError, match="eval.task_data=.*nowhere: no such folder"):
        check_task_data(["local_piqa"], tmp_path / "nowhere")
    with pytest.raises(TaskDataError, match=r"local_blimp: its data file .*blimp/blimp_subset6.jsonl is missing"):
        check_task_data(["local_blimp"], tmp_path)


@pytest.mark.slow
def test_a_job_refuses_missing_task_data_before_the_model_loads(tmp_path):
    """prune-run with the data folder missing: exit 2, one line, no model work."""
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "prune.run", "model=testbed", "testbed=tiny", "eval.tasks=[local_piqa]",
         f"eval.task_data={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if "task_data" in ln]
    assert len(lines) == 1 and "no such folder" in lines[0]
    assert not (tmp_path / "run" / "metrics.json").exists() or "load_model" not in (tmp_path / "run" / "metrics.json").read_text()


def test_item_subset_is_fixed_and_independent_of_the_job():
    from prune.eval.downstream.evaluate import item_subset

    a = item_subset("local_piqa", 1838, 300)
    assert a == item_subset("local_piqa", 1838, 300)  # no hidden state, no job seed
    assert len(a) == len(set(a)) == 300 and a == sorted(a) and 0 <= a[0] and a[-1] < 1838
    assert a != list(range(300))  # a spread sample, not the head of the file
    assert item_subset("local_blimp", 6000, 300) != a
    assert set(a) < set(item_subset("local_piqa", 1838, 600))  # nested: a larger run contains a study's items
    assert item_subset("local_piqa", 1838, 5000) is None and item_subset("local_piqa", 1838, None) is None
    # BLiMP's file is sorted by paradigm (1000 each): a subset of 600 must reach every one of the six
    assert {i // 1000 for i in item_subset("local_blimp", 6000, 600)} == set(range(6))


def test_config_declares_the_new_settings():
    cfg = compose_config("eval.tasks=[local_piqa]", "eval.task_data=/x", "+eval.tasks_items={local_piqa: 40}")
    assert cfg.eval.task_data == "/x" and dict(cfg.eval.tasks_items) == {"local_piqa": 40}


def test_item_record_on_a_model(data, tmp_path):
    """A small random model through lm-eval on a seeded subset: the items evaluated are the subset's, and
    the per-item record reproduces the task's accuracy."""
    pytest.importorskip("lm_eval")
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    from prune.eval.downstream import evaluate_tasks
    from prune.eval.downstream.benchmarks import ensure_benchmark_dir
    from prune.eval.downstream.evaluate import item_subset

    chars = sorted({chr(c) for c in range(32, 127)} | {"\n"})
    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(chars)}, "<unk>": len(chars) + 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab) + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048)
    model = LlamaForCausalLM(config).eval()
    folder = ensure_benchmark_dir(["local_piqa", "local_blimp"], data, tmp_path / "cache")
    result = evaluate_tasks(model, tokenizer, ["local_piqa", "local_blimp"], batch_size=8, limit=3, device="cpu",
                            local_task_dir=folder, items={"local_blimp": 9})
    blimp, piqa = result["tasks"]["local_blimp"], result["tasks"]["local_piqa"]
    assert blimp["items"]["doc_ids"] == item_subset("local_blimp", 6000, 9) and blimp["n"] == 9
    assert piqa["items"]["doc_ids"] == [0, 1, 2] and piqa["n"] == 3  # the limit, for the task items does not name
    for task in (blimp, piqa):
        bits = task["items"]["acc"]
        assert len(bits) == task["n"] and set(bits) <= {"0", "1"}
        assert task["value"] == pytest.approx(bits.count("1") / len(bits))
    assert piqa["metrics"]["acc_norm"] == pytest.approx(piqa["items"]["acc_norm"].count("1") / 3)
    assert result["items"] == {"local_blimp": 9}
    json.dumps(result)


def test_the_smollm2_study_checks_its_four_benchmarks_before_any_model_work(data, tmp_path, monkeypatch):
    """experiment=smollm2_128_vs_512: the four local tasks, the same seeded items in every job, and the
    up-front check (data folder read line by line, lm-eval tasks resolved) passes on the shared files."""
    pytest.importorskip("lm_eval")
    from conftest import REPO

    from prune.job.inputs import downstream_tasks

    monkeypatch.chdir(REPO)  # task_data's default is relative: ../shared/data/tasks
    cfg = compose_config("experiment=smollm2_128_vs_512", f"cache_dir={tmp_path}")
    assert list(cfg.eval.tasks) == TASKS
    assert dict(cfg.eval.tasks_items) == {"local_lambada_openai": 100, "local_arc_easy": 100, "local_piqa": 100,
                                          "local_blimp": 300}
    tasks, dirs = downstream_tasks(cfg, object())
    assert tasks == TASKS and len(dirs) == 1 and sorted(p.name for p in Path(dirs[0]).glob("*.yaml")) == sorted(
        f"{t}.yaml" for t in TASKS)
    bad = compose_config("experiment=smollm2_128_vs_512", f"cache_dir={tmp_path}", "+eval.tasks_items={local_rte: 5}")
    from prune.errors import DownstreamError

    with pytest.raises(DownstreamError, match="eval.tasks_items names local_rte, not among the tasks evaluated"):
        downstream_tasks(bad, object())


@pytest.mark.slow
def test_a_job_scores_the_local_benchmarks_before_and_after_pruning(data, tiny_testbed, tmp_path):
    """The whole job on the tiny testbed: the local benchmarks go through the pipeline, the seeded items
    are the same before and after pruning, and metrics.json keeps their per-item records."""
    pytest.importorskip("lm_eval")
    from conftest import compose_config as compose
    from prune.eval.downstream.evaluate import item_subset
    from prune.job import run_job

    cfg = compose("testbed=tiny", "seq_len=64", "num_samples=8", "batch_size=2", "eval.lengths=[64]", "progress=false",
                  "logger=none", "save_model=false", "eval.tasks=[local_blimp,local_piqa]", f"eval.task_data={data}",
                  "+eval.tasks_items={local_blimp: 6, local_piqa: 4}")
    metrics = run_job(cfg, tmp_path / "job")
    for stage in ("before", "after"):
        tasks = metrics["downstream"][stage]["tasks"]
        assert tasks["local_blimp"]["items"]["doc_ids"] == item_subset("local_blimp", 6000, 6)
        assert tasks["local_piqa"]["items"]["doc_ids"] == item_subset("local_piqa", 1838, 4)
        assert len(tasks["local_piqa"]["items"]["acc_norm"]) == 4
    on_disk = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert on_disk["downstream"]["after"]["tasks"]["local_blimp"]["items"] == metrics["downstream"]["after"]["tasks"]["local_blimp"]["items"]
    assert set(on_disk["acc_after"]) == {"local_blimp", "local_piqa", "mean"}
