"""Tiny multiple-choice tasks on the testbed corpus, written as an lm-evaluation-harness task folder.

Two tasks, both drawn from the **test** split's documents (the same seeds as ``ensure_data``'s ``test``
split; never the training split), deterministic for a given ``CorpusSpec``:

* ``testbed_longrange``: the context is a document prefix that ends right after a fact marker (``A07``)
  whose previous mention lies more than ``min_distance`` (128) tokens back; the choices are the
  ``values_per_attribute`` possible values of that attribute (``A07:0`` ... ``A07:7``), the answer is the
  value stated earlier. Chance is 1 / values_per_attribute (0.125); anything clearly above it needs
  attention over more than 128 tokens.
* ``testbed_local``: the context is a short document prefix that ends in a word; the choices are that
  word's most likely successor under the Markov chain (probability 0.85, ``successor_table``) and three
  words that can never follow it. Chance is 0.25; it needs only the last token (a local-structure
  control: pruning that destroys it broke the model, not just its long-range recall).

Contexts are document *prefixes*: lm-eval's tokenizer call prepends ``<s>`` as the data pipeline does
for every document, so the model sees exactly what it was trained on. Every context has at most
``max_context`` tokens (1023: with ``<s>`` the model input is at most 1024 positions).

The testbed tokenizer is word-level, so choices are plain token strings and the continuation is
``" " + choice`` (``target_delimiter: " "``): one token per choice, which also lets lm-eval score all
choices of an item with one forward pass (its single-token logits cache).

``write_task_dir(spec, out_dir)`` writes ``<task>.yaml`` + ``<task>.jsonl`` per task and returns the
folder to pass to ``TaskManager(include_path=...)`` (``prune.eval.downstream.evaluate_tasks(...,
local_task_dir=...)``); ``ensure_task_dir(spec, cache_dir)`` does it once per spec under the cache.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from prune.testbed.corpus import (
    PERIOD_ID,
    SPECIAL_TOKENS,
    SUCCESSORS_PER_WORD,
    CorpusSpec,
    dependency_distances,
    generate_documents,
    render,
    split_seeds,
    successor_table,
    vocabulary,
)

TASKS_VERSION = 1  # bump when the generated items change
LONGRANGE = "testbed_longrange"
LOCAL = "testbed_local"
TAG = "prune_testbed"  # lm-eval tag that selects both tasks
LOCAL_TASKS = {LONGRANGE: "acc", LOCAL: "acc"}  # task -> metric reported (single-token choices: acc)
LOCAL_DISTRACTORS = 3
ITEM_SEED = 20240611  # fixed: which positions become items (the documents come from the test split seed)


def _test_documents(spec: CorpusSpec) -> list[list[int]]:
    """The test split, exactly as ``ensure_data`` generates it (one token list per document, no ``<s>``)."""
    return generate_documents(spec, spec.test_docs, split_seeds(spec)["test"])


def _pick(rng: np.random.Generator, candidates: list, n_items: int) -> list:
    """``n_items`` candidates without replacement, in a shuffled order (so ``limit=k`` is a random subset)."""
    if not candidates:
        return []
    order = rng.permutation(len(candidates))[: min(n_items, len(candidates))]
    return [candidates[i] for i in order.tolist()]


def longrange_items(
    spec: CorpusSpec, n_items: int = 200, min_distance: int = 128, max_context: int = 1023,
    docs: list[list[int]] | None = None,
) -> list[dict]:
    """Fact-recall items whose evidence lies more than ``min_distance`` tokens before the answer."""
    docs = _test_documents(spec) if docs is None else docs
    vocab = vocabulary(spec)
    n_val, marker0, value0 = spec.values_per_attribute, len(SPECIAL_TOKENS), spec.first_value_id
    candidates = []
    for d, doc in enumerate(docs):
        dist = dependency_distances(doc, spec)
        limit = min(len(doc) - 1, max_context)  # context = doc[:p] has p tokens
        for p in np.flatnonzero(dist > min_distance).tolist():
            if p <= limit:
                candidates.append((d, p, int(dist[p])))
    rng = np.random.default_rng([ITEM_SEED, 1])
    items = []
    for d, p, distance in _pick(rng, candidates, n_items):
        doc = docs[d]
        attr, value = divmod(doc[p] - value0, n_val)
        assert doc[p - 1] == marker0 + attr, "a fact value always follows its marker"
        first = value0 + attr * n_val
        items.append(
            {
                "context": render(doc[:p], vocab),
                "choices": [vocab[first + v] for v in range(n_val)],
                "gold": int(value),
                "distance": distance,
                "doc": d,
                "position": p,
                "context_tokens": p,
            }
        )
    return items


def _previous_word(doc: list[int], p: int, word0: int) -> int | None:
    """Index of the word emitted before the word at ``p`` (fact pairs skipped); None after ``.`` or at the start."""
    q = p - 1
    while q >= 0:
        tok = doc[q]
        if tok >= word0:
            return tok - word0
        if tok == PERIOD_ID:
            return None
        q -= 1  # a fact marker or value: the word chain runs on underneath
    return None


def local_items(
    spec: CorpusSpec, n_items: int = 200, min_context: int = 16, max_context: int = 256,
    docs: list[list[int]] | None = None,
) -> list[dict]:
    """Next-word items: the most likely successor of the last word vs words that never follow it."""
    docs = _test_documents(spec) if docs is None else docs
    vocab = vocabulary(spec)
    successors = successor_table(spec)
    word0, n_words = spec.first_word_id, spec.num_words
    candidates = []
    for d, doc in enumerate(docs):
        for p in range(min_context, min(max_context, len(doc) - 1) + 1):
            # context doc[:p] ends in a word whose own predecessor is a visible word (then the chain state,
            # including the previous word that local_order=2 uses, is fully determined by the context)
            if doc[p - 1] >= word0 and _previous_word(doc, p - 1, word0) is not None:
                candidates.append((d, p))
    rng = np.random.default_rng([ITEM_SEED, 2])
    items = []
    for d, p in _pick(rng, candidates, n_items):
        doc = docs[d]
        word = doc[p - 1] - word0
        slot = 0 if spec.local_order == 1 else _previous_word(doc, p - 1, word0) % SUCCESSORS_PER_WORD
        best = successors[word][slot]
        allowed = sorted(set(range(n_words)) - set(successors[word]))
        distractors = rng.choice(allowed, LOCAL_DISTRACTORS, replace=False).tolist()
        words = [best, *distractors]
        order = rng.permutation(len(words)).tolist()
        items.append(
            {
                "context": render(doc[:p], vocab),
                "choices": [vocab[word0 + words[i]] for i in order],
                "gold": order.index(0),
                "word": vocab[word0 + word],
                "doc": d,
                "position": p,
                "context_tokens": p,
            }
        )
    return items


def _task_yaml(name: str, data_file: Path, description: str) -> dict:
    return {
        "task": name,
        "tag": [TAG],
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "context",  # a column name: the text itself
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": " ",  # word-level tokenizer: the continuation is " A07:3" / " w12"
        "num_fewshot": 0,  # contexts are up to 1023 tokens; few-shot would not fit
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": TASKS_VERSION, "description": description},
    }


def write_task_dir(spec: CorpusSpec, out_dir: str | os.PathLike, n_items: int = 200) -> Path:
    """Write both tasks (YAML config + JSONL data each) to ``out_dir``; returns it (absolute) for include_path."""
    import yaml

    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    docs = _test_documents(spec)
    tasks = {
        LONGRANGE: (
            longrange_items(spec, n_items, docs=docs),
            f"recall an attribute value stated more than 128 tokens earlier (chance 1/{spec.values_per_attribute})",
        ),
        LOCAL: (
            local_items(spec, n_items, docs=docs),
            "the Markov chain's most likely next word vs three impossible words (chance 1/4)",
        ),
    }
    manifest = {"version": TASKS_VERSION, "corpus": asdict(spec), "split": "test", "tasks": {}}
    for name, (items, description) in tasks.items():
        if not items:
            raise ValueError(f"testbed task {name}: the test split has no suitable item (corpus settings too small)")
        data_file = out / f"{name}.jsonl"
        data_file.write_text("".join(json.dumps(item, sort_keys=True) + "\n" for item in items))
        (out / f"{name}.yaml").write_text(yaml.safe_dump(_task_yaml(name, data_file, description), sort_keys=False))
        chance = 1 / len(items[0]["choices"])
        manifest["tasks"][name] = {"items": len(items), "chance": chance, "metric": LOCAL_TASKS[name]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def task_dir(spec: CorpusSpec, cache_dir: str | os.PathLike, n_items: int = 200) -> Path:
    from prune.testbed.build import BUILD_VERSION, json_digest

    key = json_digest([BUILD_VERSION, TASKS_VERSION, n_items, asdict(spec)])
    return Path(cache_dir).expanduser() / "testbed" / f"tasks-{key}"


def ensure_task_dir(spec: CorpusSpec, cache_dir: str | os.PathLike, n_items: int = 200) -> Path:
    """The task folder for ``spec`` under ``cache_dir/testbed/``, written once (parallel jobs wait on a lock).

    Written in place (the YAML files name their data files by absolute path, so the folder cannot be
    built elsewhere and moved); ``DONE`` marks a complete folder.
    """
    from filelock import FileLock

    target = task_dir(spec, cache_dir, n_items).resolve()
    if (target / "DONE").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "DONE").exists():
            write_task_dir(spec, target, n_items)
            (target / "DONE").write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
    return target
