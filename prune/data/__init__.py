"""Calibration (train split) and evaluation (test split) text, tokenized into exact-length windows."""
from prune.data.sources import DataError, HubSource, TestbedSource, TextFilesSource, TextSplitSource
from prune.data.windows import calibration_windows, evaluation_windows, tokenize_documents

__all__ = [
    "DataError",
    "HubSource",
    "TestbedSource",
    "TextFilesSource",
    "TextSplitSource",
    "calibration_windows",
    "evaluation_windows",
    "tokenize_documents",
]
