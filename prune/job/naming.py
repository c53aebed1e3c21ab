"""A job's name and identity: the short run name, the record of its settings, and the digest that lets a
resumed sweep recognise a job already finished with this exact config."""
from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

from prune.job.checks import samples_for
from prune.models import resolve_device, resolve_dtype


def config_digest(cfg: DictConfig) -> str:
    """Hash of every setting that can change a job's result (not ``force``, ``progress``, logging, nor the
    ``study`` block, which only tells the report what the sweep is for).

    ``device`` / ``dtype`` ``auto`` enter as what they resolve to here, so a sweep resumed on a GPU does not
    take the jobs finished on a CPU (fp32) as its own (bf16).
    """
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ("force", "progress", "logger", "threads", "study"):
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


def run_info(cfg: DictConfig) -> dict:
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
