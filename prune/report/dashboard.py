"""``prune-dashboard <sweep folder>``: the sweep's offline dashboard (``dashboard.html``, see
``prune.report.html_dashboard``) and its W&B workspace as code (the ``wandb-workspaces`` library).

The panels are built from what the sweep's jobs wrote (``metrics.json``: eval lengths, tasks, recovery,
importance accuracy), with the metric keys the jobs log to W&B (``prune.job.tracked``, ``prune.recovery``,
``prune.report.tracking``): per-layer |grad| mean and std and kept fractions against ``layer``; PPL after
pruning (one-shot and recovered) and task / probe accuracy; importance accuracy; the recovery loss; the
report run's images and summary table; and a runs table (pinned columns) with time and peak memory. The
runs are filtered to the sweep's W&B group and grouped by ``seq_len`` and every other swept key.

Offline (the default) it writes the workspace definition to ``<sweep>/dashboard.json`` and says how to
publish it after ``wandb sync``; ``--online`` saves the workspace to W&B and prints its URL.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# metrics.json "run" keys -> the W&B config key they come from
CONFIG_KEYS = {"importance": "importance.name", "pruning": "pruning.name", "ratio": "pruning.ratio",
               "model": "model.name", "data": "data.name", "num_samples": "num_samples"}
INSTALL_HINT = "prune-dashboard needs wandb-workspaces: pip install -e .[dev] (or pip install wandb-workspaces)"


def _require():
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        raise SystemExit(f"prune-dashboard: {INSTALL_HINT}") from None
    return ws, wr


def _bounds(report) -> dict[str, str]:
    """Probe task -> 'ceiling' / 'floor' where the dense model sits there (exact retrieval; panel titles say so)."""
    from prune.report.probe_items import bounds

    return {task: f["exact"] for task, f in bounds(report).items() if "exact" in f}


def sweep_facts(sweep_dir: Path) -> dict:
    """What the panels need to know about a sweep folder: its group, swept keys, lengths, tasks, extras."""
    from prune.report.conditions import Sweep
    from prune.report.jobs import logger_config

    report = Sweep(sweep_dir)
    ok = [j["metrics"] for j in report.ok]
    if not ok:
        raise SystemExit(f"prune-dashboard: no finished job (status ok) under {sweep_dir}")
    logger = logger_config(sweep_dir, report.jobs) or {}
    keys = [report.x_key] + [k for k in report.series_keys if k != report.x_key]
    lengths = sorted({L for m in ok for L in m.get("ppl_after", {})}, key=int)
    tasks = sorted({t for m in ok for t in (m.get("acc_after") or {})})
    return {
        "group": logger.get("group") or Path(sweep_dir).resolve().name,
        "project": logger.get("project", "prune-lab"), "entity": logger.get("entity"),
        "groupby": [CONFIG_KEYS.get(k, k) for k in keys],
        "lengths": lengths, "tasks": tasks,
        "recovered": any(m.get("ppl_recovered") for m in ok),
        "control": any(m.get("ppl_dense_recovered") for m in ok),
        "bounds": _bounds(report),
        "importance_accuracy": any(m.get("importance_accuracy") for m in ok),
        "phases": sorted({p for m in ok for p in (m.get("timings") or {})}),
        "memory_phases": sorted({p for m in ok for p in (m.get("peak_memory_mb") or {})}),
        "report_images": sorted(f"report/{Path(p).stem}" for p in report_figures(Path(sweep_dir))),
    }


def report_figures(sweep_dir: Path) -> list[str]:
    return [p.name for p in sorted(sweep_dir.glob("*.png"))]


def sections(f: dict) -> list[tuple[str, list[tuple[str, dict]]]]:
    """The workspace layout as plain data: (section, [(panel type, fields)])."""
    per_layer = lambda title, ys: ("line", {"title": title, "x": "layer", "y": ys})  # noqa: E731
    out = [
        ("Per-layer |grad|", [per_layer("mean |grad| per layer", ["by_layer/grad_abs_mean"]),
                              per_layer("std of |grad| per layer", ["by_layer/grad_abs_std"]),
                              per_layer("attention / MLP mean |grad|", ["by_layer/attention_grad_abs_mean", "by_layer/mlp_grad_abs_mean"])]),
        ("Kept per layer", [per_layer("kept fraction per layer", ["by_layer/attention_kept_fraction", "by_layer/mlp_kept_fraction"])]),
    ]
    control = f.get("control")
    ppl = [("bar", {"title": f"PPL@{L} after pruning" + (" (one-shot / recovered" + (" / dense recovered)" if control else ")")
                                                         if f["recovered"] else ""),
                    "metrics": [f"ppl_after/{L}"] + ([f"ppl_recovered/{L}"] if f["recovered"] else [])
                    + ([f"ppl_dense_recovered/{L}"] if control else [])}) for L in f["lengths"]]
    if control:  # the gap recovery does not close: pruned-recovered PPL over the dense-recovered control, minus 1
        ppl += [("bar", {"title": f"gap left after recovery @{L} (vs the dense model recovered the same way)",
                         "metrics": [f"recovery_gap/{L}"]}) for L in f["lengths"]]
    ppl += [("bar", {"title": f"PPL@{L} before pruning", "metrics": [f"ppl_before/{L}"]}) for L in f["lengths"]]
    out.append(("Perplexity", ppl))
    if f["tasks"]:
        stages = ["acc_after"] + (["acc_recovered"] if f["recovered"] else [])
        out.append(("Task and long-context probe accuracy",
                    [("bar", {"title": f"{t} accuracy" + (f" (dense model at {f['bounds'][t]}: cannot show a loss)"
                                                          if t in f.get("bounds", {}) else ""),
                              "metrics": [f"{s}/{t}" for s in stages]}) for t in f["tasks"]]))
    if f["importance_accuracy"]:
        out.append(("Importance accuracy", [("bar", {"title": "Spearman with the true removal loss",
                                                     "metrics": ["importance_accuracy/attention", "importance_accuracy/mlp"]})]))
    if f["recovered"]:
        out.append(("Recovery", [("line", {"title": "recovery loss (train split)", "x": "recovery_step", "y": ["recovery/loss"]})]))
    report = [("media", {"title": "sweep report figures", "media_keys": f["report_images"]})] if f["report_images"] else []
    report.append(("table", {"title": "sweep summary (report run)", "table_name": "summary"}))
    out.append(("Sweep report", report))
    return out


def runs_table(f: dict) -> list[str]:
    """Pinned runs-table columns: swept settings, then time and peak memory per phase."""
    return ([f"config:{k}" for k in f["groupby"]] + [f"summary:timings/{p}" for p in f["phases"]]
            + [f"summary:peak_memory_mb/{p}" for p in f["memory_phases"]])


def build_workspace(f: dict, entity: str | None = None, name: str | None = None):
    ws, wr = _require()
    panels = {
        "line": lambda d: wr.LinePlot(title=d["title"], x=d["x"], y=d["y"], groupby_aggfunc="mean", groupby_rangefunc="stddev"),
        "bar": lambda d: wr.BarPlot(title=d["title"], metrics=d["metrics"], groupby_aggfunc="mean", groupby_rangefunc="stddev"),
        "media": lambda d: wr.MediaBrowser(title=d["title"], media_keys=d["media_keys"]),
        "table": lambda d: wr.WeavePanelSummaryTable(table_name=d["table_name"]),
    }
    return ws.Workspace(
        entity=entity or f.get("entity") or "your-entity", project=f["project"], name=name or f"prune-lab: {f['group']}",
        sections=[ws.Section(name=title, panels=[panels[kind](d) for kind, d in items], is_open=True)
                  for title, items in sections(f)],
        runset_settings=ws.RunsetSettings(filters=f"Metric('Group') = '{f['group']}'",
                                          groupby=[ws.Config(k) for k in f["groupby"]], pinned_columns=runs_table(f)),
    )


def panel_keys(f: dict) -> set[str]:
    """Every metric key a panel or the runs table reads (what must have been logged)."""
    keys = set()
    for _, items in sections(f):
        for kind, d in items:
            keys.update(d.get("y", []) + d.get("metrics", []) + d.get("media_keys", []))
            if d.get("x"):
                keys.add(d["x"])
            if d.get("table_name"):
                keys.add(d["table_name"])
    keys.update(c.split(":", 1)[1] for c in runs_table(f) if c.startswith("summary:"))
    return keys


def write_definition(sweep_dir: Path, f: dict, workspace) -> Path:
    view = None
    try:
        view = workspace._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)
    except Exception as exc:  # noqa: BLE001 - the plain layout below is the definition that matters
        view = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    data = {"facts": f, "sections": [{"name": t, "panels": [{"type": k, **d} for k, d in items]} for t, items in sections(f)],
            "runs_table": runs_table(f), "panel_keys": sorted(panel_keys(f)), "wandb_view": view}
    path = sweep_dir / "dashboard.json"
    from prune.files import write_text

    write_text(path, json.dumps(data, indent=2, default=str))
    return path


def write_offline(sweep: Path, plotlyjs: str | None = None) -> Path:
    """``<sweep>/dashboard.html`` with the verdicts of its ``verdicts.json`` (the last report); with ``plotlyjs``,
    a path relative to the sweep folder, plotly.js is read from there (written once) instead of embedded."""
    from prune.report.conditions import Sweep
    from prune.report.html_dashboard import write_dashboard

    verdicts_path = sweep / "verdicts.json"
    verdicts = json.loads(verdicts_path.read_text()).get("structured") if verdicts_path.exists() else None
    return write_dashboard(Sweep(sweep), verdicts, plotlyjs or True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prune-dashboard", description=(
        "Write a sweep's offline dashboard (dashboard.html) and its W&B workspace (wandb-workspaces)."))
    parser.add_argument("sweep_dir", help="a multirun folder whose job folders hold metrics.json")
    parser.add_argument("--online", action="store_true", help="save the workspace to W&B (after `wandb sync`) and print its URL")
    parser.add_argument("--entity", help="W&B entity (default: logger.entity, else your default entity)")
    parser.add_argument("--group", help="W&B group of the runs (default: the sweep folder's name)")
    parser.add_argument("--name", help="workspace name")
    parser.add_argument("--plotlyjs", metavar="PATH", help=(
        "load plotly.js from PATH (relative to the sweep folder; written there if absent) instead of embedding "
        "it, e.g. ../plotly.min.js for folders that share one copy"))
    args = parser.parse_args(argv)
    sweep = Path(args.sweep_dir)
    from prune.report.jobs import has_jobs

    if not has_jobs(sweep):
        raise SystemExit(f"prune-dashboard: no */metrics.json under {sweep}: is it a sweep folder?")
    online = args.online or os.environ.get("WANDB_MODE") == "online"
    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        if online:
            raise SystemExit(f"prune-dashboard: {INSTALL_HINT}") from None
        print(f"offline dashboard written to {write_offline(sweep, args.plotlyjs)} (open it in any browser)")
        print(f"no W&B workspace definition: {INSTALL_HINT}", file=sys.stderr)
        return
    facts = sweep_facts(sweep)
    if args.group:
        facts["group"] = args.group
    entity, wandb_api = args.entity, None
    if online:  # before anything is written: the key, then every run of the sweep on the server
        from prune.report.dashboard_online import DashboardError, api, check_credentials, check_synced

        try:
            check_credentials()
            wandb_api = api()
            entity = entity or facts.get("entity") or wandb_api.default_entity
            check_synced(wandb_api, entity, facts["project"], sweep)
        except DashboardError as exc:
            print(f"prune-dashboard: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    print(f"offline dashboard written to {write_offline(sweep, args.plotlyjs)} (open it in any browser)")
    workspace = build_workspace(facts, entity, args.name)
    path = write_definition(sweep, facts, workspace)
    print(f"workspace definition written to {path} ({sum(len(i) for _, i in sections(facts))} panels)")
    if online:
        from prune.report.dashboard_online import publish

        print(f"workspace saved: {publish(workspace, wandb_api)} (the view named '{workspace.name}', updated in place)")
    else:
        runs = f"{sweep}/*/wandb/offline-run-* {sweep}/wandb/offline-run-*"
        print(f"to publish: wandb sync {runs}\n            prune-dashboard {sweep} --online [--entity <entity>]", file=sys.stderr)


if __name__ == "__main__":
    main()
