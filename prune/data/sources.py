"""Where calibration and evaluation text comes from.

Every source returns raw documents for two splits: ``train`` (calibration text, always) and ``test``
(evaluation text, always). They are instantiated by Hydra from ``prune/conf/data/*.yaml``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prune.errors import DataError  # re-exported: defined with the other refusals

Split = Literal["train", "test"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass
class HubSource:
    """A data set read with ``datasets.load_dataset`` (hub id, local folder or a builder such as ``text``).

    ``splits`` maps our two roles to the data set's split names (C4 has no public test split, so its
    ``test`` role is its ``validation`` split). ``join`` is put between documents before the whole split is
    tokenized as one text (the standard for WikiText / PTB perplexity); ``bos_per_document`` instead
    tokenizes each document on its own, each opened by the tokenizer's BOS.
    """

    name: str
    path: str
    subset: str | None = None
    data_files: dict | None = None
    splits: dict = field(default_factory=lambda: {"train": "train", "test": "test"})
    text_field: str = "text"
    join: str = "\n\n"
    bos_per_document: bool = False
    max_documents: dict | None = None  # per role, e.g. {"train": 20000}; applied after the shuffle
    shuffle_documents: bool = False
    revision: str | None = None
    load_kwargs: dict = field(default_factory=dict)

    def texts(self, split: Split, seed: int = 0) -> list[str]:
        from datasets import load_dataset

        name = f"{self.path}" + (f"/{self.subset}" if self.subset else "")
        try:
            ds = load_dataset(
                self.path,
                self.subset,
                data_files=self.data_files,
                split=self.splits[split],
                revision=self.revision,
                **self.load_kwargs,
            )
        except Exception as exc:  # datasets raises many types; the user needs one line
            offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = (
                " (offline mode: cache it once online, or point data=text at local files)" if offline else ""
            )
            raise DataError(
                f"cannot load data set '{name}' split '{self.splits[split]}'{hint}: {_first_line(exc)}"
            ) from exc
        if self.text_field not in ds.column_names:
            raise DataError(
                f"data set '{name}' has no column '{self.text_field}' (columns: {ds.column_names}); "
                "set data.text_field"
            )
        if self.shuffle_documents:
            # Only calibration follows the run's seed: every run is evaluated on the same documents, so
            # seed-to-seed spread is calibration noise alone (and the cached perplexity before stays valid).
            ds = ds.shuffle(seed=seed if split == "train" else 0)
        limit = (self.max_documents or {}).get(split)
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        return list(ds[self.text_field])

    def describe(self) -> str:
        return self.path + (f"/{self.subset}" if self.subset else "")


@dataclass
class TextFilesSource(HubSource):
    """Local text files: ``train_files`` for calibration, ``eval_files`` for evaluation (each file = a document)."""

    name: str = "text"
    path: str = "text"
    train_files: list | str | None = None
    eval_files: list | str | None = None

    def __post_init__(self):
        train, test = _as_list(self.train_files), _as_list(self.eval_files)
        if not train or not test:
            raise DataError("data=text needs data.train_files=<file(s)> and data.eval_files=<file(s)>")
        for setting, files in (("data.train_files", train), ("data.eval_files", test)):
            for f in files:
                check_text_file(f, setting)
        same = {str(Path(f).resolve()) for f in train} & {str(Path(f).resolve()) for f in test}
        if same:
            raise DataError(
                f"calibration and evaluation text must differ, but {sorted(same)[0]} is in both "
                "data.train_files and data.eval_files"
            )
        self.data_files = {"train": train, "test": test}
        self.load_kwargs = {"sample_by": "document", **self.load_kwargs}

    def describe(self) -> str:
        return "text files"


@dataclass
class TextSplitSource:
    """One local text file cut in two at a document boundary: the first part calibrates, the rest evaluates.

    ``test_fraction`` of the characters (rounded to the next ``separator``, or to the next line break in a
    file without one, e.g. WikiText with its empty rows dropped) go to the test split, so calibration and
    evaluation never share text.
    """

    file: str | None = None
    test_fraction: float = 0.5
    separator: str = "\n\n"
    name: str = "text_split"
    join: str = "\n\n"
    bos_per_document: bool = False

    def __post_init__(self):
        if not self.file:
            raise DataError("data=text_split needs data.file=<text file>")
        check_text_file(self.file, "data.file")
        if not 0 < self.test_fraction < 1:
            raise DataError(f"data.test_fraction={self.test_fraction} must lie strictly between 0 and 1")

    def texts(self, split: Split, seed: int = 0) -> list[str]:
        text = Path(os.path.expanduser(self.file)).read_text()
        mark = int(len(text) * (1 - self.test_fraction))
        for separator in dict.fromkeys((self.separator, "\n")):  # a file without blank lines: cut at a line end
            cut = text.find(separator, mark)
            if cut >= 0:
                return [text[:cut]] if split == "train" else [text[cut + len(separator):]]
        raise DataError(f"{self.file}: no {self.separator!r} or line break after the {1 - self.test_fraction:.0%} mark to "
                        "split at; set data.separator=<string> or data.test_fraction")

    def describe(self) -> str:
        return f"{Path(self.file).name} (split {1 - self.test_fraction:.0%}/{self.test_fraction:.0%})"


def check_text_file(file, setting: str, probe_bytes: int = 1 << 16) -> None:
    """Refuse (naming the file) a text file that is missing, unreadable, empty, or not UTF-8 text."""
    import codecs

    path = Path(os.path.expanduser(str(file)))
    if not path.exists():
        raise DataError(f"{setting}: text file not found: {file}")
    if not path.is_file():
        raise DataError(f"{setting}: {file} is not a file")
    try:
        with path.open("rb") as handle:
            head = handle.read(probe_bytes)
    except OSError as exc:
        raise DataError(f"{setting}: cannot read {file} ({exc.strerror or _first_line(exc)})") from exc
    if not head.strip():
        raise DataError(f"{setting}: {file} is empty")
    try:
        if b"\0" in head:
            raise UnicodeDecodeError("utf-8", head, head.index(b"\0"), head.index(b"\0") + 1, "NUL byte")
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise DataError(f"{setting}: {file} is not UTF-8 text (byte {exc.start} is not text); give a plain text file") from exc


def _as_list(files) -> list[str]:
    if files is None:
        return []
    if isinstance(files, str):
        return [files]
    return [str(f) for f in files]


@dataclass
class TestbedSource:
    """The embedded synthetic corpus (generated and cached on first use)."""
    __test__ = False  # not a pytest test class


    testbed: dict
    cache_dir: str
    name: str = "testbed"
    join: str = ""
    bos_per_document: bool = True

    def texts(self, split: Split, seed: int = 0) -> list[str]:
        from prune.testbed.build import TestbedSpec, load_split_texts

        return load_split_texts(TestbedSpec.from_dict(self.testbed).corpus, self.cache_dir, split)

    def describe(self) -> str:
        return "testbed"
