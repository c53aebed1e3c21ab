"""One job: calibrate -> score -> prune -> evaluate -> save -> log.

``run_job`` is the whole pipeline for one resolved config; ``prune.run`` wraps it as the Hydra entry
point. Every check that can fail cheaply runs before the model is loaded. This module only orders the
phases: the checks (``checks``), inputs (``inputs``), what is recorded (``record``) and the job's name
and digest (``naming``) live beside it.
"""
from __future__ import annotations

import contextlib
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prune.cache import cached, fingerprint, tensor_digest
from prune.errors import ConfigError, DiskFullError, PruneLabError, PruningError, first_line
from prune.eval.perplexity import evaluate_lengths
from prune.importance import Calibration, ImportanceResult
from prune.job.checks import check_compatibility, layer_method_for, validate
from prune.job.inputs import EvalData, announce_memory, downstream_tasks, load_data
from prune.job.naming import config_digest, result_settings, run_info, run_name, set_aside_finished
from prune.job.record import calibration_flops, eval_flops, importance_accuracy, record, write_metrics
from prune.metrics import flat
from prune.models import max_positions, resolve_device
from prune.preflight import build_parts, check_writable, preflight
from prune.profiling import PhaseRecorder
from prune.pruning import apply_plan, ratio_deviation
from prune.structure import model_shape, shape_from_config

log = logging.getLogger("prune.job")
# Refusals: exit status 2 and one line. Anything else is a bug (exit 1, traceback in run.log / metrics.json).
USER_ERRORS = (PruneLabError,)


def run_job(cfg: DictConfig, out_dir: str | Path, group: str | None = None) -> dict:
    """Run one job; always writes ``metrics.json``: ``status`` ``ok``, or ``refused`` (a ``PruneLabError``,
    before any work where the check needs no model), ``interrupted`` (Ctrl-C) or ``failed`` (a bug: with
    the traceback), and ``error``. Refusals come before the W&B run starts."""
    out = Path(out_dir)
    check_writable(out, "the output folder", "hydra.run.dir=<folder> / hydra.sweep.dir=<folder> or PRUNE_LAB_OUTPUTS")
    started = time.time()
    metrics: dict = {"status": "running", "output_dir": str(out)}
    set_aside_finished(out, cfg, log)  # a finished result is moved, never overwritten
    # Replace whatever an earlier run left here at once: a job killed from now on reads as unfinished.
    write_metrics(out / "metrics.json", metrics)
    tracker, recorder, ok = None, None, False
    try:
        with contextlib.suppress(Exception):  # best effort: a refused job still says what it was in the report
            metrics["run"] = run_info(cfg)
        preflight(cfg, out)  # types first: nothing below may trip over a malformed value
        metrics.update(run=run_info(cfg), config_digest=config_digest(cfg), settings=result_settings(cfg))
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        metrics["torch_threads"] = torch.get_num_threads()  # null: torch's default (one per core; 1 in a joblib worker)
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
        metrics["flops"] = dict(recorder.flops) if recorder else {}
        metrics["flops_per_s"] = recorder.flops_per_s() if recorder else {}
        # The W&B run is flushed before the final metrics.json: a job killed during the flush still reads as
        # unfinished, so a resume re-runs it (and its new W&B run replaces the half-flushed one).
        try:
            if tracker is not None:
                try:
                    tracker.summary({"status": metrics["status"],
                                     **flat(metrics, ("timings", "peak_memory_mb", "flops_per_s")),
                                     **_sweep_progress(out, group)})
                finally:
                    tracker.finish(ok)
        finally:
            try:
                write_metrics(out / "metrics.json", metrics, raise_mismatch=ok)  # never masks the job's own error
            except DiskFullError as full:  # the job's own error (or this one) is what the user sees
                log.error("%s: metrics.json still says status running, so a resume re-runs the job", first_line(full))
    return metrics


def _sweep_progress(out: Path, group: str | None) -> dict:
    """In a multirun (the job folder sits in the sweep folder), the sweep's progress with this job counted."""
    if group is None:
        return {}
    from prune.report.progress import wandb_values

    try:
        return wandb_values(out.parent, finished=out.name)  # its own final metrics.json comes after the flush
    except Exception:  # noqa: BLE001 - progress must never fail a finished job
        log.exception("could not count the sweep's progress for W&B")
        return {}


