"""One job: calibrate -> score -> prune -> evaluate -> save -> log.

``run_job`` is the whole pipeline for one resolved config; ``prune.run`` wraps it as the Hydra entry
point. Every check that can fail cheaply runs before the model is loaded.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prune.cache import cached, fingerprint, tensor_digest
from prune.data import calibration_windows, tokenize_documents
from prune.errors import ConfigError, DataError, PruneLabError, PruningError, UnsupportedModelError, first_line
from prune.evaluate import effective_lengths, evaluate_lengths
from prune.importance import Calibration, ImportanceResult
from prune.models import max_positions, resolve_device, resolve_dtype
from prune.profiling import PhaseRecorder
from prune.preflight import build_parts, check_writable, preflight
from prune.pruning import apply_plan, ratio_deviation
from prune.structure import ATTENTION, MLP, model_shape, shape_from_config

log = logging.getLogger(__name__)
# Refusals: exit status 2 and one line. Anything else is a bug (exit 1, traceback in run.log / metrics.json).
USER_ERRORS = (PruneLabError,)
ROLES = ("taylor", "layer", "block")
__all__ = ["ConfigError", "DataError", "PruningError", "USER_ERRORS", "UnsupportedModelError", "run_job"]


def config_digest(cfg: DictConfig) -> str:
    """Hash of every setting that can change a job's result (not ``force``, ``progress``, logging).

    ``device`` / ``dtype`` ``auto`` enter as what they resolve to here, so a sweep resumed on a GPU does not
    take the jobs finished on a CPU (fp32) as its own (bf16).
    """
    import hashlib

    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ("force", "progress", "logger", "threads"):
        data.pop(key, None)
    model = data.get("model")
    if isinstance(model, dict):
        model.pop("progress", None)
        device = resolve_device(model.get("device", "auto"))
        model["device"] = str(device)
        model["dtype"] = str(resolve_dtype(model.get("dtype", "auto"), device))
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_name(cfg: DictConfig) -> str:
    """Short, sortable name from the swept settings, e.g. ``taylor_2nd-L512-bs4-s0``."""
    name = f"{cfg.importance.name}-L{cfg.seq_len}-bs{cfg.batch_size}-s{cfg.seed}"
    if cfg.get("token_budget"):
        name += f"-tok{cfg.token_budget}"
    elif cfg.num_samples != 32:
        name += f"-n{cfg.num_samples}"
    if cfg.pruning.get("ratio") is not None and cfg.pruning.ratio != 0.3:
        name += f"-r{cfg.pruning.ratio}"
    return name


def samples_for(cfg: DictConfig, length: int) -> int:
    """Calibration sequences at ``length``: ``num_samples``, or ``token_budget // length`` when a budget is set."""
    budget = cfg.get("token_budget")
    return int(budget) // length if budget else int(cfg.num_samples)


def layer_method_for(strategy, importance):
    """The method that gives a strategy its layer scores (None if not needed or the importance gives them)."""
    if not getattr(strategy, "needs_layers", False) or importance.provides == "layers":
        return None
    name = getattr(strategy, "layer_importance", None)
    if name is None:
        raise ConfigError(
            f"pruning={strategy.name} needs layer or block scores: use importance=layer|block|angular|block_influence"
        )
    from prune.importance import build

    return build(name)


def check_compatibility(strategy, importance, layer_method, shape) -> None:
    if strategy.needs_groups and importance.provides != "groups":
        raise ConfigError(
            f"importance={importance.name} scores layers/blocks, but pruning={strategy.name} prunes groups: "
            "use pruning=depth, or a group criterion (taylor_1st, taylor_2nd, magnitude, random, wanda, removal)"
        )
    if layer_method is not None and layer_method.provides != "layers":
        raise ConfigError(f"pruning.layer_importance={layer_method.name} does not score layers")
    strategy.check(shape)


