"""A newcomer's install: the wheel alone (no checkout, no editable install) composes its configs and runs a job."""
from __future__ import annotations

import json
import math
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO

SOURCES = ("prune", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in")
FAST = ["testbed=tiny", "seq_len=64", "num_samples=8", "batch_size=2", "eval.lengths=[64,256]", "progress=false",
        "logger=none", "save_model=false"]


def _env() -> dict:
    """This environment without what would put the checkout's prune on the path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _run(args, cwd, env, timeout=600):
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert out.returncode == 0, f"{args}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel ``pip wheel .`` builds from this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # build from a copy: the build writes build/ and *.egg-info beside the sources
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    env = _env()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", src], tmp, env)
    return next((tmp / "dist").glob("prune_lab-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh venv holding only the built wheel; the test interpreter's packages serve as its dependencies."""
    tmp = tmp_path_factory.mktemp("install")
    env = _env()
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], tmp, env)
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp, env).stdout.strip())
    # torch, hydra, ... come from wherever this test runs (a venv is not the venv's "system"). Plain path
    # lines: the .pth files there (an editable install of this checkout) are not executed, and the new
    # venv's own site-packages stays first.
    parents = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if Path(p).is_dir() and Path(p) != purelib]
    (purelib / "zz_test_dependencies.pth").write_text("".join(f"{p}\n" for p in parents))
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], tmp, env)
    return venv, env


def test_the_wheel_ships_every_config_file(wheel):
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    conf = REPO / "prune" / "conf"
    expected = {f"prune/conf/{p.relative_to(conf).as_posix()}" for p in conf.rglob("*.yaml")}
    assert {"prune/conf/config.yaml", "prune/conf/hydra/job_logging/prune.yaml", "prune/conf/experiment/seq_len_sweep.yaml",
            "prune/conf/importance/base/taylor.yaml", "prune/conf/pruning/layer_importance/layer.yaml"} <= expected
    assert expected | {"prune/conf/__init__.py", "prune/schema.py"} <= names, sorted(expected - names)
    weights = REPO / "prune" / "testbed" / "weights"
    shipped = {f"prune/testbed/weights/{p.relative_to(weights).as_posix()}" for p in weights.rglob("*") if p.is_file()}
    assert any(n.endswith("/model.safetensors") for n in shipped) and shipped <= names, sorted(shipped - names)


@pytest.mark.slow
def test_prune_run_from_the_wheel_composes_and_runs_a_job(installed, tiny_testbed, tmp_path):
    venv, env = installed
    python, prune_run = venv / "bin" / "python", venv / "bin" / "prune-run"
    where = _run([python, "-c", "import prune; print(prune.__file__)"], tmp_path, env).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not the checkout's

    shown = _run([prune_run, "--cfg", "job", *FAST], tmp_path, env)
    assert "seq_len: 64" in shown.stdout and "importance:" in shown.stdout

    _run([prune_run, *FAST, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, env)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert set(metrics["ppl_after"]) == {"64", "256"}
    for length, ppl in metrics["ppl_after"].items():
        assert math.isfinite(ppl) and ppl > metrics["ppl_before"][length] > 1, (length, ppl)
    sources = OmegaConf.load(tmp_path / "run" / ".hydra" / "hydra.yaml").hydra.runtime.config_sources
    main = next(s for s in sources if s.provider == "main")
    assert (main.schema, main.path) == ("pkg", "prune.conf")  # the configs of the imported (installed) prune
