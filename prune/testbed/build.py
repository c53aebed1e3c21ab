"""Build (once) and cache the testbed: its corpus as a `datasets` dataset and a tiny LLaMA trained on it.

Both live under ``<cache_dir>/testbed/`` in folders named by a hash of every setting that shapes them, so
changing a setting builds a new testbed and never reuses a stale one. A file lock makes parallel sweep
jobs wait for one build instead of racing.

Training (``prune.testbed.train``) is a three-phase curriculum (measured: plain training stays at chance on
long-range recall for minutes on 2 CPU cores; it reaches ~0.95 in about 2.5 minutes).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from prune.testbed.corpus import (
    BOS_ID,
    CorpusSpec,
    generate_documents,
    render,
    split_seeds,
    vocabulary,
)
from prune.testbed.spec import (  # noqa: F401  (re-exported: the build's callers name them from here)
    TestbedModelSpec,
    TestbedSpec,
    TestbedTrainingSpec,
    json_digest,
    model_config,
)

log = logging.getLogger(__name__)
BUILD_VERSION = 4  # bump when the build code changes what it produces


def _testbed_root(cache_dir: str | os.PathLike) -> Path:
    # Expand "~" here, once: `datasets` expands it on its own while pathlib does not, so an unexpanded
    # path would split one build between the home folder and a literal "./~" folder.
    return Path(cache_dir).expanduser() / "testbed"


def data_dir(spec: CorpusSpec, cache_dir: str | os.PathLike) -> Path:
    return _testbed_root(cache_dir) / f"data-{json_digest([BUILD_VERSION, asdict(spec)])}"


CONTROL_FIELDS = ("dedicated_layer", "dedicated_group", "wired")


def model_dir(spec: TestbedSpec, cache_dir: str | os.PathLike) -> Path:
    identity = asdict(spec)
    if spec.training.dedicated_layer is None:  # the control's settings shape nothing else: old caches stay valid
        for key in CONTROL_FIELDS:
            identity["training"].pop(key)
    elif spec.training.wired:  # the wired control's folder is named as before the graded one existed
        identity["training"].pop("wired")
    else:  # the graded control: its own version, so a change to its training does not touch the others
        from prune.testbed.graded import GRADED_VERSION

        identity["graded_version"] = GRADED_VERSION
    return _testbed_root(cache_dir) / f"model-{json_digest([BUILD_VERSION, identity])}"


def _locked_build(target: Path, build) -> Path:
    """Run ``build(tmp_dir)`` once under a lock and move the result to ``target`` atomically."""
    from filelock import FileLock

    if (target / "DONE").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "DONE").exists():
            return target
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        try:
            build(tmp)
            (tmp / "DONE").write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
        except BaseException:  # leave nothing half-built behind, also on Ctrl-C
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if target.exists():  # a previous build died half-way
            shutil.rmtree(target)
        tmp.rename(target)
    return target


# --------------------------------------------------------------------------------------------- data
def make_tokenizer(spec: CorpusSpec):
    """A word-level Hugging Face tokenizer: one token per whitespace-separated word, BOS prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(vocabulary(spec))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=1_000_000,
    )


def ensure_data(spec: CorpusSpec, cache_dir: str | os.PathLike) -> Path:
    """The corpus as a DatasetDict (``train`` / ``test``, one document per row), built once."""

    def build(tmp: Path):
        from datasets import Dataset, DatasetDict

        vocab = vocabulary(spec)
        seeds = split_seeds(spec)
        splits = {}
        for split, n_docs in (("train", spec.train_docs), ("test", spec.test_docs)):
            docs = generate_documents(spec, n_docs, seeds[split])
            splits[split] = Dataset.from_dict({"text": [render(d, vocab) for d in docs]})
        overlap = set(splits["train"]["text"]) & set(splits["test"]["text"])
        if overlap:  # cannot happen with distinct seeds, but calibration/eval leakage is worth a check
            raise RuntimeError(f"testbed train and test splits share {len(overlap)} documents")
        DatasetDict(splits).save_to_disk(str(tmp / "dataset"))
        make_tokenizer(spec).save_pretrained(str(tmp / "tokenizer"))
        (tmp / "corpus.json").write_text(json.dumps(asdict(spec), indent=2))

    return _locked_build(data_dir(spec, cache_dir), build)


def load_split_texts(spec: CorpusSpec, cache_dir, split: str) -> list[str]:
    from datasets import load_from_disk

    return load_from_disk(str(ensure_data(spec, cache_dir) / "dataset"))[split]["text"]


def token_stream(spec: CorpusSpec, cache_dir, split: str) -> torch.Tensor:
    """The split as one id stream, every document opened by ``<s>`` (the layout the data pipeline makes)."""
    tok = make_tokenizer(spec)
    ids: list[int] = []
    for text in load_split_texts(spec, cache_dir, split):
        ids += tok(text)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def ensure_model(spec: TestbedSpec, cache_dir: str | os.PathLike, progress: bool = True, use_shipped: bool = True) -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer) of the trained testbed model, built once: the
    weights shipped with the package where they are this spec's (``prune.testbed.shipped``), else trained."""
    data = ensure_data(spec.corpus, cache_dir)

    def build(tmp: Path):
        from transformers import AutoTokenizer

        from prune.testbed.shipped import install

        if use_shipped and install(model_dir(spec, cache_dir).name, tmp):
            AutoTokenizer.from_pretrained(str(data / "tokenizer")).save_pretrained(str(tmp))
            return
        log.info("Training the testbed model once (cached in %s)", model_dir(spec, cache_dir))
        from prune.testbed.train import recall_accuracy, train_model

        model, history = train_model(spec, token_stream(spec.corpus, cache_dir, "train"), progress=progress)
        test = token_stream(spec.corpus, cache_dir, "test")
        n = (len(test) // spec.training.long_window) * spec.training.long_window
        windows = test[:n].view(-1, spec.training.long_window)[:8]
        acc, count = recall_accuracy(model, windows, spec.corpus, min_gap=128)
        history["test_long_range_accuracy"] = {"window": spec.training.long_window, "accuracy": acc, "targets": count}
        log.info("Testbed trained in %ss; long-range recall on held-out text: %.3f", history["seconds"], acc)
        model.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(str(data / "tokenizer")).save_pretrained(str(tmp))
        (tmp / "testbed.json").write_text(json.dumps({"spec": asdict(spec), "training": history}, indent=2))

    return _locked_build(model_dir(spec, cache_dir), build)
