"""Writing a file so that a reader (or a job killed halfway) sees the old content or the new, never half."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` fills a temporary file beside ``path`` (same folder, so the rename stays on one file
    system); ``os.replace`` then swaps it in. The temporary name carries the process id: two processes
    writing the same path never share one."""
    from prune.errors import disk_full

    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except Exception as exc:
        full = disk_full(exc, path)  # a full disk is named by the file it was writing, in one line
        if full is None:
            raise
        raise full from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str, encoding: str | None = None) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig`` through a temporary file (its format named, since the temporary name has no suffix)."""
    path = Path(path)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
