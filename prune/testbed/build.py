"""Build (once) and cache the testbed: its corpus as a `datasets` dataset and a tiny LLaMA trained on it.

Both live under ``<cache_dir>/testbed/`` in folders named by a hash of every setting that shapes them, so
changing a setting builds a new testbed and never reuses a stale one. A file lock makes parallel sweep
jobs wait for one build instead of racing.

Training is a three-phase curriculum (measured: plain training stays at chance on long-range recall for
minutes on 2 CPU cores; this reaches ~0.95 in about 2.5 minutes):

1. *warm-up*: 128-token windows of dense documents in which facts recur 16-96 tokens apart, until the
   copy mechanism works (in-window recall accuracy >= ``warmup_target_accuracy``) or ``warmup_max_steps``;
2. *documents*: 512-token windows of the real training split (facts 150-1500 apart), with
   ``dense_rows`` rows per batch still drawn from dense documents so the mechanism is not forgotten
   while the word grammar is learned;
3. *long*: 1024-token windows of the training split, learning rate decaying to 10 %.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from prune.testbed.corpus import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    CorpusSpec,
    dependency_distances,
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
    # positive control (prune/testbed/control.py): long-range recall in this one KV group only
    dedicated_layer: int | None = None
    dedicated_group: int = 0
    local_window: int = 512
    local_batch: int = 4
    local_steps: int = 600
    copy_lr: float = 1e-2
    copy_embeddings: bool = True
    silence_weight: float = 0.0


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


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _testbed_root(cache_dir: str | os.PathLike) -> Path:
    # Expand "~" here, once: `datasets` expands it on its own while pathlib does not, so an unexpanded
    # path would split one build between the home folder and a literal "./~" folder.
    return Path(cache_dir).expanduser() / "testbed"


def data_dir(spec: CorpusSpec, cache_dir: str | os.PathLike) -> Path:
    return _testbed_root(cache_dir) / f"data-{_digest([BUILD_VERSION, asdict(spec)])}"


CONTROL_FIELDS = ("dedicated_layer", "dedicated_group", "local_window", "local_batch", "local_steps", "copy_lr", "copy_embeddings", "silence_weight")


def model_dir(spec: TestbedSpec, cache_dir: str | os.PathLike) -> Path:
    identity = asdict(spec)
    if spec.training.dedicated_layer is None:  # the control's settings shape nothing else: old caches stay valid
        for key in CONTROL_FIELDS:
            identity["training"].pop(key)
    return _testbed_root(cache_dir) / f"model-{_digest([BUILD_VERSION, identity])}"


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
        tie_word_embeddings=True,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


def recall_accuracy(model, windows: torch.Tensor, spec: CorpusSpec, min_gap: int = 0) -> tuple[float, int]:
    """Accuracy of greedy predictions on value tokens whose source lies inside the window (gap > min_gap)."""
    with torch.no_grad():
        pred = model(input_ids=windows).logits.argmax(-1)
    hits = total = 0
    for row, p in zip(windows, pred):
        dist = dependency_distances(row.numpy(), spec)
        pos = np.flatnonzero((dist > min_gap) & (np.arange(len(row)) - dist >= 0))
        pos = pos[pos > 0]
        hits += int((p[pos - 1] == row[pos]).sum())
        total += len(pos)
    return hits / max(total, 1), total


def _random_windows(rng: np.random.Generator, stream: torch.Tensor, n: int, length: int) -> torch.Tensor:
    starts = rng.integers(0, len(stream) - length, n)
    return torch.stack([stream[s : s + length] for s in starts])


def train_model(spec: TestbedSpec, train_stream: torch.Tensor, progress: bool = True):
    """Train the testbed LLaMA from scratch on CPU; returns (model, training log)."""
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    t, c = spec.training, spec.corpus
    dense_spec = {"min_gap": t.warmup_min_gap, "max_gap": t.warmup_max_gap, "first_mention_within": 32}
    dense_docs = generate_documents(
        CorpusSpec(**{**asdict(c), "doc_tokens": max(t.doc_window, t.warmup_window)}), t.dense_docs, t.seed + 77,
        **dense_spec,
    )
    dense = torch.tensor([[BOS_ID] + d[:-1] for d in dense_docs])
    held_out_dense, dense = dense[:4], dense[4:]

    def new_model():
        return LlamaForCausalLM._from_config(model_config(spec), attn_implementation="sdpa")

    if t.dedicated_layer is not None:
        from prune.testbed.control import train_dedicated

        return train_dedicated(spec, train_stream, dense, held_out_dense, new_model, recall_accuracy, _random_windows, progress)
    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    model = new_model()
    model.train()

    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(0.9, 0.98), weight_decay=0.01)
    planned = t.warmup_max_steps + t.doc_steps + t.long_steps
    history: dict = {"phases": []}
    step = 0
    started = time.time()

    def lr_at(step: int, total: int) -> float:
        frac = step / max(total, 1)
        decay = 1.0 if frac < 0.6 else 0.1 + 0.45 * (1 + math.cos(math.pi * (frac - 0.6) / 0.4))
        return t.lr * min(1.0, (step + 1) / 30) * decay

    def train_step(batch: torch.Tensor, total: int) -> float:
        nonlocal step
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        return loss.item()

    bar = tqdm(total=planned, desc="training testbed", disable=not progress, leave=False)
    # Phase 1: warm-up on dense recall until the copy mechanism works.
    warm_acc, loss = 0.0, float("nan")
    for i in range(t.warmup_max_steps):
        total = planned if i < t.warmup_max_steps else step + t.doc_steps + t.long_steps
        starts = rng.integers(0, dense.shape[1] - t.warmup_window + 1, t.warmup_batch)
        rows = rng.integers(0, len(dense), t.warmup_batch)
        batch = torch.stack([dense[r, s : s + t.warmup_window] for r, s in zip(rows, starts)])
        loss = train_step(batch, total)
        bar.update(1)
        if (i + 1) % 25 == 0:
            model.eval()
            warm_acc, _ = recall_accuracy(model, held_out_dense[:, : t.warmup_window], c)
            model.train()
            bar.set_postfix(loss=f"{loss:.2f}", recall=f"{warm_acc:.2f}")
            if warm_acc >= t.warmup_target_accuracy:
                break
    history["phases"].append({"name": "warmup", "steps": step, "recall_accuracy": warm_acc, "loss": loss})
    bar.total = planned = step + t.doc_steps + t.long_steps
    bar.refresh()

    # Phases 2 and 3: the real documents, first at 512 then at 1024 tokens.
    for name, window, batch_size, n_steps, n_dense in (
        ("documents", t.doc_window, t.doc_batch, t.doc_steps, t.dense_rows),
        ("long", t.long_window, t.long_batch, t.long_steps, 0),
    ):
        for _ in range(n_steps):
            batch = _random_windows(rng, train_stream, batch_size, window)
            if n_dense:
                rows = rng.integers(0, len(dense), n_dense)
                batch[:n_dense] = dense[rows, :window]
            loss = train_step(batch, planned)
            bar.update(1)
            bar.set_postfix(phase=name, loss=f"{loss:.2f}")
        history["phases"].append({"name": name, "steps": n_steps, "loss": loss})
    bar.close()
    model.eval()
    history["seconds"] = round(time.time() - started, 1)
    history["steps"] = step
    return model, history


def ensure_model(spec: TestbedSpec, cache_dir: str | os.PathLike, progress: bool = True) -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer) of the trained testbed model, built once."""
    data = ensure_data(spec.corpus, cache_dir)

    def build(tmp: Path):
        log.info("Training the testbed model once (cached in %s)", model_dir(spec, cache_dir))
        model, history = train_model(spec, token_stream(spec.corpus, cache_dir, "train"), progress=progress)
        test = token_stream(spec.corpus, cache_dir, "test")
        n = (len(test) // spec.training.long_window) * spec.training.long_window
        windows = test[:n].view(-1, spec.training.long_window)[:8]
        acc, count = recall_accuracy(model, windows, spec.corpus, min_gap=128)
        history["test_long_range_accuracy"] = {"window": spec.training.long_window, "accuracy": acc, "targets": count}
        log.info("Testbed trained in %ss; long-range recall on held-out text: %.3f", history["seconds"], acc)
        model.save_pretrained(str(tmp))
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(data / "tokenizer")).save_pretrained(str(tmp))
        (tmp / "testbed.json").write_text(json.dumps({"spec": asdict(spec), "training": history}, indent=2))

    return _locked_build(model_dir(spec, cache_dir), build)
