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
from omegaconf import DictConfig, OmegaConf

import prune.schema  # noqa: F401  (puts the config schemas into Hydra's ConfigStore before composing)

log = logging.getLogger("prune")
CONFIG_PATH = "conf"  # prune/conf, shipped inside the package (relative to this module)


def safe_dirname(overrides: str) -> str:
    """A sweep point's folder name from its overrides: one path component (a path value such as
    ``data.file=/a/b.txt`` must not nest folders), at most 200 characters (long ones keep a hash)."""
    import hashlib

    name = overrides.replace("/", "_").replace("\\", "_") or "default"
    if len(name) > 200:
        name = f"{name[:150]}-{hashlib.sha256(overrides.encode()).hexdigest()[:12]}"
    return name


OmegaConf.register_new_resolver("safe_dirname", safe_dirname, replace=True)


def already_finished(out_dir: Path, cfg: DictConfig) -> dict | None:
    """The metrics of a job that already ran to completion in ``out_dir`` with this exact config."""
    from prune.job import config_digest
    from prune.report.jobs import read_metrics

    metrics = read_metrics(out_dir)
    if not metrics or metrics.get("status") != "ok":
        return None
    try:
        digest = config_digest(cfg)
    except Exception:  # noqa: BLE001 - a malformed setting: not finished; the job's checks say why
        return None
    return metrics if metrics.get("config_digest") == digest else None


def discard_refused_folder(out_dir: Path) -> bool:
    """Remove a single run's folder that holds nothing but Hydra's files and a refusal (nothing was computed)."""
    import shutil

    from prune.report.jobs import read_metrics

    if not out_dir.is_dir() or not {p.name for p in out_dir.iterdir()} <= {".hydra", "run.log", "metrics.json"}:
        return False
    metrics = read_metrics(out_dir)
    if metrics is not None and metrics.get("status") != "refused":
        return False
    shutil.rmtree(out_dir, ignore_errors=True)
    return True


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def app(cfg: DictConfig) -> float | None:
    """One job. Refusal: one line, exit 2 (a multirun records it and goes on). Bug: traceback, exit 1."""
    from prune.errors import first_line
    from prune.job import USER_ERRORS, print_job_summary, run_job

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    group = Path(hydra_cfg.sweep.dir).name if multirun else None
    try:
        finished = None if cfg.get("force") is True else already_finished(out_dir, cfg)
        if finished is not None:
            log.info("skipping %s: it already finished (status ok) with the same config; force=true re-runs it", out_dir)
            return objective_value(finished, cfg.objective)
        metrics = run_job(cfg, out_dir, group=group)
        print_job_summary(metrics)
    except USER_ERRORS as exc:
        log.error("error: %s", first_line(exc))
        if multirun:
            return None  # recorded in metrics.json; the sweep goes on and exits non-zero at its end
        discard_refused_folder(out_dir)
        sys.exit(2)
    except KeyboardInterrupt:
        log.error("interrupted: %s says status interrupted", out_dir / "metrics.json")
        raise  # a multirun stops too; main() exits 130
    except Exception:
        log.exception("job failed: a bug (traceback also in %s and %s)", out_dir / "run.log", out_dir / "metrics.json")
        if multirun:
            return None
        sys.exit(1)
    return objective_value(metrics, cfg.objective)


def objective_value(metrics: dict, objective: str) -> float | None:
    """The job's result for a sweeper: ``objective`` (``ppl_after``, ``ppl_after.512``, ``acc_after.boolq``...)
    looked up in ``metrics``; a per-length or per-task metric without an entry gives its first entry."""
    head, _, entry = str(objective).partition(".")
    value = metrics.get(head)
    if isinstance(value, dict):
        value = value.get(entry) if entry else next(iter(value.values()), None)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        log.warning("objective=%s: metrics.json has no number there; the sweeper gets None", objective)
        return None
    return float(value)


def main(argv: list[str] | None = None) -> int:
    """``prune-run``: the Hydra app, with every way out turned into an exit status.

    0 ok; 2 a refused setting or input (one line on stderr: Hydra's own refusals such as an unknown key
    or option are condensed to one line too); 1 a bug (traceback), or a multirun in which a job did not
    finish ok (after its report is built); 130 interrupted (Ctrl-C).
    """
    import os

    from prune.report import callbacks
    from prune.errors import PruneLabError, first_line

    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    if argv is not None:
        sys.argv = [saved_argv[0] if saved_argv else "prune-run", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own multi-line report
    logging.raiseExceptions = False  # a log line that cannot be written (a full disk) must not print a traceback
    callbacks.SWEEP_OUTCOME.clear()
    try:
        app()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        print("prune-run: interrupted", file=sys.stderr)
        return 130
    except PruneLabError as exc:
        print(f"prune-run: error: {first_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - sorted below: Hydra refusals, output folder, or a bug
        line = _hydra_refusal(exc)
        if line is None:
            import traceback

            traceback.print_exc()
            return 1
        print(f"prune-run: error: {line}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
    outcome = dict(callbacks.SWEEP_OUTCOME)
    if outcome.get("not_ok"):
        print(f"prune-run: {outcome['not_ok']} of {outcome['jobs']} jobs did not finish ok ({outcome['detail']}); "
              f"see {outcome['report']}", file=sys.stderr)
        return 1
    return 0


def _hydra_refusal(exc: BaseException) -> str | None:
    """One line for an error Hydra raises before the job starts (unknown key / option, bad override,
    unwritable output folder); None for anything else (a bug)."""
    from hydra.errors import HydraException, InstantiationException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from prune.errors import first_line
    from prune.preflight import suggest

    if isinstance(exc, OSError) and not isinstance(exc, (HydraException, OmegaConfBaseException)):
        where = exc.filename or "the output folder"
        return (f"cannot write {where} ({exc.strerror or first_line(exc)}); choose a writable output folder "
                "(hydra.run.dir=<folder>, hydra.sweep.dir=<folder> or PRUNE_LAB_OUTPUTS)")
    if isinstance(exc, InstantiationException) or not isinstance(exc, (HydraException, OmegaConfBaseException)):
        return None
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the override '{exc.override}': {first_line(exc)}"
    cause = exc.__cause__
    text = str(exc).split("Config search path")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    if not lines:
        return type(exc).__name__
    text = lines[0].rstrip(".")
    options = next((i for i, line in enumerate(lines) if line.startswith("Available options")), None)
    if options is not None:
        text += f"; {lines[options]} {', '.join(lines[options + 1:])}"
    elif cause is not None and first_line(cause) not in text:
        text += f": {first_line(cause)}"
    key = getattr(cause, "full_key", None)
    if key and "Invalid type assigned" in str(cause) and "is not a subclass of" in str(cause):  # a value for a group
        text += f"; {key} is a config group: choose its option with {str(key).replace('.', '/')}=<option>"
    elif key and isinstance(cause, (ConfigKeyError, ConfigAttributeError)):  # an unknown key, e.g. "Key 'seqlen' not in 'Config'"
        text += f"; {suggest(str(key), getattr(cause, 'object_type', None))}"
    return text


if __name__ == "__main__":
    sys.exit(main())
