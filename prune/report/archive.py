"""A study's compact archive: what ``prune-report <sweep> --archive experiments/results/<name>`` commits.

It copies what a report needs from every job folder (``metrics.json``, ``plan.json``, the job's
``.hydra/*.yaml``; never weights or W&B files) and the sweep's ``multirun.yaml``, then the report is built
there, so anyone can rebuild it from the repository: ``prune-report experiments/results/<name> --no-wandb``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

JOB_FILES = ("metrics.json", "plan.json", ".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml")


def archive(sweep_dir: Path, dest: Path) -> int:
    """Copy the compact per-job files of a sweep into ``dest``; returns the number of jobs copied.

    ``metrics.json`` and ``plan.json`` are stored gzipped (``.gz``, compact JSON: about 20x smaller than
    the indented originals, so a 160-job real-model study stays a few MB); every reader of a job folder
    (``prune.report.jobs``) takes either form. The group scores (``importance.pt``) come along as
    ``scores.json.gz``."""
    import gzip

    from prune.report.jobs import job_file, metrics_files, read_json

    dest.mkdir(parents=True, exist_ok=True)
    if (sweep_dir / "multirun.yaml").exists():
        shutil.copy2(sweep_dir / "multirun.yaml", dest / "multirun.yaml")
    n = 0
    for metrics in metrics_files(sweep_dir):
        job = metrics.parent
        (dest / job.name).mkdir(parents=True, exist_ok=True)
        for name in JOB_FILES:
            source = job_file(job, name)
            if source is None:
                continue
            if name.endswith(".json"):
                data = json.dumps(read_json(source), separators=(",", ":"), sort_keys=False).encode()
                target = dest / job.name / f"{name}.gz"
                if not (target.exists() and gzip.decompress(target.read_bytes()) == data):  # unchanged: left alone
                    target.write_bytes(gzip.compress(data, mtime=0))  # mtime 0: the same bytes on every rebuild
                (dest / job.name / name).unlink(missing_ok=True)  # an older plain copy
            else:
                (dest / job.name / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / job.name / name)
        if (job / "importance.pt").exists():  # the group scores, so any claim about them can be rechecked
            scores = group_scores(job / "importance.pt", digits=5)
            (dest / job.name / "scores.json.gz").write_bytes(gzip.compress(json.dumps(scores, separators=(",", ":")).encode(), mtime=0))
        n += 1
    return n


def group_scores(path: Path, digits: int = 7) -> dict:
    """A job's ``importance.pt`` as plain JSON: every group's score (``scores``: attention / mlp, one list per
    layer) and the layer scores where the criterion has them, to ``digits`` significant digits (7: fp32's
    own; archives keep 5, 30 % smaller, and the decisions themselves are exact in ``plan.json``)."""
    import torch

    data = torch.load(path, map_location="cpu", weights_only=False)

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if torch.is_tensor(value):
            return plain(value.tolist())
        return float(f"{value:.{digits}g}") if isinstance(value, float) else value

    return {"scores": plain(data.get("scores")), "layer_scores": plain(data.get("layer_scores"))}
