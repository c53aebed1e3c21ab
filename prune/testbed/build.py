"""Build (once) and cache the testbed: its corpus as a `datasets` dataset and a tiny LLaMA trained on it.

Both live under ``<cache_dir>/testbed/`` in folders named by a hash of every setting that shapes them, so
changing a setting builds a new testbed and never reuses a stale one. A file lock makes parallel sweep
jobs wait for one build instead of racing.

Training (``prune.testbed.train``) is a three-phase curriculum (measured: plain training stays at chance on
long-range recall for minutes on 2 CPU cores; it reaches ~0.95 in about 2.5 minutes).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from prune.testbed.corpus import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    CorpusSpec,
    generate_documents,
    render,
    split_seeds,
    vocabulary,
)

log = logging.getLogger(__name__)
BUILD_VERSION = 4  # bump when the build code changes what it produces


@dataclass(frozen=True)
class TestbedModelSpec:
    hidden_size: int = 128
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 2048
    rope_theta: float = 500000.0
    init_std: float = 0.08


@dataclass(frozen=True)
class TestbedTrainingSpec:
    lr: float = 3e-3
    warmup_window: int = 128
    warmup_batch: int = 16
    warmup_min_gap: int = 16
    warmup_max_gap: int = 96
    warmup_max_steps: int = 500
    warmup_target_accuracy: float = 0.9
    dense_docs: int = 600
    doc_window: int = 512
    doc_batch: int = 4
    doc_steps: int = 180
    dense_rows: int = 1
    long_window: int = 1024
    long_batch: int = 4
    long_steps: int = 80
    seed: int = 0
    # positive control (prune/testbed/control.py): long-range recall through this one KV group only
    dedicated_layer: int | None = None
    dedicated_group: int = 0
    # true: the group is the only path by wiring (zeros held); false: by staged training (prune.testbed.graded)
    wired: bool = True


@dataclass(frozen=True)
class TestbedSpec:
    __test__ = False  # not a pytest test class

    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    model: TestbedModelSpec = field(default_factory=TestbedModelSpec)
    training: TestbedTrainingSpec = field(default_factory=TestbedTrainingSpec)

    @classmethod
    def from_dict(cls, cfg) -> "TestbedSpec":
        """Build from a (possibly partial) mapping such as the Hydra node ``testbed`` (typed by its schema)."""
        cfg = cfg or {}
        return cls(**{f.name: f.default_factory(**(cfg.get(f.name) or {})) for f in fields(cls)})  # type: ignore[misc]


def json_digest(obj) -> str:
    """A short SHA-256 of a JSON-able value (sorted keys): the name of a cache folder built from it."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


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


# -------------------------------------------------------------------------------------------- model
def model_config(spec: TestbedSpec):
    from transformers import LlamaConfig

    m = spec.model
    return LlamaConfig(
        vocab_size=spec.corpus.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads,
        max_position_embeddings=m.max_positions,
        rope_theta=m.rope_theta,
        initializer_range=m.init_std,
        # the wired control reads out apart from its input; the graded one is an ordinary (tied) LLaMA
        tie_word_embeddings=spec.training.dedicated_layer is None or not spec.training.wired,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


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
