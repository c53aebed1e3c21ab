"""The trained default testbed shipped with the package, so that a first run does not wait minutes on training.

``prune/testbed/weights/<model folder name>/`` holds what ``prune.testbed.build.ensure_model`` would write
for the default spec (``config.json``, ``generation_config.json``, ``model.safetensors``, ``testbed.json``)
and ``sha256.json``, the digest of each file. The folder name is the hash of every setting that shapes
the model (``model_dir``), so a changed setting or ``BUILD_VERSION`` finds no shipped copy and trains as
before; a copy whose digest does not match is never used (training is the fallback). Training the same
spec again gives the same bytes (``tests/test_testbed.py``, slow).

Refresh after a change to the build (as the maintainer)::

    python -m prune.testbed.reship      # trains the default testbed in a temporary cache, ships it
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from prune.files import file_sha256

log = logging.getLogger(__name__)
WEIGHTS = Path(__file__).resolve().parent / "weights"
FILES = ("config.json", "generation_config.json", "model.safetensors", "testbed.json")
DIGESTS = "sha256.json"


sha256 = file_sha256


def shipped_folder(name: str, root: Path | None = None) -> Path | None:
    """The shipped copy of the model folder named ``name`` (``model_dir(spec, ...).name``), if there is one."""
    folder = (root or WEIGHTS) / name
    return folder if (folder / DIGESTS).exists() else None


def install(name: str, dest: Path, root: Path | None = None) -> bool:
    """Copy the shipped model files into ``dest`` if every file matches its recorded digest; False otherwise."""
    folder = shipped_folder(name, root)
    if folder is None:
        return False
    digests = json.loads((folder / DIGESTS).read_text())
    bad = [f for f in FILES if not (folder / f).exists() or sha256(folder / f) != digests.get(f)]
    if bad:
        log.warning("the shipped testbed weights in %s do not match their digests (%s): training instead", folder, ", ".join(bad))
        return False
    dest.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copy2(folder / f, dest / f)
    log.info("testbed model: the shipped trained weights (sha256 %s...), no training needed", digests["model.safetensors"][:12])
    return True


def ship(model_folder: Path, root: Path | None = None) -> Path:
    """Copy a trained model folder into the package with the digests of its files."""
    out = (root or WEIGHTS) / model_folder.name
    out.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copy2(model_folder / f, out / f)
    (out / DIGESTS).write_text(json.dumps({f: sha256(out / f) for f in FILES}, indent=2) + "\n")
    return out
