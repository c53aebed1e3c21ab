"""The recovery control: the unpruned model fine-tuned exactly as the pruned one (same recovery config, text,
steps and seed), so that "recovery closes the gap" can be told apart from "training helps every model".

Every pruned model lost to recovery on the testbed gets a lower perplexity than the unpruned model had:
comparing it with the *dense* model before recovery says little. The control is the dense model after the
same recovery; the **gap recovery does not close** is ``ppl_recovered / ppl_dense_recovered - 1`` per eval
length (``metrics.json``: ``ppl_dense_recovered``, ``recovery_gap``, ``recovery_control``).

The control depends only on the dense weights, the recovery settings, its text, its seed and the
evaluation tokens, not on the arm (calibration length, importance): it is computed once per such key and
cached under ``<cache_dir>/recovery_control`` (``prune.cache.cached``), so a sweep over ``seq_len`` at three
seeds trains it three times, not once per job. ``recovery.dense_control=false`` turns it off.
"""
from __future__ import annotations

import copy
import logging

from omegaconf import OmegaConf

from prune.cache import cached, tensor_digest
from prune.recovery_data import RecoveryPlan

log = logging.getLogger(__name__)
VERSION = 1
NOT_IN_KEY = ("log_every", "dense_control")  # settings that do not change the trained weights


def wanted(rcfg) -> bool:
    from prune.recovery import enabled

    return enabled(rcfg) and bool(rcfg.get("dense_control", True))


def control_key(rcfg, model_id: str, plan: RecoveryPlan, test_stream, lengths, max_tokens) -> dict:
    settings = OmegaConf.to_container(rcfg, resolve=True) if not isinstance(rcfg, dict) else dict(rcfg)
    return {"version": VERSION, "model": model_id, "recovery": {k: v for k, v in settings.items() if k not in NOT_IN_KEY},
            "seed": plan.seed, "steps": plan.steps, "text": tensor_digest(plan.stream), "tokens": tensor_digest(test_stream),
            "lengths": list(lengths), "max_tokens": max_tokens}


def train_control(dense, rcfg, plan: RecoveryPlan, evaluate) -> dict:
    """Recover a copy of the dense model as the pruned one will be, and evaluate it (``evaluate(model)``)."""
    from prune.recovery import recover

    model, info = recover(copy.deepcopy(dense), plan.stream, rcfg, None, None, plan)
    results = evaluate(model)
    del model
    return {"ppl": {str(k): v["ppl"] for k, v in results.items()}, "nll": {str(k): v["nll"] for k, v in results.items()},
            **{k: info[k] for k in ("method", "seed", "steps", "train_tokens", "loss_first", "loss_last")},
            "stream_tokens": plan.stream_tokens, "source": plan.source}


def dense_control(cfg, dense, model_id: str, plan: RecoveryPlan, data, evaluate) -> dict:
    """The control's record (from the cache when this key was trained before); ``dense`` is left untouched."""
    key = control_key(cfg.recovery, model_id, plan, data.test_stream, data.lengths, data.max_tokens)
    value, hit = cached(cfg.cache_dir, "recovery_control", key, lambda: train_control(dense, cfg.recovery, plan, evaluate))
    log.info("recovery control (dense model, %s, seed %d, %d steps)%s: PPL %s", value["method"], value["seed"],
             value["steps"], " from the cache" if hit else "", value["ppl"])
    return {**value, "cached": hit}
