"""What a sweep declared about itself before it ran: its primary endpoint and its reference arm.

The ``study`` block of the job config (schema: ``prune.schema.Study``; set in the experiment files)::

    study:
      reference: random            # the x value every other one is compared with (null: the first)
      primary:                     # the one comparison the study is built for
        metric: ppl_after          # ppl_after | ppl_recovered | acc_after (null: none declared)
        at: null                   # eval length (PPL) or task (accuracy); null: the longest length / mean
        where: {budget: tokens}    # the series: settings every job of it has (command-line names)
        arm: 512                   # the x value compared with the reference (null: the only other one)

Read from the first job's ``.hydra/config.yaml``. A study archived before the block existed has none
there; its ``multirun.yaml`` names the experiment, and the block is read from that experiment file in
the package instead, and the report says the endpoint was declared after the study ran.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "conf" / "experiment"


@dataclass
class Design:
    primary: dict | None = None
    reference: object = None
    source: str = "none"  # where the block came from, in words
    after_the_run: bool = False
    extra: dict = field(default_factory=dict)


def _block(config: dict | None) -> dict | None:
    study = (config or {}).get("study")
    return study if isinstance(study, dict) else None


def experiment_name(sweep_dir: Path) -> str | None:
    import yaml

    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None
    task = ((yaml.safe_load(path.read_text()) or {}).get("hydra") or {}).get("overrides", {}).get("task") or []
    return next((item.split("=", 1)[1] for item in task if item.startswith("experiment=")), None)


def read_design(sweep_dir: str | Path, jobs: list[dict]) -> Design:
    import yaml

    sweep_dir = Path(sweep_dir)
    for job in jobs:
        path = sweep_dir / job["folder"] / ".hydra" / "config.yaml"
        if path.exists():
            study = _block(yaml.safe_load(path.read_text()))
            if study is not None:
                return Design(study.get("primary"), study.get("reference"), "the jobs' config (study.primary)")
            break
    name = experiment_name(sweep_dir)
    if name and (EXPERIMENTS / f"{name}.yaml").exists():
        study = _block(yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text()))
        if study is not None:
            return Design(study.get("primary"), study.get("reference"),
                          f"prune/conf/experiment/{name}.yaml, declared after this study ran", after_the_run=True)
    return Design()