def validate(cfg: DictConfig, model_config, importance) -> dict[str, tuple[int, int]]:
    """Cheap checks of the settings against the model; returns (length, num_samples) per calibration role."""
    limit = max_positions(model_config)
    budget = cfg.get("token_budget")
    lengths = {}
    for role in ROLES:
        length = cfg.lengths[role]
        if limit and length > limit:
            raise ConfigError(
                f"lengths.{role}={length} (seq_len={cfg.seq_len}) exceeds the model's max_position_embeddings "
                f"({limit}); choose seq_len <= {limit}"
            )
        n = samples_for(cfg, length)
        what = f"token_budget={budget} // lengths.{role}={length} = {n}" if budget else f"num_samples={n}"
        if n < cfg.batch_size or n % cfg.batch_size:
            raise ConfigError(f"{what} must be a positive multiple of batch_size={cfg.batch_size}")
        lengths[role] = (length, n)
    fisher = getattr(importance, "fisher", None)
    if getattr(importance, "order", 1) == 2 and fisher in ("sample", "token") and cfg.batch_size > 1:
        n = lengths["taylor"][1]
        if n // cfg.batch_size < 2:
            raise ConfigError(
                f"fisher={fisher} needs at least two batches (num_samples={n}, "
                f"batch_size={cfg.batch_size}); raise num_samples or use importance.fisher=exact"
            )
    return lengths


def per_layer_rows(grad_stats: dict | None, kept: list[dict], layer_scores: dict | None = None) -> list[dict]:
    """One row per layer: |grad| statistics (whole pass and spread over batches), kept fractions, layer scores."""
    rows = []
    for i, k in enumerate(kept):
        row = {"layer": i, "attention_kept_fraction": k["attention_kept_fraction"], "mlp_kept_fraction": k["mlp_kept_fraction"]}
        for key, values in (layer_scores or {}).items():
            if isinstance(values, list) and i < len(values):
                row[f"{key}_importance"] = values[i]
        if grad_stats:
            g = grad_stats["pass"][i]
            for part in ("attention", "mlp", "all"):
                row[f"{part}_grad_abs_mean"] = g[part]["abs_mean"]
                row[f"{part}_grad_abs_std"] = g[part]["abs_std"]
            batch_means = [b[i]["all"]["abs_mean"] for b in grad_stats["batches"]]
            mean = sum(batch_means) / len(batch_means)
            var = sum((m - mean) ** 2 for m in batch_means) / max(len(batch_means) - 1, 1)
            row["grad_abs_mean_over_batches"] = mean
            row["grad_abs_mean_batch_cv"] = math.sqrt(var) / mean if mean else 0.0
            row["grad_abs_mean"] = row["all_grad_abs_mean"]
            row["grad_abs_std"] = row["all_grad_abs_std"]
        rows.append(row)
    return rows


def _tokenize_split(source, split: str, tokenizer, seed: int) -> torch.Tensor:
    return tokenize_documents(
        source.texts(split, seed=seed), tokenizer, join=source.join, bos_per_document=source.bos_per_document
    )


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    tmp.replace(path)


def run_job(cfg: DictConfig, out_dir: str | Path, group: str | None = None) -> dict:
    """Run one job; always writes ``metrics.json``: ``status`` ``ok``, or ``refused`` (a ``PruneLabError``,
    before any work where the check needs no model), ``interrupted`` (Ctrl-C) or ``failed`` (a bug: with
    the traceback), and ``error``. Refusals come before the W&B run starts."""
    out = Path(out_dir)
    check_writable(out, "the output folder", "hydra.run.dir=<folder> / hydra.sweep.dir=<folder> or PRUNE_LAB_OUTPUTS")
    started = time.time()
    metrics: dict = {"status": "running", "output_dir": str(out)}
    # Replace whatever an earlier run left here at once: a job killed from now on reads as unfinished.
    _write_json(out / "metrics.json", metrics)
    tracker, recorder, ok = None, None, False
    try:
        with contextlib.suppress(Exception):  # best effort: a refused job still says what it was in the report
            metrics["run"] = _run_info(cfg)
        preflight(cfg, out)  # types first: nothing below may trip over a malformed value
        metrics.update(run=_run_info(cfg), config_digest=config_digest(cfg))
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        recorder = PhaseRecorder(resolve_device(cfg.model.get("device", "auto")))
        prepared = _prepare(cfg, metrics, recorder)
        tracker = instantiate(cfg.logger)
        tracker.start(OmegaConf.to_container(cfg, resolve=True), run_name(cfg), group, "prune", str(out))
        _pipeline(cfg, out, metrics, recorder, tracker, prepared)
        ok = True
        metrics["status"] = "ok"
    except BaseException as exc:
        metrics.update(failure_record(exc))
        raise
    finally:
        metrics["timings"] = {**(recorder.timings if recorder else {}), "total": time.time() - started}
        metrics["peak_memory_mb"] = dict(recorder.peak_memory_mb) if recorder else {}
        metrics["memory_kind"] = recorder.memory_kind if recorder else None
        _write_json(out / "metrics.json", metrics)
        if tracker is not None:
            try:
                tracker.summary({"status": metrics["status"], **{f"time/{k}": v for k, v in metrics["timings"].items()},
                                 **{f"peak_memory_mb/{k}": v for k, v in metrics["peak_memory_mb"].items()}})
            finally:
                tracker.finish(ok)
    return metrics


