"""``prune-report <sweep folder>`` (``python -m prune.report``): build a sweep's report by hand, or archive it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prune.report.jobs import has_jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prune-report", description="Aggregate a sweep folder into summary tables, figures and report.md.")
    parser.add_argument("sweep_dir", help="a multirun folder (outputs/sweeps/<...>) whose job folders hold metrics.json")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the report to W&B")
    parser.add_argument("--archive", metavar="DEST", help="copy the compact per-job files (no weights) to DEST and "
                        "build the report there (how studies are committed: experiments/results/<name>)")
    parser.add_argument("--plotlyjs", metavar="PATH", help="dashboard.html loads plotly.js from PATH (relative to the "
                        "sweep folder, written there if absent) instead of embedding it; with --archive, or where the folder's "
                        "parent holds plotly.min.js: ../plotly.min.js, one copy for all committed studies")
    args = parser.parse_args(argv)
    sweep = Path(args.sweep_dir)
    if not has_jobs(sweep):  # a refusal: one line, exit status 2 (as prune-run)
        print(f"prune-report: error: no */metrics.json under {sweep}: is it a sweep folder?", file=sys.stderr)
        raise SystemExit(2)
    if args.archive:
        from prune.report.archive import archive

        n = archive(sweep, Path(args.archive))
        print(f"archived {n} jobs to {args.archive}")
        sweep = Path(args.archive)
    from prune.report.build import build_report

    shared = args.archive or (sweep.parent / "plotly.min.js").exists()  # a committed study rebuilt in place too
    plotlyjs = args.plotlyjs or ("../plotly.min.js" if shared else True)
    path = build_report(sweep, log_wandb=not (args.no_wandb or args.archive), plotlyjs=plotlyjs)
    print(path.read_text())
    print(f"report written to {path}")


if __name__ == "__main__":
    main()
