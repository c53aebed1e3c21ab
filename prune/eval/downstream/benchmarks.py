"""Real zero-shot benchmarks from local JSONL files: LAMBADA (OpenAI), ARC-Easy, PIQA and BLiMP, offline.

``eval.task_data=<folder>`` names a folder laid out as ``BENCHMARKS`` says (the layout of the shared test
assets' ``data/tasks``); ``eval.tasks`` then may name ``local_lambada_openai``, ``local_arc_easy``,
``local_piqa`` and ``local_blimp``. The ``local_`` prefix keeps them apart from lm-eval's built-in tasks
of the same benchmarks, which download their data from the Hugging Face hub.

The prompts are those of lm-eval's built-in tasks of the same names (so that numbers compare with
published ones): LAMBADA scores the last space-separated word given the text before it (``acc``: greedy
decoding reproduces the word; ``perplexity`` of the word); ARC-Easy and PIQA score ``" " + choice`` after
``"Question: <q>\\nAnswer:"`` (``acc``, ``acc_norm`` by byte length); BLiMP scores each whole sentence
after an empty context (lm-eval then conditions on the end-of-text token), the acceptable one must win.
``tests/test_benchmarks.py`` checks that the local and the built-in definitions build the same requests.

``check_task_data`` reads every line of the named files before any model work and refuses a missing
folder or file, or a malformed line, in one line (``TaskDataError``). ``ensure_benchmark_dir`` writes the
task YAMLs (data files by absolute path) once per content of the data files under the cache folder.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from prune.errors import DownstreamError

VERSION = 1
ARC_PROMPT = "Question: {{question}}\nAnswer:"
MC_METRICS = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]

# task -> data file relative to eval.task_data, the fields every line needs, the lm-eval config keys
BENCHMARKS: dict[str, dict] = {
    "local_lambada_openai": {
        "file": "lambada_openai/lambada_openai_test.jsonl", "fields": ("text",),
        "config": {"output_type": "loglikelihood",
                   "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}",
                   "doc_to_target": "{{' '+text.split(' ')[-1]}}",
                   "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                                   {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]},
    },
    "local_arc_easy": {
        "file": "arc_easy/arc_easy_test.jsonl", "fields": ("question", "choices", "label"),
        "config": {"output_type": "multiple_choice", "doc_to_text": ARC_PROMPT, "doc_to_choice": "choices",
                   "doc_to_target": "label", "metric_list": MC_METRICS},
    },
    "local_piqa": {
        "file": "piqa/piqa_validation.jsonl", "fields": ("goal", "choices", "label"),
        "config": {"output_type": "multiple_choice", "doc_to_text": "Question: {{goal}}\nAnswer:",
                   "doc_to_choice": "choices", "doc_to_target": "label", "metric_list": MC_METRICS},
    },
    "local_blimp": {
        "file": "blimp/blimp_subset6.jsonl", "fields": ("choices", "label"),
        "config": {"output_type": "multiple_choice", "doc_to_text": "", "doc_to_choice": "choices",
                   "doc_to_target": "label", "num_fewshot": 0,
                   "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]},
    },
}


class TaskDataError(DownstreamError):
    """A local benchmark's data folder or file that cannot be used; the message names the file and line."""


def wanted(tasks) -> list[str]:
    """The local benchmark tasks among ``tasks``, in order."""
    return [t for t in dict.fromkeys(str(t) for t in (tasks or [])) if t in BENCHMARKS]


def _bad_line(task: str, doc) -> str | None:
    """Why one parsed line cannot be an item of ``task`` (None if it can)."""
    spec = BENCHMARKS[task]
    if not isinstance(doc, dict):
        return "not a JSON object"
    missing = [f for f in spec["fields"] if f not in doc]
    if missing:
        return f"no field {', '.join(missing)}"
    if "text" in spec["fields"]:
        if not isinstance(doc["text"], str) or " " not in doc["text"].strip():
            return "'text' must be a string of at least two words (the target is the last one)"
        return None
    choices, label = doc["choices"], doc["label"]
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        return "'choices' must be a list of at least two non-empty strings"
    if task == "local_blimp" and len(choices) != 2:
        return "a BLiMP item has exactly two sentences"
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        return f"'label' must be an index into 'choices' (0..{len(choices) - 1})"
    for field in spec["fields"]:
        if field not in ("choices", "label") and not isinstance(doc[field], str):
            return f"'{field}' must be a string"
    return None


def chance(docs: list[dict]) -> float:
    """Accuracy of guessing: the mean of 1 / number of choices (0 for LAMBADA's open vocabulary)."""
    return sum(1 / len(d["choices"]) for d in docs) / len(docs) if "choices" in docs[0] else 0.0


def read_items(task: str, path: Path) -> list[dict]:
    """Every item of one task's file, checked; ``TaskDataError`` names the first bad line."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskDataError(f"{task}: {path} line {number} is not JSON ({exc.msg})") from None
            why = _bad_line(task, doc)
            if why:
                raise TaskDataError(f"{task}: {path} line {number}: {why}")
            docs.append(doc)
    if not docs:
        raise TaskDataError(f"{task}: {path} holds no item")
    return docs


def data_files(tasks, folder) -> dict[str, Path]:
    """task -> its data file under ``folder`` (eval.task_data); refuses a missing folder or file in one line."""
    names = wanted(tasks)
    if not names:
        return {}
    if folder in (None, ""):
        raise TaskDataError(f"eval.tasks names {', '.join(names)}: set eval.task_data to the folder of their JSONL files")
    root = Path(str(folder)).expanduser().resolve()
    if not root.is_dir():
        raise TaskDataError(f"eval.task_data={folder}: no such folder")
    files = {}
    for task in names:
        path = root / BENCHMARKS[task]["file"]
        if not path.is_file():
            raise TaskDataError(f"{task}: its data file {path} is missing (eval.task_data={folder})")
        files[task] = path
    return files


def check_task_data(tasks, folder) -> dict[str, int]:
    """Refuse missing or malformed local benchmark data in one line; returns task -> number of items."""
    return {task: len(read_items(task, path)) for task, path in data_files(tasks, folder).items()}


def task_config(task: str, path: Path) -> dict:
    """The lm-eval task config of one local benchmark reading ``path``."""
    return {"task": task, "tag": ["local_benchmarks"], "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": str(path)}}, "test_split": "test",
            **BENCHMARKS[task]["config"], "metadata": {"version": VERSION}}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_benchmark_dir(tasks, folder, cache_dir) -> Path | None:
    """The lm-eval task folder of the local benchmarks in ``tasks`` (None if none), checked and written once.

    Its name is a digest of the files' contents, so changed data gets a new folder (and a new key for the
    cached dense scores); the YAMLs name the data files by absolute path.
    """
    import yaml
    from filelock import FileLock

    files = data_files(tasks, folder)
    if not files:
        return None
    for task, path in files.items():
        read_items(task, path)
    key = hashlib.sha256(json.dumps([VERSION, {t: [str(p), _digest(p)] for t, p in sorted(files.items())}])
                         .encode()).hexdigest()[:16]
    target = (Path(str(cache_dir)).expanduser() / "benchmarks" / f"tasks-{key}").resolve()
    if (target / "DONE").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "DONE").exists():
            for task, path in files.items():
                (target / f"{task}.yaml").write_text(yaml.safe_dump(task_config(task, path), sort_keys=False))
            (target / "DONE").write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
    return target
