"""The config: where its files live inside the package, and composing it without the command line."""
from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent / "conf"  # package data: installed with prune, not beside it


def compose(*overrides: str, return_hydra_config: bool = False):
    """The job config as ``prune-run <overrides>`` would compose it (for scripts and tests)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
