"""Importance methods: one score per prunable group (attention group / MLP channel).

Where things are computed:

* Taylor 1st/2nd order: ``prune/importance/taylor.py`` (scores) on top of ``gradients.py`` (the
  gradient pass, Fisher estimators and per-layer gradient statistics);
* magnitude and random baselines: ``baselines.py``;
* structured Wanda, ShortGPT block influence, angular distance: ``activations.py``;
* removal of layers, blocks and single groups (``layer``, ``block``, ``removal``): ``depth.py`` on top of
  ``removal.py`` (prefix-cached partial forwards).
"""
from prune.importance import activations, baselines, depth, taylor  # noqa: F401  (register the methods)
from prune.importance.base import REGISTRY, Calibration, ImportanceMethod, ImportanceResult, build

__all__ = ["REGISTRY", "Calibration", "ImportanceMethod", "ImportanceResult", "build"]
