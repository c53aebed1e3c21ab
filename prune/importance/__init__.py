"""Importance methods: one score per prunable group (attention group / MLP channel).

Where things are computed:

* Taylor 1st/2nd order: ``prune/importance/taylor.py`` (scores) on top of ``gradients.py`` (the
  gradient pass, Fisher estimators and per-layer gradient statistics);
* magnitude and random baselines: ``baselines.py``.
"""
from prune.importance import baselines, taylor  # noqa: F401  (register the methods)
from prune.importance.base import REGISTRY, Calibration, ImportanceMethod, ImportanceResult, build

__all__ = ["REGISTRY", "Calibration", "ImportanceMethod", "ImportanceResult", "build"]
