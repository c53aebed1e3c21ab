"""prune.files: a failed write leaves the old file whole and no temporary file behind."""
import json

import pytest

from prune.files import atomic_write, write_text


def test_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_text(path, json.dumps({"status": "running"}))
    write_text(path, json.dumps({"status": "ok"}))
    assert json.loads(path.read_text()) == {"status": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_write_that_fails_halfway_keeps_the_old_content(tmp_path):
    path = tmp_path / "metrics.json"
    write_text(path, "old")

    def half(tmp):
        tmp.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
