"""Aggregate a sweep into summary tables, figures and a readable report (``prune-report <sweep folder>``).

Jobs are grouped into *conditions* by every setting that varies across the sweep except ``seed``; seeds
of one condition are repeats, and their spread is the noise floor every comparison is judged against.
The x-axis of the figures is ``seq_len`` when it varies (else the first varying setting).

Writes into the sweep folder: ``summary.csv`` / ``summary.json`` (one row per job), ``report.md`` and
PNG figures; and logs them to a W&B run of job type ``report`` in the sweep's group.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
import statistics
import sys
from pathlib import Path

from prune.stats import compare, jaccard, mean_sd
from prune.verdicts import judge, overlap_verdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prune import report_after  # noqa: E402

log = logging.getLogger(__name__)
# settings that identify a condition (from metrics.json "run"), in display order
KEYS = ("importance", "seq_len", "num_samples", "token_budget", "batch_size", "ratio", "pruning", "model", "data", "calibration_block")
LABELS = {
    "seq_len": "calibration seq_len (tokens)",
    "num_samples": "calibration samples",
    "token_budget": "calibration token budget",
    "batch_size": "batch size",
    "ratio": "pruning ratio",
}


# ------------------------------------------------------------------------------------------- loading
# command-line keys that never define a condition (seeds are repeats; the rest do not change results)
NOT_CONDITIONS = ("seed", "force", "progress", "experiment")


def launch_grid(sweep_dir: Path) -> set[frozenset] | None:
    """The override sets of every job of the sweep's latest launch, expanded from its ``multirun.yaml``
    (sweeper params + command line) as Hydra's basic sweeper expands them; None if unknown."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None
    try:
        hydra_cfg = OmegaConf.load(path).hydra
        params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
        overrides = OverridesParser.create().parse_overrides(params + list(hydra_cfg.overrides.task))
        return {frozenset(job) for job in BasicSweeper.split_arguments(overrides, None)[0]}
    except Exception as exc:  # an unusual sweeper: keep every folder rather than guess
        log.warning("cannot expand the sweep of %s (%s): every job folder is reported", path, exc)
        return None


def load_jobs(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    """The job folders of the sweep's latest launch (their ``metrics.json``, ``plan.json``, overrides).

    A sweep folder can hold folders of an earlier launch with other settings (experiments use a fixed
    folder). A folder whose overrides are not a point of the latest launch (``multirun.yaml``) is left out
    and its name returned as the second value. Nothing depends on file times, so a copied, rsynced or
    freshly cloned sweep folder reports the same.
    """
    grid = launch_grid(sweep_dir)
    jobs, stale = [], []
    for metrics_path in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: _natural(p.parent.name)):
        folder = metrics_path.parent
        overrides_path = folder / ".hydra" / "overrides.yaml"
        overrides = []
        if overrides_path.exists():
            overrides = [line[2:].strip() for line in overrides_path.read_text().splitlines() if line.startswith("- ")]
        if grid is not None and overrides_path.exists() and frozenset(overrides) not in grid:
            stale.append(folder.name)
            continue
        try:
            metrics = json.loads(metrics_path.read_text())
        except json.JSONDecodeError:
            metrics = {"status": "failed", "error": "metrics.json is unreadable (job killed while writing?)"}
        plan = json.loads((folder / "plan.json").read_text()) if (folder / "plan.json").exists() else None
        jobs.append({"folder": folder.name, "metrics": metrics, "overrides": overrides,
                     "override_values": override_values(overrides), "plan": plan})
    return jobs, stale


def override_values(overrides: list[str]) -> dict:
    """``["seq_len=128", "+data.x=a"]`` -> ``{"seq_len": 128, "data.x": "a"}`` (values parsed as YAML)."""
    import yaml

    values = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        values[key.lstrip("+~")] = parsed
    return values


def _natural(name: str):
    return (0, int(name)) if name.isdigit() else (1, name)


def setting(job: dict, key: str):
    run = job["metrics"].get("run", {})
    return run[key] if key in run else job.get("override_values", {}).get(key)


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