def failure_record(exc: BaseException) -> dict:
    """``status`` / ``error`` (/ ``traceback``) of a job that did not finish."""
    error = f"{type(exc).__name__}: {first_line(exc)}"
    if isinstance(exc, PruneLabError):
        return {"status": "refused", "error": error}
    if isinstance(exc, KeyboardInterrupt):
        return {"status": "interrupted", "error": "interrupted (KeyboardInterrupt)"}
    return {"status": "failed", "error": error, "traceback": traceback.format_exc()}


def _run_info(cfg: DictConfig) -> dict:
    return {
        "name": run_name(cfg),
        "importance": cfg.importance.name,
        "seq_len": cfg.seq_len,
        "lengths": dict(cfg.lengths),
        "batch_size": cfg.batch_size,
        "num_samples": samples_for(cfg, cfg.lengths.taylor),
        "token_budget": cfg.get("token_budget"),
        "calibration_block": cfg.get("calibration_block"),
        "seed": cfg.seed,
        "pruning": cfg.pruning.name,
        "ratio": cfg.pruning.get("ratio"),
        "model": cfg.model.name,
        "data": cfg.data.name,
    }


@dataclass
class EvalData:
    """Tokenized text of one job: calibration windows per role, the test stream and its eval lengths."""

    tokenizer: object
    windows: dict[str, torch.Tensor]
    test_stream: torch.Tensor
    lengths: list[int]
    max_tokens: int | None
    train_stream: torch.Tensor | None = None  # the calibration split, for recovery fine-tuning


@dataclass
class Prepared:
    """What the cheap checks and the data phase hand to the pipeline."""

    model_source: object
    importance: object
    strategy: object
    layer_method: object
    lengths: dict
    tasks: list[str]
    task_dirs: list[str]
    data: EvalData


def _prepare(cfg: DictConfig, metrics: dict, recorder: PhaseRecorder) -> Prepared:
    """Checks against the model's config, then data: everything refusable is refused before the model loads."""
    model_source, data_source, importance, strategy = build_parts(cfg)
    model_config = model_source.config()
    lengths = validate(cfg, model_config, importance)
    layer_method = layer_method_for(strategy, importance)
    try:
        check_compatibility(strategy, importance, layer_method, shape_from_config(model_config))
    except PruningError as exc:
        raise ConfigError(str(exc)) from exc
    impl = cfg.model.get("attn_implementation") or "sdpa"
    for method in (importance, layer_method):
        if getattr(method, "prefix_cache", False) and impl not in ("sdpa", "flash_attention_2", "flash_attention_3"):
            raise ConfigError(f"importance={method.name} with prefix_cache needs sdpa attention, not "
                              f"model.attn_implementation={impl}; set importance.prefix_cache=false")
    tasks, task_dirs = _downstream_tasks(cfg, model_source, data_source, model_config)
    if not cfg.progress:  # datasets draws its own bars ("Generating train split") unless told not to
        with contextlib.suppress(ImportError):
            import datasets

            datasets.disable_progress_bars()
    from prune.recovery import check_recovery

    check_recovery(cfg.get("recovery"), max_positions(model_config))
    with recorder.phase("data"):
        data = _load_data(cfg, model_source, data_source, model_config, lengths, (importance, layer_method), metrics)
    _announce_memory(cfg, model_config, lengths, importance, metrics)  # after the last refusal: one line
    return Prepared(model_source, importance, strategy, layer_method, lengths, tasks, task_dirs, data)


