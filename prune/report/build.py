"""The report of a sweep folder: tables, figures, verdicts, ``report.md``, ``dashboard.html`` and its W&B run."""
from __future__ import annotations

import json
from pathlib import Path

from prune.files import write_text
from prune.report import after, detection, figures, probe_items
from prune.report.comparisons import verdicts as comparisons
from prune.report.conditions import Sweep
from prune.report.html_dashboard import write_dashboard
from prune.report.jobs import logger_config
from prune.report.markdown import markdown
from prune.report.study import finalize
from prune.report.table import summary_rows, write_tables


class Report(Sweep):
    def build(self, log_wandb: bool = True, plotlyjs: bool | str = True) -> Path:
        write_tables(self.dir, self.jobs)
        figures.plot_ppl(self)
        figures.plot_accuracy(self)
        overlaps = figures.plot_overlap(self)
        figures.plot_layers(self)
        figures.plot_cost(self)
        rows = comparisons(self) + after.verdicts(self) + probe_items.verdicts(self)  # after: the long-context probe
        probe_items.mark_bounds(self, rows)  # probe cells where the dense model cannot move: never "identical"
        study = finalize(self, rows)  # primary endpoint, Holm, wording, negative control
        rows.sort(key=lambda r: r["role"] != "primary")  # the primary verdict first
        # every file through a temporary one: a sweep killed while reporting leaves the old report or the new
        write_text(self.dir / "report.md", markdown(self, rows, study) + after.section(self, rows)
                   + detection.section(self))
        write_text(self.dir / "verdicts.json", json.dumps(
            {"failed": study["failed"], "study": study, "verdicts": [v["text"] for v in rows], "structured": rows,
             "overlaps": overlaps, "detection": detection.detection_rows(detection.records(self)[0])}, indent=2, default=str))
        write_dashboard(self, rows, plotlyjs)  # dashboard.html: the per-layer panels and these verdicts, offline
        if log_wandb:
            self.log_to_wandb()
        return self.dir / "report.md"

    def log_to_wandb(self) -> None:
        """Figures and the summary table go to a run of job type ``report`` in the sweep's group."""
        logger_cfg = logger_config(self.dir, self.jobs)
        if not logger_cfg or "WandbTracker" not in str(logger_cfg.get("_target_", "")):
            return
        from prune.report.tracking import WandbTracker

        fields = {k: v for k, v in logger_cfg.items() if k in ("project", "entity", "mode", "tags", "group")}
        tracker = WandbTracker(**fields)
        ok = False
        try:
            tracker.start({"sweep_dir": str(self.dir), "jobs": len(self.jobs)}, f"report-{self.dir.name}", self.dir.name, "report", str(self.dir))
            tracker.log_images({f"report/{Path(n).stem}": p for n, p in self.figures.items()})
            tracker.log_table("summary", summary_rows(self.jobs))
            ok = True
        finally:
            tracker.finish(ok)


def build_report(sweep_dir: str | Path, log_wandb: bool = True, plotlyjs: bool | str = True) -> Path:
    return Report(sweep_dir).build(log_wandb=log_wandb, plotlyjs=plotlyjs)
