"""A sweep as a table: one row per job (settings, PPL, accuracy, rank agreement, time and memory per phase),
written as ``summary.csv`` / ``summary.json``; and the time a finished sweep spent (``prune-bench --sweep``)."""
from __future__ import annotations

import json
from pathlib import Path

from prune.metrics import flat
from prune.report.conditions import KEYS
from prune.report.jobs import job_file, load_jobs, setting


def summary_rows(jobs: list[dict]) -> list[dict]:
    """One row per job: what it was (settings, overrides), then its outcomes, sizes and cost flattened by
    ``metrics.flat`` (``ppl_after/512``, ``acc_after/<task>``, ``importance_accuracy/by_truth/512/mlp``,
    ``timings/total``, ...: the same names as the job's W&B summary). Columns in order of first appearance."""
    rows = []
    for job in jobs:
        m = job["metrics"]
        row = {"job": job["folder"], "name": m.get("run", {}).get("name"), "status": m.get("status"),
               "error": m.get("error", ""), "overrides": " ".join(job["overrides"])}
        row.update({key: setting(job, key) for key in KEYS + ("seed",)})
        row.update(flat(m))
        rows.append(row)
    return rows


def summary_frame(jobs: list[dict]):
    """``summary_rows`` as a DataFrame of Python objects (an int column with gaps stays int, not float)."""
    import pandas as pd

    return pd.DataFrame(summary_rows(jobs), dtype=object)


def write_tables(sweep_dir: Path, jobs: list[dict]) -> list[dict]:
    rows = summary_rows(jobs)
    from prune.files import atomic_write, write_text

    write_text(sweep_dir / "summary.json", json.dumps(rows, indent=2, default=str))
    frame = summary_frame(jobs)
    atomic_write(sweep_dir / "summary.csv", lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\r\n"))
    return rows


def time_spent(folder: str | Path) -> dict:
    """Time spent by a finished multirun, from its jobs' ``metrics.json`` (nothing is run); every job
    folder counts, an earlier launch's too.

    ``jobs_total_s`` sums the jobs' own wall times; ``launch_wall_s`` is the time from the launch
    (``multirun.yaml`` written) to the last ``metrics.json`` written, so it also holds process start-up and
    Hydra's work between jobs; ``by_seq_len`` gives the mean seconds per phase of one job at each length.
    """
    import pandas as pd

    folder = Path(folder)
    jobs, _ = load_jobs(folder, latest_launch=False, nested=True)
    if not jobs:
        raise FileNotFoundError(f"no */metrics.json under {folder}")
    frame = summary_frame(jobs)
    columns = [c for c in frame if c.startswith("timings/")]
    seconds = frame[columns].apply(pd.to_numeric, errors="coerce").rename(columns=lambda c: c[len("timings/"):])
    phases = seconds.drop(columns="total", errors="ignore")
    total = seconds["total"] if "total" in seconds else pd.Series(float("nan"), index=frame.index)
    total = total.fillna(phases.sum(axis=1))
    status = frame["status"].fillna("?")
    ok = phases[status == "ok"].assign(total=total[status == "ok"], seq_len=frame["seq_len"][status == "ok"])
    by_length = {}
    groups = sorted(ok.groupby("seq_len", dropna=False, sort=False), key=lambda kv: (pd.isna(kv[0]), 0 if pd.isna(kv[0]) else kv[0]))
    for length, rows in groups:
        rows = rows.drop(columns="seq_len")
        rows = rows.loc[:, rows.notna().any()]
        by_length[str(None if pd.isna(length) else length)] = {"jobs": len(rows), **rows.fillna(0.0).mean().to_dict()}
    launch = folder / "multirun.yaml"
    written = max(job_file(folder / j["folder"], "metrics.json").stat().st_mtime for j in jobs)
    return {"folder": str(folder), "jobs": len(jobs), "status": {k: int(n) for k, n in status.value_counts(sort=False).items()},
            "jobs_total_s": float(total.sum()), "launch_wall_s": written - launch.stat().st_mtime if launch.exists() else None,
            "phase_sums_s": phases.sum().to_dict(),
            "by_seq_len": by_length,
            "per_job": [{"job": j["folder"], "status": s, "total_s": float(t), "seq_len": L}
                        for j, s, t, L in zip(jobs, status, total, frame["seq_len"])]}