def _pipeline(cfg: DictConfig, out: Path, metrics: dict, recorder: PhaseRecorder, tracker, prepared: Prepared) -> None:
    progress = bool(cfg.progress)
    p = prepared
    model_source, importance, strategy, layer_method = p.model_source, p.importance, p.strategy, p.layer_method
    lengths, tasks, task_dirs, data = p.lengths, p.tasks, p.task_dirs, p.data

    # The dense model: load, evaluate (cached across jobs), downstream tasks.
    with recorder.phase("load_model"):
        model = model_source.load()
    shape = model_shape(model)
    total_before = sum(p.numel() for p in model.parameters())
    model_id = fingerprint(model) if (cfg.eval.cache_before or cfg.eval.importance_accuracy or tasks) else None
    stream_id = tensor_digest(data.test_stream) if model_id else None

    def evaluate(tag: str) -> dict:
        return evaluate_lengths(model, data.test_stream, data.lengths, cfg.eval.batch_size, data.max_tokens, progress, tag)

    def downstream(tag: str) -> dict:
        from prune.downstream import evaluate_tasks

        e = cfg.eval
        return evaluate_tasks(model, data.tokenizer, tasks, e.tasks_batch_size, e.tasks_limit, None, task_dirs or None, e.tasks_fewshot)

    with recorder.phase("eval_before"):
        if cfg.eval.cache_before:
            key = {"model": model_id, "tokens": stream_id, "lengths": data.lengths, "max_tokens": data.max_tokens}
            before, metrics["eval_before_cached"] = cached(cfg.cache_dir, "eval_before", key, lambda: evaluate("before"))
        else:
            before = evaluate("before")
    metrics["ppl_before"] = {str(k): v["ppl"] for k, v in before.items()}
    tasks_before = None
    if tasks and cfg.eval.tasks_before:
        with recorder.phase("tasks_before"):
            if cfg.eval.cache_before:
                key = {"model": model_id, "tokenizer": cfg.model.get("tokenizer_path"), "tasks": tasks,
                       "limit": cfg.eval.tasks_limit, "fewshot": cfg.eval.tasks_fewshot,
                       "batch_size": cfg.eval.tasks_batch_size, "task_dirs": task_dirs}
                tasks_before, _ = cached(cfg.cache_dir, "tasks_before", key, lambda: downstream("before"))
            else:
                tasks_before = downstream("before")

    # Importance (group scores and/or layer scores), and how accurate it is.
    calibration = Calibration(data.windows, cfg.batch_size, seed=cfg.seed, progress=progress)
    with recorder.phase("importance"):
        result: ImportanceResult = importance.score(model, calibration)
    if layer_method is not None:
        with recorder.phase("layer_importance"):
            result.layer_scores = layer_method.score(model, calibration).layer_scores
    if result.layer_scores:
        criterion = importance if importance.provides == "layers" else layer_method
        metrics["layer_scores"] = {"criterion": criterion.name, "length": lengths[criterion.uses][0], **result.layer_scores}
    if cfg.eval.importance_accuracy and result.scores is not None:
        with recorder.phase("ground_truth"):
            metrics["importance_accuracy"] = _importance_accuracy(
                cfg, model, data.test_stream, data.lengths, result, model_id, stream_id, progress
            )

    # Prune, evaluate again, save.
    with recorder.phase("pruning"):
        plan = strategy.plan(result.scores, shape, result.layer_scores)
        apply_plan(model, plan)
    with recorder.phase("eval_after"):
        after = evaluate("after")
    metrics["ppl_after"] = {str(k): v["ppl"] for k, v in after.items()}
    if tasks:
        with recorder.phase("tasks_after"):
            metrics["downstream"] = {"before": tasks_before, "after": downstream("after")}
    from prune.recovery import enabled as recovery_enabled, recovery_phase

    if recovery_enabled(cfg.get("recovery")):  # fine-tune, evaluate again; the merged model is what is saved
        model = recovery_phase(cfg, model, data.train_stream, evaluate, downstream if tasks else None, recorder, tracker, out, metrics)
    if cfg.save_model:
        from prune.checkpoint import save_pruned

        with recorder.phase("save"):
            metrics["pruned_model_dir"] = str(save_pruned(model, data.tokenizer, out / "pruned_model"))
    else:
        metrics["pruned_model_dir"] = None

    # Record: metrics, plan, scores, plots, W&B.
    _record(cfg, out, metrics, tracker, model, shape, total_before, before, after, result, plan)
    note = ratio_deviation(strategy.ratio, metrics["prunable_ratio_removed"], shape, f"pruning={strategy.name}")
    if note:
        metrics["ratio_note"] = note
        log.warning("%s", note)


def _load_data(cfg, model_source, data_source, model_config, lengths, methods, metrics) -> EvalData:
    """Tokenize both splits, draw the calibration windows, and refuse text too short for the run."""
    tokenizer = model_source.tokenizer()
    train_stream = _tokenize_split(data_source, "train", tokenizer, cfg.seed)
    test_stream = _tokenize_split(data_source, "test", tokenizer, cfg.seed)
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


