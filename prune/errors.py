"""The refusal boundary: every failure prune-lab anticipates is a ``PruneLabError``.

A ``PruneLabError`` is a refusal: the entry point prints its message as one line on stderr and exits
with status 2, before any work where the check needs no model. Anything else that escapes a job is a bug:
exit status 1, the traceback in ``run.log`` and ``metrics.json``.

The subclasses keep ``ValueError`` as a second base so that callers which caught ``ValueError`` before
still do; the entry point no longer treats a bare ``ValueError`` as a refusal.
"""
from __future__ import annotations


class PruneLabError(Exception):
    """A setting or input prune-lab refuses; the message is one line naming the setting and the fix."""


class ConfigError(PruneLabError, ValueError):
    """A setting that cannot work; the message says which and how to fix it."""


class DataError(PruneLabError, ValueError):
    """A data set that cannot be used; the message is one line saying what to do."""


class PruningError(PruneLabError, ValueError):
    """A pruning target that cannot be met under the given constraints, or scores of the wrong kind."""


class UnsupportedModelError(PruneLabError, ValueError):
    """The model is not a LLaMA-architecture causal LM that prune-lab can prune."""


class DownstreamError(PruneLabError, ValueError):
    """A downstream-evaluation setting that cannot work; the one-line message says why."""


class ModelFileError(PruneLabError, ValueError):
    """A model folder whose files cannot serve: missing, unreadable, truncated, corrupt or inconsistent.

    The message names the file and what is wrong (``prune.model_files``)."""


class RecoveryError(PruneLabError, ValueError):
    """A recovery setting that cannot work (``prune.recovery``); the one-line message says why."""


class ProbeError(PruneLabError, ValueError):
    """A long-context probe setting that cannot work (``prune.eval.probe``); the one-line message says why."""


class DiskFullError(PruneLabError, OSError):
    """No room to write an output (no space left, quota, file size limit); the line names the path."""


DISK_FULL_ERRNOS = (28, 27, 122)  # ENOSPC, EFBIG, EDQUOT
DISK_FULL_WORDS = ("No space left", "File too large", "Disk quota exceeded", "file write failed", "os error 28", "os error 27")


def disk_full(exc: BaseException, path) -> DiskFullError | None:
    """``exc`` as a ``DiskFullError`` naming ``path`` when it says the disk (or a size limit) is full, else None.
    Libraries word it their own way: ``OSError`` errno, torch's "file write failed", safetensors' "os error 28"."""
    if isinstance(exc, DiskFullError):
        return exc
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS or any(w in str(exc) for w in DISK_FULL_WORDS):
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
        return DiskFullError(f"cannot write {path}: {reason}; free space there or choose another output folder "
                             "(nothing half-written is left: rerun to resume)")
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].strip() if text else type(exc).__name__


def unwrap(exc: BaseException) -> BaseException:
    """The error behind Hydra's ``InstantiationException`` (which only says 'Error in call to target')."""
    from hydra.errors import InstantiationException

    seen = set()
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


def instantiate_checked(node, what: str):
    """``hydra.utils.instantiate`` whose refusals come out as themselves, and whose bad keys are refusals.

    A ``PruneLabError`` raised by the target's constructor is re-raised as is; an unexpected or missing
    keyword (a typo such as ``+importance.fishr=...``) becomes a ``ConfigError`` naming ``what``.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except InstantiationException as exc:
        cause = unwrap(exc)
        if isinstance(cause, PruneLabError):
            raise cause from None
        if isinstance(cause, TypeError) and "argument" in str(cause):
            raise ConfigError(f"{what}: {first_line(cause)}; remove the setting or check its spelling") from cause
        if cause is exc:
            raise ConfigError(f"{what}: {first_line(exc)}") from exc
        raise cause
