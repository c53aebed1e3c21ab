"""Conditions of a sweep: jobs grouped by every setting that varies across it except ``seed``.

Seeds of one condition are repeats, and their spread is the noise floor every comparison is judged
against. The x axis is ``seq_len`` when it varies (else a single calibration length such as
``lengths.layer``, else the first varying setting); the other varying settings make the series.
"""
from __future__ import annotations

import json
from pathlib import Path

from prune.report.design import read_design
from prune.report.jobs import load_jobs, setting

# settings that identify a condition (from metrics.json "run"), in display order
KEYS = ("importance", "seq_len", "num_samples", "token_budget", "batch_size", "ratio", "pruning", "model", "data", "calibration_block")
LABELS = {
    "seq_len": "calibration seq_len (tokens)",
    "num_samples": "calibration samples",
    "token_budget": "calibration token budget",
    "batch_size": "batch size",
    "ratio": "pruning ratio",
}
# command-line keys that never define a condition (seeds are repeats; the rest do not change results)
NOT_CONDITIONS = ("seed", "force", "progress", "experiment")
# settings that change which calibration text a seed draws
DATA_KEYS = ("seq_len", "num_samples", "token_budget", "calibration_block", "budget", "data", "model", "testbed")


def _partition(jobs: list[dict], keys: list[str]) -> set:
    return {tuple(json.dumps(setting(j, k), default=str) for k in keys) for j in jobs}


def varying_keys(jobs: list[dict]) -> list[str]:
    """The settings that tell the sweep's conditions apart: the known ``KEYS`` that vary, then any other
    command-line key that varies and splits the jobs further (e.g. ``importance.fisher``,
    ``lengths.layer``); a key that only renames a split already made (``budget`` next to
    ``token_budget``) is left out."""
    keys = [k for k in KEYS if len(_partition(jobs, [k])) > 1]
    extra = sorted({k for j in jobs for k in j.get("override_values", {})} - set(KEYS) - set(NOT_CONDITIONS))
    for key in extra:
        if len(_partition(jobs, keys + [key])) > len(_partition(jobs, keys)):
            keys.append(key)
    return keys


def condition_of(job: dict, keys: list[str]) -> tuple:
    return tuple(setting(job, k) for k in keys)


def removed_sets(plan: dict) -> dict[str, set]:
    out = {}
    for block, key in (("attention", "keep_attention"), ("mlp", "keep_mlp")):
        counts = plan["dense_counts"][block]
        out[block] = {(i, g) for i, kept in enumerate(plan[key]) for g in set(range(counts[i])) - set(kept)}
    return out


def pairs_by_seed(jobs: list[dict], x_key: str = "seq_len") -> bool:
    """Whether one seed means the same calibration text in both arms compared along ``x_key``: either the
    arms differ in a setting that does not touch the data (a criterion, a Fisher scale, a ratio), or every
    job draws its text as blocks (``calibration_block``) under one token budget."""
    data_keys = DATA_KEYS + tuple(k for k in (x_key,) if k.startswith(("lengths.", "data.", "model.")))
    if x_key not in data_keys:
        return True
    design = {(setting(j, "calibration_block"), setting(j, "token_budget")) for j in jobs}
    return len(design) == 1 and None not in next(iter(design))


class Sweep:
    """The jobs of a sweep folder's latest launch, their conditions, x axis and series; ``save`` writes a
    figure into the folder and remembers it for the report."""

    def __init__(self, sweep_dir: str | Path):
        self.dir = Path(sweep_dir)
        self.jobs, self.stale = load_jobs(self.dir)
        self.ok = [j for j in self.jobs if j["metrics"].get("status") == "ok"]
        varying = varying_keys(self.ok or self.jobs)
        # the x axis: seq_len, else a single calibration length (lengths.layer, ...), else the first varying key
        preferred = [k for k in varying if k == "seq_len"] + [k for k in varying if k.startswith("lengths.")]
        self.x_key = (preferred or varying or ["seq_len"])[0]
        # under a token budget num_samples follows seq_len (budget // seq_len): it is no series of its own
        budgeted = any(setting(j, "token_budget") for j in self.ok or self.jobs)
        jobs = self.ok or self.jobs
        x_split = len(_partition(jobs, [self.x_key]))
        # a setting that follows the x value (batch_size = 2048 // seq_len, for equal tokens per batch) splits
        # nothing further: no series of its own, or every series would hold one x value and nothing to compare
        self.series_keys = [k for k in varying if k != self.x_key
                            and not (self.x_key == "seq_len" and k == "num_samples" and budgeted)
                            and not (k in ("batch_size", "num_samples") and len(_partition(jobs, [self.x_key, k])) == x_split)]
        self.figures: dict[str, str] = {}
        self.design = read_design(self.dir, self.jobs)  # study.primary and study.reference

    def varied(self) -> list[str]:
        """What really varied across the launched jobs, failed ones included (the axes above come from the
        ok jobs only; with one ok job they fall back to seq_len, which need not have varied at all)."""
        recorded = [j for j in self.jobs if j["metrics"].get("run")]  # a job killed before its record: overrides only
        keys = varying_keys(recorded or self.jobs)
        return [k for k in keys if not (k == "num_samples" and "token_budget" in keys)]

    def series(self) -> dict[tuple, list[dict]]:
        groups: dict[tuple, list[dict]] = {}
        for job in self.ok:
            groups.setdefault(condition_of(job, self.series_keys), []).append(job)
        return dict(sorted(groups.items(), key=lambda kv: json.dumps(kv[0], default=str)))

    def series_label(self, key: tuple) -> str:
        if not self.series_keys:
            return "all jobs"
        return ", ".join(f"{k}={'off' if v is None else v}" for k, v in zip(self.series_keys, key))

    def by_x(self, jobs: list[dict]) -> dict:
        out: dict = {}
        for job in jobs:
            out.setdefault(setting(job, self.x_key), []).append(job)
        return dict(sorted(out.items(), key=lambda kv: (kv[0] is None, kv[0] if not isinstance(kv[0], str) else 0, str(kv[0]))))

    def arms(self, groups: dict) -> tuple[object, list]:
        """The reference x value (``study.reference`` where it is one of them, else the first) and the others."""
        xs = list(groups)
        wanted = self.design.reference
        ref = next((x for x in xs if wanted is not None and str(x) == str(wanted)), xs[0] if xs else None)
        return ref, [x for x in xs if x != ref]

    def eval_lengths(self) -> list[str]:
        lengths = []
        for job in self.ok:
            for length in job["metrics"].get("ppl_after", {}):
                if length not in lengths:
                    lengths.append(length)
        return sorted(lengths, key=int)

    def save(self, fig, name: str) -> None:
        import matplotlib.pyplot as plt

        fig.tight_layout()
        path = self.dir / name
        from prune.files import save_figure

        save_figure(fig, path, dpi=100)
        plt.close(fig)
        self.figures[name] = str(path)


def arm_pairs(sweep):
    """``(series label, reference x, other x, jobs by x)`` for every comparison of a study: the reference arm
    against each other arm, within each series that has two arms or more."""
    for key, jobs in sweep.series().items():
        groups = sweep.by_x(jobs)
        if len(groups) < 2:
            continue
        ref, others = sweep.arms(groups)
        for other in others:
            yield sweep.series_label(key), ref, other, groups
