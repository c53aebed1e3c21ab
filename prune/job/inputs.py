"""A job's inputs: tokenized text, calibration windows and downstream tasks, refused before any model work
when they cannot serve the run; and the memory estimate announced before the model loads."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from prune.data import calibration_windows, tokenize_documents
from prune.errors import DataError
from prune.eval.perplexity import effective_lengths
from prune.importance.base import micro_batch_size
from prune.models import max_positions, resolve_device, resolve_dtype
from prune.structure import shape_from_config

log = logging.getLogger("prune.job")


@dataclass
class EvalData:
    """Tokenized text of one job: calibration windows per role, the test stream and its eval lengths."""

    tokenizer: object
    windows: dict[str, torch.Tensor]
    test_stream: torch.Tensor
    lengths: list[int]
    max_tokens: int | None
    train_stream: torch.Tensor | None = None  # the calibration split, for recovery fine-tuning


def _tokenize_split(source, split: str, tokenizer, seed: int) -> torch.Tensor:
    return tokenize_documents(
        source.texts(split, seed=seed), tokenizer, join=source.join, bos_per_document=source.bos_per_document
    )


def load_data(cfg, model_source, data_source, model_config, lengths, methods, metrics) -> EvalData:
    """Tokenize both splits, draw the calibration windows, and refuse text too short for the run."""
    tokenizer = model_source.tokenizer()
    train_stream = _tokenize_split(data_source, "train", tokenizer, cfg.seed)
    test_stream = _tokenize_split(data_source, "test", tokenizer, cfg.seed)
    from prune.model_files import check_vocabulary

    highest = max((int(s.max()) for s in (train_stream, test_stream) if len(s)), default=0)
    check_vocabulary(highest, model_config, cfg.model.get("tokenizer_path") or model_source.describe())
    roles = {m.uses for m in methods if m is not None and m.uses}
    windows = {
        role: calibration_windows(
            train_stream, lengths[role][0], lengths[role][1], cfg.seed, cfg.calibration_block,
            what=f"calibration text ({data_source.describe()}, train split)",
        )
        for role in roles
    }
    eval_lengths = effective_lengths(cfg.eval.lengths, max_positions(model_config))
    eval_max_tokens = _min_or_none(cfg.eval.max_tokens, getattr(data_source, "eval_max_tokens", None))
    available = len(test_stream) if eval_max_tokens is None else min(len(test_stream), eval_max_tokens)
    for length in eval_lengths:  # refuse now, not after the importance pass
        if available < length:
            raise DataError(f"evaluation text has {available:,} usable tokens, less than one window of eval length {length}")
    if cfg.eval.importance_accuracy:
        length, budget = max(ground_truth_lengths(cfg, eval_lengths)), cfg.eval.ground_truth.max_tokens
        if (len(test_stream) if budget is None else min(budget, len(test_stream))) < length:
            raise DataError(
                f"eval.ground_truth.max_tokens={budget} leaves less than one window of its length {length} "
                f"(text has {len(test_stream):,} tokens); raise it or shorten eval.ground_truth.lengths"
            )
    metrics["data"] = {
        "source": data_source.describe(),
        "train_tokens": len(train_stream),
        "test_tokens": len(test_stream),
        "calibration_windows": {role: list(w.shape) for role, w in windows.items()},
        "eval_lengths": eval_lengths,
    }
    return EvalData(tokenizer, windows, test_stream, eval_lengths, eval_max_tokens, train_stream)


def ground_truth_lengths(cfg: DictConfig, eval_lengths: list[int]) -> list[int]:
    """The ground truth's window lengths: ``eval.ground_truth.lengths``, each capped at the longest eval length."""
    cap = max(eval_lengths)
    return sorted({min(int(length), cap) for length in cfg.eval.ground_truth.lengths})


def announce_memory(cfg: DictConfig, model_config, lengths: dict, importance, metrics: dict) -> None:
    from prune.memory import describe_all, estimate_all
    from prune.profiling import rss_bytes

    device = resolve_device(cfg.model.get("device", "auto"))
    dtype = resolve_dtype(cfg.model.get("dtype", "auto"), device)
    seq = max(length for length, _ in lengths.values())
    micro = micro_batch_size(cfg.batch_size, seq, cfg.model.get("max_pass_tokens"),
                             getattr(importance, "micro_batch_size", None)) or cfg.batch_size
    chosen = getattr(importance, "mean_grad", "fp32")
    process = rss_bytes() if device.type == "cpu" else 0  # on the CPU the peak measured is the process's RSS
    estimates = estimate_all(model_config, shape_from_config(model_config), seq, micro, dtype,
                             bool(getattr(importance, "gradient_checkpointing", False)), micro < cfg.batch_size,
                             process_bytes=process)
    metrics["memory_estimate_gib"] = {k: v / 2**30 for k, v in estimates[chosen].items()}
    metrics["memory_estimate_by_mean_grad_gib"] = {kind: parts["total"] / 2**30 for kind, parts in estimates.items()}
    log.info("%s", describe_all(estimates, chosen))


def downstream_tasks(cfg: DictConfig, model_source, data_source=None, model_config=None) -> tuple[list[str], list[str]]:
    """Tasks to evaluate and extra task folders; refused (one line) before any model work."""
    tasks = [str(t) for t in (cfg.eval.get("tasks") or [])]
    if not tasks:
        return [], []
    from prune.eval.downstream import check_task_settings, check_tasks

    items = dict(cfg.eval.get("tasks_items") or {})
    check_task_settings(cfg.eval.tasks_batch_size, cfg.eval.tasks_limit, items)
    from prune.eval.probe import check_probe, probe_task_dir, wanted

    if wanted(tasks):  # its settings first: before the testbed's tasks are generated
        check_probe(cfg.eval.probe)
    task_dirs = [os.path.expanduser(str(cfg.eval.task_dir))] if cfg.eval.get("task_dir") else []
    from prune.eval.downstream.benchmarks import ensure_benchmark_dir

    benchmarks = ensure_benchmark_dir(tasks, cfg.eval.get("task_data"), os.path.expanduser(cfg.cache_dir))
    if benchmarks is not None:  # the local benchmarks (eval.task_data): checked line by line, YAMLs in the cache
        task_dirs.append(str(benchmarks))
    if hasattr(model_source, "spec"):  # the testbed: its own multiple-choice tasks, generated from the test split
        from prune.testbed.tasks import ensure_task_dir

        task_dirs.append(str(ensure_task_dir(model_source.spec().corpus, os.path.expanduser(cfg.cache_dir))))
    if wanted(tasks):  # the long-context probe, generated from the evaluation split with the model's tokenizer
        task_dirs.append(str(probe_task_dir(cfg, model_source, data_source, model_config)))
    check_tasks(tasks, task_dirs or None, items)
    return tasks, task_dirs


def _min_or_none(*values):
    present = [v for v in values if v is not None]
    return min(present) if present else None