# -------------------------------------------------------------------------------------- statistics
def removed_sets(plan: dict) -> dict[str, set]:
    out = {}
    for block, key in (("attention", "keep_attention"), ("mlp", "keep_mlp")):
        counts = plan["dense_counts"][block]
        out[block] = {(i, g) for i, kept in enumerate(plan[key]) for g in set(range(counts[i])) - set(kept)}
    return out


# settings that change which calibration text a seed draws
DATA_KEYS = ("seq_len", "num_samples", "token_budget", "calibration_block", "budget", "data", "model", "testbed")


def pairs_by_seed(jobs: list[dict], x_key: str = "seq_len") -> bool:
    """Whether one seed means the same calibration text in both arms compared along ``x_key``: either the
    arms differ in a setting that does not touch the data (a criterion, a Fisher scale, a ratio), or every
    job draws its text as blocks (``calibration_block``) under one token budget."""
    data_keys = DATA_KEYS + tuple(k for k in (x_key,) if k.startswith(("lengths.", "data.", "model.")))
    if x_key not in data_keys:
        return True
    design = {(setting(j, "calibration_block"), setting(j, "token_budget")) for j in jobs}
    return len(design) == 1 and None not in next(iter(design))


class Report:
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
        self.series_keys = [k for k in varying if k != self.x_key
                            and not (self.x_key == "seq_len" and k == "num_samples" and budgeted)]
        self.figures: dict[str, str] = {}

    def varied(self) -> list[str]:
        """What really varied across the launched jobs, failed ones included (the axes above come from the
        ok jobs only; with one ok job they fall back to seq_len, which need not have varied at all)."""
        keys = varying_keys(self.jobs)
        return [k for k in keys if not (k == "num_samples" and "token_budget" in keys)]

    # --- grouping helpers
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

    def eval_lengths(self) -> list[str]:
        lengths = []
        for job in self.ok:
            for length in job["metrics"].get("ppl_after", {}):
                if length not in lengths:
                    lengths.append(length)
        return sorted(lengths, key=int)

    # --- tables
    def rows(self) -> list[dict]:
        rows = []
        for job in self.jobs:
            m = job["metrics"]
            row = {"job": job["folder"], "name": m.get("run", {}).get("name"), "status": m.get("status"),
                   "error": m.get("error", ""), "overrides": " ".join(job["overrides"])}
            for key in KEYS + ("seed",):
                row[key] = setting(job, key)
            for length, value in m.get("ppl_before", {}).items():
                row[f"ppl_before_{length}"] = value
            for length, value in m.get("ppl_after", {}).items():
                row[f"ppl_after_{length}"] = value
            for key in ("params_before", "params_after", "prunable_ratio_removed", "total_ratio_removed"):
                row[key] = m.get(key)
            accuracy = m.get("importance_accuracy") or {}
            for truth, values in (accuracy.get("by_truth") or {"": accuracy}).items():
                for block, value in values.items():
                    if isinstance(value, (int, float)) and block not in ("length", "tokens"):
                        row[f"spearman_{block}" + (f"@{truth}" if truth else "")] = value
            for tag in ("acc_before", "acc_after"):
                for task, value in (m.get(tag) or {}).items():
                    row[f"{tag}_{task}"] = value
            row.update(report_after.columns(m))  # recovery (prune.report_after)
            for phase, seconds in (m.get("timings") or {}).items():
                row[f"time_{phase}_s"] = seconds
            for phase, mb in (m.get("peak_memory_mb") or {}).items():
                row[f"peak_{phase}_mb"] = mb
            rows.append(row)
        return rows

    def write_tables(self) -> None:
        rows = self.rows()
        (self.dir / "summary.json").write_text(json.dumps(rows, indent=2, default=str))
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with open(self.dir / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    # --- figures
    def _save(self, fig, name: str) -> None:
        fig.tight_layout()
        path = self.dir / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        self.figures[name] = str(path)

    def _xs(self, values: list) -> tuple[list, bool]:
        numeric = all(isinstance(v, (int, float)) for v in values)
        return (values, numeric) if numeric else (list(range(len(values))), False)

    def _x_axis(self, ax, xs_raw: list) -> None:
        xs, numeric = self._xs(xs_raw)
        if numeric and self.x_key == "seq_len":
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(v) for v in xs_raw])
        ax.set_xlabel(LABELS.get(self.x_key, self.x_key))

    def plot_ppl(self) -> None:
        lengths = self.eval_lengths()
        if not lengths:
            return
        fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.6), squeeze=False)
        for ax, length in zip(axes[0], lengths):
            for key, jobs in self.series().items():
                groups = self.by_x(jobs)
                xs_raw = list(groups)
                xs, _ = self._xs(xs_raw)
                stats = [mean_sd([j["metrics"]["ppl_after"].get(length) for j in g]) for g in groups.values()]
                means = [s[0] for s in stats]
                sds = [0 if math.isnan(s[1]) else s[1] for s in stats]
                ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=self.series_label(key))
                self._x_axis(ax, xs_raw)
            before = [j["metrics"]["ppl_before"].get(length) for j in self.ok if length in j["metrics"].get("ppl_before", {})]
            if before:
                ax.axhline(statistics.fmean(before), color="gray", ls="--", lw=1, label="before pruning")
            ax.set_ylabel("perplexity after pruning")
            ax.set_title(f"eval window {length} tokens (mean ± sd over seeds)", fontsize=9)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        self._save(fig, "ppl_after.png")

    def _layer_curves(self, name: str, title: str, panels: list[tuple[str, str, str]], logy: bool | str) -> None:
        """One figure per series: per-layer curves, one line per x value (averaged over seeds).

        ``logy="auto"``: a symmetric log axis when a panel's values span more than two orders of magnitude
        (one layer far above the rest would flatten every other layer into a line at zero)."""
        series = self.series()
        if not series:
            return
        fig, axes = plt.subplots(len(series), len(panels), figsize=(4.4 * len(panels), 3.3 * len(series)), squeeze=False)
        drew = False
        for row, (key, jobs) in enumerate(series.items()):
            for col, (source, field, label) in enumerate(panels):
                ax = axes[row][col]
                plotted = []
                for x, group in self.by_x(jobs).items():
                    curves = [self._per_layer(j, source, field) for j in group]
                    curves = [c for c in curves if c]
                    if not curves:
                        continue
                    n = min(len(c) for c in curves)
                    mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
                    ax.plot(range(n), mean, marker=".", label=f"{self.x_key}={x}")
                    plotted += mean
                    drew = True
                magnitudes = [abs(v) for v in plotted if v]
                if logy is True:
                    ax.set_yscale("log")
                elif logy == "auto" and magnitudes and max(magnitudes) > 100 * min(magnitudes):
                    ax.set_yscale("symlog", linthresh=max(magnitudes) * 1e-3)
                ax.set_xlabel("decoder layer")
                ax.set_ylabel(label)
                ax.set_title(f"{label}\n{self.series_label(key)}", fontsize=8)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=10)
        if drew:
            self._save(fig, name)
        else:
            plt.close(fig)

    @staticmethod
    def _per_layer(job: dict, source: str, field: str) -> list[float] | None:
        rows = job["metrics"].get(source) or []
        values = [r.get(field) for r in rows]
        return values if values and all(v is not None for v in values) else None

    def plot_layers(self) -> None:
        self._layer_curves(
            "grad_by_layer.png", "per-layer |gradient| of the prunable weights (mean over seeds)",
            [("by_layer", "grad_abs_mean", "mean |grad| (loss / weight unit)"),
             ("by_layer", "grad_abs_std", "std of |grad| (loss / weight unit)"),
             ("by_layer", "grad_abs_mean_batch_cv", "CV of per-batch mean |grad|")],
            logy=False,
        )
        if any(j["metrics"].get("layer_scores") for j in self.ok):
            criteria = sorted({j["metrics"]["layer_scores"].get("criterion") for j in self.ok if j["metrics"].get("layer_scores")})
            unit = "loss increase, nats" if set(criteria) <= {"layer", "block"} else "criterion units"
            panels = [("by_layer", f"{key}_importance", f"{key} importance ({unit})")
                      for key in ("layer", "attention", "mlp")
                      if any(self._per_layer(j, "by_layer", f"{key}_importance") for j in self.ok)]
            self._layer_curves("layer_importance.png", f"{', '.join(criteria)} importance per layer (mean over seeds)",
                               panels, logy="auto")
        self._layer_curves(
            "kept_by_layer.png", "fraction kept per layer (mean over seeds)",
            [("kept", "attention_kept_fraction", "attention groups kept (fraction)"),
             ("kept", "mlp_kept_fraction", "MLP channels kept (fraction)")],
            logy=False,
        )

    def overlaps(self, jobs: list[dict]) -> dict:
        """Mean Jaccard overlap of the removed sets between x values (off-diagonal) and seeds (diagonal)."""
        groups = {x: [(setting(j, "seed"), removed_sets(j["plan"])) for j in g if j["plan"]] for x, g in self.by_x(jobs).items()}
        xs = list(groups)
        out = {}
        for block in ("attention", "mlp"):
            matrix = [[float("nan")] * len(xs) for _ in xs]
            for a, b in itertools.product(range(len(xs)), repeat=2):
                # like with like: pairs of different seeds on the diagonal and off it
                pairs = [(p, q) for (s, p), (t, q) in itertools.product(groups[xs[a]], groups[xs[b]])
                         if s != t and (a != b or s < t)]
                if pairs:
                    matrix[a][b] = statistics.fmean(jaccard(p[block], q[block]) for p, q in pairs)
            out[block] = {"x": xs, "matrix": matrix}
        return out

    def plot_overlap(self) -> dict:
        results = {}
        series = self.series()
        if not series:
            return results
        fig, axes = plt.subplots(len(series), 2, figsize=(9, 3.8 * len(series)), squeeze=False)
        for row, (key, jobs) in enumerate(series.items()):
            ov = self.overlaps(jobs)
            results[self.series_label(key)] = ov
            for col, block in enumerate(("attention", "mlp")):
                ax = axes[row][col]
                m = ov[block]["matrix"]
                im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
                labels = [str(x) for x in ov[block]["x"]]
                ax.set_xticks(range(len(labels)), labels)
                ax.set_yticks(range(len(labels)), labels)
                ax.set_xlabel(LABELS.get(self.x_key, self.x_key))
                ax.set_ylabel(LABELS.get(self.x_key, self.x_key))
                for i, j in itertools.product(range(len(labels)), repeat=2):
                    if not math.isnan(m[i][j]):
                        ax.text(j, i, f"{m[i][j]:.2f}", ha="center", va="center", color="w", fontsize=8)
                ax.set_title(f"Jaccard of removed {block} groups\n(diagonal: between seeds)\n{self.series_label(key)}", fontsize=8)
                fig.colorbar(im, ax=ax, fraction=0.046, label="Jaccard overlap (0-1)")
        self._save(fig, "overlap.png")
        return results

    def plot_cost(self) -> None:
        if not self.ok:
            return
        phases = [p for p in ("data", "load_model", "eval_before", "importance", "ground_truth", "pruning", "eval_after", "save")
                  if any(p in (j["metrics"].get("timings") or {}) for j in self.ok)]
        groups = self.by_x(self.ok)
        xs_raw = list(groups)
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        positions = list(range(len(xs_raw)))
        bottom = [0.0] * len(xs_raw)
        for phase in phases:
            values = [statistics.fmean((j["metrics"]["timings"].get(phase) or 0.0) for j in g) for g in groups.values()]
            axes[0].bar(positions, values, bottom=bottom, label=phase)
            bottom = [b + v for b, v in zip(bottom, values)]
            peaks = [max((j["metrics"].get("peak_memory_mb") or {}).get(phase, 0.0) for j in g) for g in groups.values()]
            axes[1].plot(positions, peaks, marker="o", label=phase)
        for ax, ylabel, title in ((axes[0], "seconds (mean per job)", "time per phase"),
                                  (axes[1], "peak memory (MiB)", "peak memory per phase")):
            ax.set_xticks(positions, [str(x) for x in xs_raw])
            ax.set_xlabel(LABELS.get(self.x_key, self.x_key))
            ax.set_ylabel(ylabel)
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        self._save(fig, "cost.png")

    def plot_accuracy(self) -> None:
        if not any(j["metrics"].get("importance_accuracy") for j in self.ok):
            return
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for ax, block in zip(axes, ("attention", "mlp")):
            for key, jobs in self.series().items():
                groups = self.by_x(jobs)
                xs_raw = list(groups)
                xs, _ = self._xs(xs_raw)
                stats = [mean_sd([(j["metrics"].get("importance_accuracy") or {}).get(block) for j in g]) for g in groups.values()]
                ax.errorbar(xs, [s[0] for s in stats], yerr=[0 if math.isnan(s[1]) else s[1] for s in stats],
                            marker="o", capsize=3, label=self.series_label(key))
                self._x_axis(ax, xs_raw)
            ax.set_ylabel("Spearman with true loss increase")
            truth = sorted({(j["metrics"].get("importance_accuracy") or {}).get("length") for j in self.ok} - {None})
            ax.set_title(f"importance accuracy: {block} groups\n(truth on {'/'.join(map(str, truth))}-token windows)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        self._save(fig, "importance_accuracy.png")

    # --- verdicts
    def _arm(self, jobs: list[dict], value) -> dict:
        return {setting(j, "seed"): value(j["metrics"]) for j in jobs}

    def verdicts(self) -> list[dict]:
        """Every comparison of the first x value with each other one, within each series (see prune.verdicts)."""
        rows = []
        for key, jobs in self.series().items():
            groups = self.by_x(jobs)
            xs = list(groups)
            if len(xs) < 2:
                continue
            label = self.series_label(key)
            ref = xs[0]
            for other in xs[1:]:
                a, b = groups[ref], groups[other]
                paired = pairs_by_seed(a + b, self.x_key)

                def add(what, value, kind, lower_is_better):
                    row = judge(f"[{label}] {what}", self.x_key, ref, other,
                                compare(self._arm(a, value), self._arm(b, value), paired), kind, lower_is_better)
                    if row is not None:
                        row["series"] = label
                        rows.append(row)

                for length in self.eval_lengths():
                    add(f"PPL after pruning, eval window {length}", lambda m, L=length: (m.get("ppl_after") or {}).get(L), "ppl", True)
                for length in self.eval_lengths():  # judged only where jobs ran recovery=...
                    add(f"PPL after recovery, eval window {length}", lambda m, L=length: (m.get("ppl_recovered") or {}).get(L), "ppl", True)
                tasks = sorted({t for j in a + b for t in (j["metrics"].get("acc_after") or {})})
                if len(tasks) == 2 and "mean" in tasks:  # the mean of one task is that task
                    tasks.remove("mean")
                for task in tasks:
                    name = "mean downstream accuracy" if task == "mean" else f"{task} accuracy"
                    add(f"{name} after pruning", lambda m, t=task: (m.get("acc_after") or {}).get(t), "accuracy", False)
                truths = sorted({L for j in a + b for L in ((j["metrics"].get("importance_accuracy") or {}).get("by_truth") or {})}, key=int)
                for truth in truths:
                    for block in ("attention", "mlp"):
                        for measure, name in (("", "Spearman"), ("_wtau", "weighted tau")):
                            add(f"importance accuracy ({name}, {block}; truth on {truth}-token windows)",
                                lambda m, T=truth, k=f"{block}{measure}": (((m.get("importance_accuracy") or {}).get("by_truth") or {}).get(T) or {}).get(k),
                                "spearman", False)
                for block in ("attention", "mlp"):
                    arms = [{setting(j, "seed"): removed_sets(j["plan"])[block] for j in g if j["plan"]} for g in (a, b)]
                    row = overlap_verdict(label, block, self.x_key, ref, other, *arms)
                    if row is not None:
                        row["series"] = label
                        rows.append(row)
        return rows

    # --- markdown
    def markdown(self, verdict_lines: list[str]) -> str:
        failed = [j for j in self.jobs if j["metrics"].get("status") != "ok"]
        lines = [f"# Sweep report: {self.dir.name}", ""]
        varied = self.varied()
        lines.append(f"{len(self.jobs)} jobs: {len(self.ok)} ok, {len(failed)} failed. Varying: "
                     f"{', '.join(varied) or 'nothing'} (seeds are repeats of one condition).")
        if self.stale:
            lines.append(f"Left out: job folder(s) {', '.join(self.stale)}, from an earlier launch into this folder "
                         "(their settings are not a point of its multirun.yaml).")
        if self.ok:
            first = self.ok[0]["metrics"]["run"]
            fixed = {k: first.get(k) for k in KEYS if k not in [self.x_key] + self.series_keys + varied}
            lines.append("Fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items() if v is not None) + ".")
        lines += ["", "## Verdicts", "",
                  "Each line: mean ± sd over seeds per setting, the test (paired by seed where one seed is the same "
                  "calibration text in both arms: the arms differ in a setting that does not touch the data, or every job cuts its text from the same blocks under one token budget; else Welch), and the minimal detectable effect (MDE: 80 % power, "
                  "alpha 0.05, for this n and spread). 'No difference' is said only where the MDE is at most the effect "
                  "in question (PPL: 2 %, the seed note's lower prediction; task accuracy: 1 point; rank agreement: "
                  "0.05); otherwise 'cannot tell at this n'. No correction for the many lines; read a single p near "
                  "0.05 with care.", ""]
        lines += [v["text"] for v in verdict_lines] or ["- nothing to compare (a single condition)."]
        lines += ["", "## Perplexity", "", self._ppl_table(), ""]
        captions = {
            "ppl_after.png": "Perplexity after pruning (mean ± sd over seeds); dashed: before pruning.",
            "importance_accuracy.png": "Spearman correlation of each run's group scores with the true loss increase of removing that group alone (held-out text, the longest truth window; every truth length, top-quarter Spearman and weighted tau are in the verdicts and summary.csv).",
            "overlap.png": "Overlap (Jaccard) of the sets of removed groups, over pairs of different seeds only: off-diagonal between settings, diagonal within one setting (the noise floor).",
            "grad_by_layer.png": "Per-layer mean and std of |gradient| over the prunable weights, and the coefficient of variation of the per-batch mean across batches.",
            "kept_by_layer.png": "Fraction of attention groups and MLP channels kept in every layer.",
            "layer_importance.png": "Layer and block importance scores per layer (the criterion's own units), one line per setting.",
            "cost.png": "Time and peak memory per phase.",
        }
        for name, caption in captions.items():
            if name in self.figures:
                lines += [f"![{name}]({name})", "", caption, ""]
        if failed:
            lines += ["## Failed jobs", ""]
            lines += [f"- job {j['folder']} ({' '.join(j['overrides'])}): {j['metrics'].get('error', 'no error recorded')}" for j in failed]
            lines.append("")
        lines += ["Tables: `summary.csv`, `summary.json` (one row per job).", ""]
        return "\n".join(lines)

    def _ppl_table(self) -> str:
        lengths = self.eval_lengths()
        with_acc = any((j["metrics"].get("acc_after") or {}).get("mean") is not None for j in self.ok)
        header = f"| {' | '.join(self.series_keys + [self.x_key])} | n | " + " | ".join(f"PPL@{l} after" for l in lengths)
        tasks = sorted({t for j in self.ok for t in (j["metrics"].get("acc_after") or {}) if t != "mean"})
        header += f" | mean task accuracy after ({', '.join(tasks)}) |" if with_acc else " |"
        rows = [header, "|" + "---|" * (len(self.series_keys) + 2 + len(lengths) + int(with_acc))]
        for key, jobs in self.series().items():
            for x, group in self.by_x(jobs).items():
                cells = []
                for length in lengths:
                    m, sd, _ = mean_sd([j["metrics"]["ppl_after"].get(length) for j in group])
                    cells.append(f"{m:.4g} ± {sd:.2g}" if not math.isnan(sd) else f"{m:.4g}")
                if with_acc:
                    m, sd, _ = mean_sd([(j["metrics"].get("acc_after") or {}).get("mean") for j in group])
                    cells.append(f"{m:.3f} ± {sd:.2g}" if not math.isnan(sd) else f"{m:.3f}")
                shown = ["off" if v is None else str(v) for v in key]
                rows.append(f"| {' | '.join(shown)}{' | ' if key else ''}{x} | {len(group)} | " + " | ".join(cells) + " |")
        before = {l: mean_sd([j["metrics"]["ppl_before"].get(l) for j in self.ok])[0] for l in lengths}
        rows.append("")
        line = "Before pruning: " + ", ".join(f"PPL@{l} = {v:.4g}" for l, v in before.items())
        if with_acc:
            line += f", mean task accuracy = {mean_sd([(j['metrics'].get('acc_before') or {}).get('mean') for j in self.ok])[0]:.3f}"
        rows.append(line)
        return "\n".join(rows)

    def build(self, log_wandb: bool = True) -> Path:
        self.write_tables()
        self.plot_ppl()
        self.plot_accuracy()
        overlaps = self.plot_overlap()
        self.plot_layers()
        self.plot_cost()
        verdicts = self.verdicts()
        after_text, after = report_after.section(self, verdicts)  # recovery and the long-context probe
        verdicts += after
        (self.dir / "report.md").write_text(self.markdown([v for v in verdicts if v not in after]) + after_text)
        (self.dir / "verdicts.json").write_text(json.dumps(
            {"verdicts": [v["text"] for v in verdicts], "structured": verdicts, "overlaps": overlaps}, indent=2, default=str))
        if log_wandb:
            self.log_to_wandb()
        return self.dir / "report.md"

    def log_to_wandb(self) -> None:
        """Figures and the summary table go to a run of job type ``report`` in the sweep's group."""
        logger_cfg = self._logger_config()
        if not logger_cfg or "WandbTracker" not in str(logger_cfg.get("_target_", "")):
            return
        from prune.tracking import WandbTracker

        fields = {k: v for k, v in logger_cfg.items() if k in ("project", "entity", "mode", "tags", "group")}
        tracker = WandbTracker(**fields)
        ok = False
        try:
            tracker.start({"sweep_dir": str(self.dir), "jobs": len(self.jobs)}, f"report-{self.dir.name}", self.dir.name, "report", str(self.dir))
            tracker.log_images({f"report/{Path(n).stem}": p for n, p in self.figures.items()})
            tracker.log_table("summary", self.rows())
            ok = True
        finally:
            tracker.finish(ok)

    def _logger_config(self) -> dict | None:
        import yaml

        for job in self.jobs:
            path = self.dir / job["folder"] / ".hydra" / "config.yaml"
            if path.exists():
                return (yaml.safe_load(path.read_text()) or {}).get("logger")
        return None


def build_report(sweep_dir: str | Path, log_wandb: bool = True) -> Path:
    return Report(sweep_dir).build(log_wandb=log_wandb)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prune-report", description="Aggregate a sweep folder into summary tables, figures and report.md.")
    parser.add_argument("sweep_dir", help="a multirun folder (outputs/sweeps/<...>) whose job folders hold metrics.json")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the report to W&B")
    parser.add_argument("--archive", metavar="DEST", help="copy the compact per-job files (no weights) to DEST and "
                        "build the report there (how studies are committed: experiments/results/<name>)")
    args = parser.parse_args(argv)
    sweep = Path(args.sweep_dir)
    if not any(sweep.glob("*/metrics.json")):  # a refusal: one line, exit status 2 (as prune-run)
        print(f"prune-report: error: no */metrics.json under {sweep}: is it a sweep folder?", file=sys.stderr)
        raise SystemExit(2)
    if args.archive:
        from prune.findings import archive

        n = archive(sweep, Path(args.archive))
        print(f"archived {n} jobs to {args.archive}")
        sweep = Path(args.archive)
    path = build_report(sweep, log_wandb=not (args.no_wandb or args.archive))
    print(path.read_text())
    print(f"report written to {path}")


if __name__ == "__main__":
    main()
