"""What recovery fine-tuning trains on, and for how long: its token stream, its seed and its step count.

``recovery_plan`` runs in the job's data phase (before the model loads) and refuses, in one line, a plan
that cannot work: files that cannot be read, a stream too short for one window, a warm-up as long as the
run, or recovery text that shares a passage with the evaluation split (``shared_passages``: every
``PASSAGE``-token chunk of the evaluation stream, at its own stride, is looked up among all chunks of the
recovery stream, so any common run of at least ``2 x PASSAGE - 1`` tokens is found).

The plan says how many tokens recovery sees (``tokens_seen`` = steps x batch x accumulation x window) and
how many distinct ones it draws from (``stream_tokens``); both go to ``metrics.json`` and the report.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from prune.errors import RecoveryError  # a PruneLabError: one line, exit status 2

PASSAGE = 64  # tokens: a shorter common run (a header, a stock phrase) is not a leak of evaluation text


@dataclass
class RecoveryPlan:
    source: str  # "calibration train split" or "files: a.txt, b.txt"
    seed: int
    steps: int
    stream_tokens: int
    tokens_seen: int
    epochs_seen: float
    stream: torch.Tensor | None = None

    def info(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "stream"}


def recovery_seed(rcfg, job_seed: int) -> int:
    """``recovery.seed``, or the job's seed when it is null (the default): seeds are repeats of recovery too."""
    seed = rcfg.get("seed")
    return int(job_seed) if seed is None else int(seed)


def tokens_per_step(rcfg) -> int:
    return int(rcfg.batch_size) * int(rcfg.get("grad_accum", 1) or 1) * int(rcfg.seq_len)


def plan_steps(rcfg, stream_tokens: int) -> int:
    """Optimizer steps: ``recovery.steps``, or ``ceil(epochs x stream tokens / tokens per step)``; refuses both or neither."""
    steps, epochs = rcfg.get("steps"), rcfg.get("epochs")
    if (steps is None) == (epochs is None):
        raise RecoveryError(f"recovery.steps={steps} and recovery.epochs={epochs}: set exactly one (the other null)")
    if steps is None:
        steps = max(1, math.ceil(float(epochs) * stream_tokens / tokens_per_step(rcfg)))
    warmup = int(rcfg.get("warmup_steps", 0))
    if warmup >= steps:
        raise RecoveryError(f"recovery.warmup_steps={warmup} must be below the {steps} steps of this run")
    return int(steps)


def _hashes(stream: np.ndarray, n: int, stride: int) -> np.ndarray:
    """A 64-bit polynomial hash of every ``n``-token chunk starting at a multiple of ``stride``."""
    stream = stream.astype(np.uint64)
    count = (len(stream) - n) // stride + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    starts = np.arange(count) * stride
    h = np.zeros(count, dtype=np.uint64)
    base = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * base + stream[starts + k] + np.uint64(1)
    return h


def shared_passages(recovery: torch.Tensor, evaluation: torch.Tensor, n: int = PASSAGE) -> int:
    """How many ``n``-token chunks of the evaluation stream (at stride ``n``) occur anywhere in the recovery stream."""
    rec, ev = np.asarray(recovery), np.asarray(evaluation)
    if len(rec) < n or len(ev) < n:
        return 0
    found = np.isin(_hashes(ev, n, n), _hashes(rec, n, 1))
    if not found.any():
        return 0
    ev_chunks = {tuple(ev[i * n:(i + 1) * n].tolist()) for i in np.flatnonzero(found)}  # confirm: no hash collision
    rec_chunks = {tuple(rec[i:i + n].tolist()) for i in range(len(rec) - n + 1)} if len(ev_chunks) else set()
    return len(ev_chunks & rec_chunks)


def _file_stream(files, tokenizer) -> torch.Tensor:
    from prune.data import tokenize_documents
    from prune.data.sources import check_text_file

    texts = []
    for f in files:
        check_text_file(f, "recovery.data_files")
        texts.append(Path(os.path.expanduser(str(f))).read_text(encoding="utf-8"))
    return tokenize_documents(texts, tokenizer, join="\n\n", bos_per_document=False)


def recovery_plan(rcfg, job_seed: int, train_stream: torch.Tensor, test_stream: torch.Tensor, tokenizer=None) -> RecoveryPlan:
    """The stream, seed and steps of recovery; refuses text shared with the evaluation split."""
    files = list(rcfg.get("data_files") or [])
    if files:
        stream, source = _file_stream(files, tokenizer), "files: " + ", ".join(Path(str(f)).name for f in files)
    else:
        stream, source = train_stream, "calibration train split"
    if stream is None or len(stream) <= int(rcfg.seq_len):
        size = 0 if stream is None else len(stream)
        raise RecoveryError(f"the recovery text ({source}) has {size:,} tokens, too few for recovery.seq_len={rcfg.seq_len}")
    shared = shared_passages(stream, test_stream)
    if shared:
        raise RecoveryError(f"the recovery text ({source}) repeats {shared} passage(s) of {PASSAGE} tokens of the "
                            "evaluation split: recovery must not train on evaluation text")
    steps = plan_steps(rcfg, len(stream))
    seen = steps * tokens_per_step(rcfg)
    return RecoveryPlan(source, recovery_seed(rcfg, job_seed), steps, len(stream), seen, seen / len(stream), stream)