def _record(cfg, out: Path, metrics: dict, tracker, model, shape, total_before: int, before: dict, after: dict, result, plan) -> None:
    total_after = sum(p.numel() for p in model.parameters())
    prunable_after = model_shape(model).prunable_params
    kept = plan.kept_table(shape)
    rows = per_layer_rows(result.grad_stats, kept, result.layer_scores)
    for tag, res in (("acc_before", (metrics.get("downstream") or {}).get("before")),
                     ("acc_after", (metrics.get("downstream") or {}).get("after"))):
        if res:
            metrics[tag] = {**{name: r["value"] for name, r in res["tasks"].items()}, "mean": res["mean"]}
    metrics.update(
        {
            "nll_before": {str(k): v["nll"] for k, v in before.items()},
            "nll_after": {str(k): v["nll"] for k, v in after.items()},
            "eval_tokens": {str(k): v["tokens"] for k, v in before.items()},
            "params_before": total_before,
            "params_after": total_after,
            "prunable_params_before": shape.prunable_params,
            "prunable_params_after": prunable_after,
            "prunable_ratio_removed": 1 - prunable_after / shape.prunable_params,
            "total_ratio_removed": 1 - total_after / total_before,
            "kept": kept,
            "grad_stats": result.grad_stats,
            "by_layer": rows,
            "importance_extra": result.extra,
        }
    )
    torch.save(
        {"scores": result.scores.to_dict() if result.scores else None, "layer_scores": result.layer_scores, "plan": plan.to_dict()},
        out / "importance.pt",
    )
    _write_json(
        out / "plan.json",
        {**plan.to_dict(), "dense_counts": {ATTENTION: shape.group_counts(ATTENTION), MLP: shape.group_counts(MLP)}},
    )
    images = _plots(out, rows, kept, result.grad_stats, run_name(cfg), metrics.get("layer_scores"))
    metrics["plots"] = images
    _log(tracker, metrics, rows, images)


def _importance_accuracy(cfg, model, test_stream, eval_lengths, result, model_id, stream_id, progress) -> dict:
    """Rank agreement of this run's group scores with the (cached) true removal effect on held-out text,
    once per ground-truth window length; the flat keys repeat the longest length's values."""
    from prune.data import evaluation_windows
    from prune.ground_truth import importance_accuracy, removal_ground_truth

    gt = cfg.eval.ground_truth
    out: dict = {"truth_lengths": ground_truth_lengths(cfg, eval_lengths), "by_truth": {}}
    for length in out["truth_lengths"]:
        windows = evaluation_windows(test_stream, length, gt.max_tokens)
        key = {"model": model_id, "tokens": stream_id, "length": length, "max_tokens": gt.max_tokens,
               "mlp_sample": gt.mlp_sample, "seed": gt.seed}
        truth, _ = cached(
            cfg.cache_dir, "ground_truth", key,
            lambda: removal_ground_truth(model, windows, gt.mlp_sample, gt.seed, cfg.eval.batch_size, progress),
        )
        out["by_truth"][str(length)] = {**importance_accuracy(result.scores, truth), "tokens": int(windows.numel())}
    longest = out["by_truth"][str(out["truth_lengths"][-1])]
    out.update({k: v for k, v in longest.items() if k != "tokens"}, length=out["truth_lengths"][-1])
    return out


def ground_truth_lengths(cfg: DictConfig, eval_lengths: list[int]) -> list[int]:
    """The ground truth's window lengths: ``eval.ground_truth.lengths``, each capped at the longest eval length."""
    cap = max(eval_lengths)
    return sorted({min(int(length), cap) for length in cfg.eval.ground_truth.lengths})


def _announce_memory(cfg: DictConfig, model_config, lengths: dict, importance, metrics: dict) -> None:
    from prune.memory import describe_all, estimate_all

    device = resolve_device(cfg.model.get("device", "auto"))
    dtype = resolve_dtype(cfg.model.get("dtype", "auto"), device)
    micro = getattr(importance, "micro_batch_size", None) or cfg.batch_size
    seq = max(length for length, _ in lengths.values())
    chosen = getattr(importance, "mean_grad", "fp32")
    estimates = estimate_all(model_config, shape_from_config(model_config), seq, micro, dtype,
                             bool(getattr(importance, "gradient_checkpointing", False)), micro < cfg.batch_size)
    metrics["memory_estimate_gib"] = {k: v / 2**30 for k, v in estimates[chosen].items()}
    metrics["memory_estimate_by_mean_grad_gib"] = {kind: parts["total"] / 2**30 for kind, parts in estimates.items()}
    log.info("%s", describe_all(estimates, chosen))