def failure_record(exc: BaseException) -> dict:
    """``status`` / ``error`` (/ ``traceback``) of a job that did not finish."""
    error = f"{type(exc).__name__}: {first_line(exc)}"
    if isinstance(exc, DiskFullError):  # not a refused setting, not a bug: one line, and a resume re-runs it
        return {"status": "failed", "error": error}
    if isinstance(exc, PruneLabError):
        return {"status": "refused", "error": error}
    if isinstance(exc, KeyboardInterrupt):
        return {"status": "interrupted", "error": "interrupted (KeyboardInterrupt)"}
    return {"status": "failed", "error": error, "traceback": traceback.format_exc()}


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
    recovery: object = None  # prune.recovery_data.RecoveryPlan, with recovery=lora|full


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
    tasks, task_dirs = downstream_tasks(cfg, model_source, data_source, model_config)
    if not cfg.progress:  # datasets draws its own bars ("Generating train split") unless told not to
        with contextlib.suppress(ImportError):
            import datasets

            datasets.disable_progress_bars()
    from prune.models import resolve_dtype
    from prune.recovery import check_recovery, enabled as recovery_enabled
    from prune.recovery_data import recovery_plan

    device = resolve_device(cfg.model.get("device", "auto"))
    check_recovery(cfg.get("recovery"), max_positions(model_config), resolve_dtype(cfg.model.get("dtype", "auto"), device))
    plan = None
    with recorder.phase("data"):
        data = load_data(cfg, model_source, data_source, model_config, lengths, (importance, layer_method), metrics)
        if recovery_enabled(cfg.get("recovery")):  # its text, seed and steps; refused if it shares text with evaluation
            plan = recovery_plan(cfg.recovery, cfg.seed, data.train_stream, data.test_stream, data.tokenizer)
            metrics["data"]["recovery"] = plan.info()
    announce_memory(cfg, model_config, lengths, importance, metrics)  # after the last refusal: one line
    return Prepared(model_source, importance, strategy, layer_method, lengths, tasks, task_dirs, data, plan)


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
    stream_id = tensor_digest(data.test_stream) if (model_id or cfg.eval.cache_after) else None

    def evaluate(tag: str) -> dict:
        results = evaluate_lengths(model, data.test_stream, data.lengths, cfg.eval.batch_size, data.max_tokens, progress, tag)
        recorder.count(eval_flops(model_shape(model), results))
        return results

    def evaluate_cached(tag: str, model_key: str) -> tuple[dict, bool]:
        """Perplexities of a model whose weights were evaluated before on these tokens: from the cache."""
        key = {"model": model_key, "tokens": stream_id, "lengths": data.lengths, "max_tokens": data.max_tokens}
        return cached(cfg.cache_dir, f"eval_{tag}", key, lambda: evaluate(tag))

    def downstream(tag: str) -> dict:
        from prune.eval.downstream import evaluate_tasks

        e = cfg.eval
        res = evaluate_tasks(model, data.tokenizer, tasks, e.tasks_batch_size, e.tasks_limit, None, task_dirs or None,
                             e.tasks_fewshot, items=dict(e.get("tasks_items") or {}))
        if probe_dir is not None:  # every probe item on graded measures, for a report paired by item
            from prune.eval.probe_score import score_probe

            res["probe"] = score_probe(model, data.tokenizer, probe_dir, e.tasks_limit)
        return res

    from prune.eval.probe import wanted as probe_wanted
    from prune.eval.probe_score import VERSION as SCORE_VERSION

    probe_dir = (next((d for d in task_dirs if Path(d).parent.name == "probe"), None)
                 if tasks and probe_wanted(tasks) and cfg.eval.probe.get("score", True) else None)

    def tasks_cached(tag: str, model_key: str) -> tuple[dict, bool]:
        """Task scores of a model whose weights were scored before with these settings: from the cache."""
        key = {"model": model_key, "tokenizer": cfg.model.get("tokenizer_path"), "tasks": tasks,
               "limit": cfg.eval.tasks_limit, "items": dict(cfg.eval.get("tasks_items") or {}),
               "fewshot": cfg.eval.tasks_fewshot, "batch_size": cfg.eval.tasks_batch_size, "task_dirs": task_dirs,
               "probe_score": probe_dir is not None and SCORE_VERSION}
        return cached(cfg.cache_dir, f"tasks_{tag}", key, lambda: downstream(tag))

    with recorder.phase("eval_before"):
        if cfg.eval.cache_before:
            before, metrics["eval_before_cached"] = evaluate_cached("before", model_id)
        else:
            before = evaluate("before")
    metrics["ppl_before"] = {str(k): v["ppl"] for k, v in before.items()}
    tasks_before = None
    if tasks and cfg.eval.tasks_before:
        with recorder.phase("tasks_before"):
            if cfg.eval.cache_before:
                tasks_before, _ = tasks_cached("before", model_id)
            else:
                tasks_before = downstream("before")

    control = None
    from prune.recovery_control import dense_control, wanted as control_wanted

    if control_wanted(cfg.get("recovery")):  # the dense model recovered the same way (cached per recovery key)
        with recorder.phase("recovery_control"):
            control = dense_control(cfg, model, model_id or fingerprint(model), p.recovery, data, lambda m: evaluate_lengths(
                m, data.test_stream, data.lengths, cfg.eval.batch_size, data.max_tokens, progress, "dense_recovered"))

    # Importance (group scores and/or layer scores), and how accurate it is.
    calibration = Calibration(data.windows, cfg.batch_size, seed=cfg.seed, progress=progress,
                              max_pass_tokens=cfg.model.get("max_pass_tokens"))
    with recorder.phase("importance"):
        result: ImportanceResult = importance.score(model, calibration)
        recorder.count(calibration_flops(importance, shape, data.windows))
    if layer_method is not None:
        with recorder.phase("layer_importance"):
            result.layer_scores = layer_method.score(model, calibration).layer_scores
            recorder.count(calibration_flops(layer_method, shape, data.windows))
    if result.layer_scores:
        criterion = importance if importance.provides == "layers" else layer_method
        metrics["layer_scores"] = {"criterion": criterion.name, "length": lengths[criterion.uses][0], **result.layer_scores}
    if cfg.eval.importance_accuracy and result.scores is not None:
        with recorder.phase("ground_truth"):
            metrics["importance_accuracy"] = importance_accuracy(
                cfg, model, data.test_stream, data.lengths, result, model_id, stream_id, progress
            )

    # Prune, evaluate again, save.
    with recorder.phase("pruning"):
        plan = strategy.plan(result.scores, shape, result.layer_scores)
        apply_plan(model, plan)
    pruned_id = fingerprint(model) if cfg.eval.cache_after else None
    with recorder.phase("eval_after"):
        if cfg.eval.cache_after:  # the same pruned weights (e.g. importance=magnitude at any seq_len): evaluated once
            after, metrics["eval_after_cached"] = evaluate_cached("after", pruned_id)
        else:
            after = evaluate("after")
    metrics["ppl_after"] = {str(k): v["ppl"] for k, v in after.items()}
    if tasks:
        with recorder.phase("tasks_after"):
            if cfg.eval.cache_after:  # identical pruned weights score identically: once
                tasks_after, metrics["tasks_after_cached"] = tasks_cached("after", pruned_id)
            else:
                tasks_after = downstream("after")
            metrics["downstream"] = {"before": tasks_before, "after": tasks_after}
    from prune.recovery import enabled as recovery_enabled, recovery_phase

    if recovery_enabled(cfg.get("recovery")):  # fine-tune, evaluate again; the merged model is what is saved
        model = recovery_phase(cfg, model, p.recovery, evaluate, downstream if tasks else None, recorder, tracker, out, metrics,
                               control)
    if cfg.save_model:
        from prune.checkpoint import save_pruned

        with recorder.phase("save"):
            metrics["pruned_model_dir"] = str(save_pruned(model, data.tokenizer, out / "pruned_model"))
    else:
        metrics["pruned_model_dir"] = None

    # Record: metrics, plan, scores, plots, W&B.
    record(cfg, out, metrics, tracker, model, shape, total_before, before, after, result, plan)
    note = ratio_deviation(strategy.ratio, metrics["prunable_ratio_removed"], shape, f"pruning={strategy.name}")
    if note:
        metrics["ratio_note"] = note
        log.warning("%s", note)
