"""The embedded testbed: a synthetic corpus with known long-range structure and a tiny LLaMA trained on it."""
from prune.testbed.build import TestbedSpec, ensure_data, ensure_model
from prune.testbed.corpus import CorpusSpec, dependency_distances

__all__ = ["CorpusSpec", "TestbedSpec", "dependency_distances", "ensure_data", "ensure_model"]