def _downstream_tasks(cfg: DictConfig, model_source, data_source=None, model_config=None) -> tuple[list[str], list[str]]:
    """Tasks to evaluate and extra task folders; refused (one line) before any model work."""
    tasks = [str(t) for t in (cfg.eval.get("tasks") or [])]
    if not tasks:
        return [], []
    from prune.downstream import check_task_settings, check_tasks

    check_task_settings(cfg.eval.tasks_batch_size, cfg.eval.tasks_limit)
    task_dirs = [os.path.expanduser(str(cfg.eval.task_dir))] if cfg.eval.get("task_dir") else []
    if hasattr(model_source, "spec"):  # the testbed: its own multiple-choice tasks, generated from the test split
        from prune.testbed.tasks import ensure_task_dir

        task_dirs.append(str(ensure_task_dir(model_source.spec().corpus, os.path.expanduser(cfg.cache_dir))))
    from prune.probe import probe_task_dir, wanted

    if wanted(tasks):  # the long-context probe, generated from the evaluation split with the model's tokenizer
        task_dirs.append(str(probe_task_dir(cfg, model_source, data_source, model_config)))
    check_tasks(tasks, task_dirs or None)
    return tasks, task_dirs


def _min_or_none(*values):
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _plots(out: Path, rows, kept, grad_stats, title: str, layer_scores: dict | None = None) -> dict[str, str]:
    from prune.plots import plot_grad_stats, plot_kept, plot_layer_scores

    images = {"plots/kept_fraction": plot_kept(kept, out / "kept_fraction.png", f"kept per layer - {title}")}
    if grad_stats:
        images["plots/grad_stats"] = plot_grad_stats(rows, out / "grad_stats.png", f"|grad| per layer - {title}")
    if layer_scores:
        images["plots/layer_scores"] = plot_layer_scores(layer_scores, out / "layer_scores.png", title)
    return images


def _log(tracker, metrics: dict, rows: list[dict], images: dict) -> None:
    flat = {}
    for key in ("ppl_before", "ppl_after"):
        for length, value in metrics[key].items():
            flat[f"{key}/{length}"] = value
    for key in ("params_before", "params_after", "prunable_ratio_removed", "total_ratio_removed"):
        flat[key] = metrics[key]
    for tag in ("acc_before", "acc_after"):
        for task, value in (metrics.get(tag) or {}).items():
            flat[f"{tag}/{task}"] = value
    for block, value in (metrics.get("importance_accuracy") or {}).items():
        if isinstance(value, (int, float)) and block not in ("length", "tokens"):
            flat[f"importance_accuracy/{block}"] = value
    tracker.summary(flat)
    tracker.log_by_layer(rows)
    tracker.log_table("by_layer_table", rows)
    tracker.log_images(images)


def summary_table(metrics: dict) -> str:
    """A short plain-text summary of a finished job (also printed with rich by ``prune.run``)."""
    lines = [f"run {metrics['run']['name']}  status={metrics['status']}"]
    if metrics.get("ppl_before"):
        lines.append("eval length | PPL before | PPL after | change")
        for length, before in metrics["ppl_before"].items():
            after = metrics["ppl_after"][length]
            lines.append(f"{length:>11} | {before:10.3f} | {after:9.3f} | {100 * (after / before - 1):+6.1f}%")
        lines.append(
            f"params {metrics['params_before']:,} -> {metrics['params_after']:,}  "
            f"(prunable removed {100 * metrics['prunable_ratio_removed']:.1f}%, "
            f"whole model {100 * metrics['total_ratio_removed']:.1f}%)"
        )
    if metrics.get("ratio_note"):
        lines.append(metrics["ratio_note"])
    for task, after in (metrics.get("acc_after") or {}).items():
        before = (metrics.get("acc_before") or {}).get(task)
        change = f"{100 * (after - before):+.1f} points" if before is not None else ""
        lines.append(f"accuracy {task}: {'' if before is None else f'{before:.3f} -> '}{after:.3f} {change}")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in metrics.get("timings", {}).items())
    lines.append(f"time: {timing}")
    if metrics.get("pruned_model_dir"):
        lines.append(f"pruned model: {metrics['pruned_model_dir']}")
    return "\n".join(lines)
