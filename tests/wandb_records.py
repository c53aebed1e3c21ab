"""Read back what an offline W&B run logged (``wandb leet inspect --json``: its record stream)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def wandb_bin() -> str:
    beside = Path(sys.executable).with_name("wandb")
    found = str(beside) if beside.exists() else shutil.which("wandb")
    if found is None:
        pytest.skip("the wandb command is not on PATH")
    return found


def records(run_dir: Path) -> list[dict]:
    printed = subprocess.run([wandb_bin(), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    return [json.loads(line) for line in printed.stdout.splitlines()]


def logged_config(run_dir: Path) -> dict:
    config = {}
    for record in records(run_dir):
        if record.get("type") == "run":
            config.update((record["run"].get("config") or {}).get("update") or {})
    return config


def logged_summary(run_dir: Path) -> dict:
    """Every key the run logged (history rows and summary updates), with its last value."""
    values = {}
    for record in records(run_dir):
        if record.get("type") == "summary":
            values.update(record["summary"].get("update") or {})
        elif record.get("type") == "history":
            values.update(record["history"]["item"])
    # leet flattens a logged object (an image, a table) into "key._type", "key.path", ...: keep "key" too
    return {**values, **{k.split(".", 1)[0]: v for k, v in values.items() if "." in k and not k.startswith("_")}}
