"""A job's name and identity: the short run name, the record of its settings, and the digest that lets a
resumed sweep recognise a job already finished with this exact config."""
from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

from prune.job.checks import samples_for
from prune.models import resolve_device, resolve_dtype


def result_settings(cfg: DictConfig) -> dict:
    """Every setting that can change a job's result, resolved: the config without ``force``, ``progress``,
    logging, ``threads``, the ``study`` block (it only tells the report what the sweep is for) and the
    top-level ``testbed`` block (it reaches a result only through ``model.testbed`` / ``data.testbed``, which
    stay: a testbed setting added later must not make a finished SmolLM2 job look unlike its rerun).

    ``device`` / ``dtype`` ``auto`` enter as what they resolve to here, so a sweep resumed on a GPU does not
    take the jobs finished on a CPU (fp32) as its own (bf16).
    """
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ("force", "progress", "logger", "threads", "study", "testbed"):
        data.pop(key, None)
    model = data.get("model")
    if isinstance(model, dict):
        model.pop("progress", None)
        device = resolve_device(model.get("device", "auto"))
        model["device"] = str(device)
        model["dtype"] = str(resolve_dtype(model.get("dtype", "auto"), device))
    return data


def config_digest(cfg: DictConfig | dict) -> str:
    """Hash of :func:`result_settings`: what resume compares (``metrics.json`` keeps it as ``config_digest``)."""
    data = result_settings(cfg) if isinstance(cfg, DictConfig) else cfg
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_settings(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two :func:`result_settings` records (added or removed too)."""
    keys = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


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


SUPERSEDED = ".superseded"  # <job>/.superseded/<digest>/: a finished result that a rerun replaced


def set_aside_finished(out_dir, cfg: DictConfig | dict, log) -> str | None:
    """Move a finished result (``status: ok``) in ``out_dir`` to ``.superseded/<its digest>/`` before a rerun
    overwrites it (``force=true``, or a sweep resumed with a changed setting): nothing finished is lost, and
    the report reads only the new one. Says which settings changed where the old record kept them.
    ``cfg``: the new job's config (or its :func:`result_settings`)."""
    import shutil
    from pathlib import Path

    settings = {}
    if isinstance(cfg, dict):
        settings = cfg
    else:
        try:
            settings = result_settings(cfg)
        except Exception:  # noqa: BLE001 - a malformed setting: the job's preflight says what is wrong
            pass

    out = Path(out_dir)
    try:
        old = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict) or old.get("status") != "ok":
        return None  # unfinished, failed or refused: nothing worth keeping
    digest = str(old.get("config_digest") or "unknown")
    target = out / SUPERSEDED / digest
    if target.exists():  # the same old digest set aside before: keep both
        target = target.with_name(f"{digest}-{len(list(target.parent.iterdir()))}")
    target.mkdir(parents=True)
    for entry in out.iterdir():
        if entry.name not in (".hydra", "run.log", SUPERSEDED):
            shutil.move(str(entry), str(target / entry.name))
    changed = changed_settings(old["settings"], settings) if isinstance(old.get("settings"), dict) else None
    why = (f"settings changed: {', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}" if changed
           else "force=true or the same settings" if changed == [] else "its settings were not recorded")
    log.warning("%s held a finished result (%s); it is kept in %s and this job runs again", out, why, target)
    return str(target)
