"""``prune-run``: the Hydra entry point of one job (``python -m prune.run`` does the same).

Examples::

    prune-run                                   # testbed model + data, Taylor 2nd order, seq_len 512
    prune-run seq_len=128 importance=taylor_1st batch_size=2
    prune-run -m seq_len=128,256,512,1024,2048  # one job per length
    prune-run --cfg job                         # print the resolved config
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger("prune")
CONFIG_PATH = str(Path(__file__).resolve().parent.parent / "conf")


def _print_summary(metrics: dict) -> None:
    from prune.job import summary_table

    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but a summary must never fail a finished job
        print(summary_table(metrics))
        return
    console = Console()
    table = Table(title=f"prune-lab: {metrics['run']['name']}")
    table.add_column("eval length", justify="right")
    table.add_column("PPL before", justify="right")
    table.add_column("PPL after", justify="right")
    table.add_column("change", justify="right")
    for length, before in metrics["ppl_before"].items():
        after = metrics["ppl_after"][length]
        table.add_row(length, f"{before:.3f}", f"{after:.3f}", f"{100 * (after / before - 1):+.1f}%")
    console.print(table)
    if metrics.get("acc_after"):
        acc = Table(title="downstream accuracy")
        for column in ("task", "before", "after", "change (points)"):
            acc.add_column(column, justify="right")
        for task, after in metrics["acc_after"].items():
            before = (metrics.get("acc_before") or {}).get(task)
            acc.add_row(task, "-" if before is None else f"{before:.3f}", f"{after:.3f}",
                        "-" if before is None else f"{100 * (after - before):+.1f}")
        console.print(acc)
    console.print(
        f"params {metrics['params_before']:,} -> {metrics['params_after']:,} "
        f"(prunable removed {100 * metrics['prunable_ratio_removed']:.1f}%, "
        f"whole model {100 * metrics['total_ratio_removed']:.1f}%)"
    )
    console.print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in metrics["timings"].items()))
    console.print("peak memory (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in metrics["peak_memory_mb"].items()))
    console.print(f"outputs: {metrics['output_dir']}")


def already_finished(out_dir: Path, cfg: DictConfig) -> dict | None:
    """The metrics of a job that already ran to completion in ``out_dir`` with this exact config."""
    import json

    from prune.job import config_digest

    path = out_dir / "metrics.json"
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if metrics.get("status") == "ok" and metrics.get("config_digest") == config_digest(cfg):
        return metrics
    return None


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from prune.job import USER_ERRORS, run_job

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    group = Path(hydra_cfg.sweep.dir).name if multirun else None
    try:
        finished = None if cfg.force else already_finished(out_dir, cfg)
        if finished is not None:
            log.info("skipping %s: it already finished (status ok) with the same config; force=true re-runs it", out_dir)
            return next(iter(finished.get("ppl_after", {}).values()), None)
        metrics = run_job(cfg, out_dir, group=group)
        _print_summary(metrics)
    except USER_ERRORS as exc:
        log.error("error: %s", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        if multirun:
            return None  # recorded in metrics.json; the sweep goes on
        sys.exit(2)
    except Exception:
        log.exception("job failed (recorded in %s)", out_dir / "metrics.json")
        if multirun:
            return None
        raise
    return next(iter(metrics["ppl_after"].values()), None)


if __name__ == "__main__":
    main()
