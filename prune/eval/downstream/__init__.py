"""Downstream (zero-shot multiple-choice) accuracy of the in-memory model with lm-evaluation-harness.

``check_tasks`` runs before any model work and refuses, in one line, a task lm-eval does not know or whose
data set cannot be loaded (offline: not in the local cache). ``evaluate_tasks`` wraps the model that is
in memory, pruned or not, in lm-eval's ``HFLM`` and runs ``lm_eval.simple_evaluate``; it returns one
metric per task (the one the literature reports, see ``STANDARD_TASKS``) and their unweighted mean.

``tasks`` resolves and checks tasks, ``evaluate`` runs them. lm-eval is an optional dependency
(``pip install -e .[eval]``, pinned to 0.4.13 in setup.cfg) and is imported only inside these functions,
so the rest of the package works without it.

Which metric per task
---------------------
lm-eval reports ``acc`` (argmax of the summed log-likelihood of each choice) and, for tasks whose choices
differ in length, ``acc_norm`` (the same divided by the choice's length in bytes). Papers differ:

* LLM-Pruner (Ma et al., 2023; BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA): ``acc`` for BoolQ,
  PIQA, WinoGrande and ARC-e, ``acc_norm`` for HellaSwag, ARC-c and OBQA. Its code prints both; the
  paper's LLaMA-7B numbers match ``acc`` on the first four and ``acc_norm`` on the last three
  (horseee/LLM-Pruner issue #25 reproduces the table both ways). Structured-pruning papers that compare
  with LLM-Pruner usually copy this table and with it this convention.
* Wanda (Sun et al., 2023; BoolQ, RTE, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA): ``acc`` everywhere
  (its dense LLaMA-7B HellaSwag 56.9 and OBQA 34.4 are the ``acc`` values).
* SliceGPT (Ashkboos et al., 2024; PIQA, WinoGrande, HellaSwag, ARC-e, ARC-c): ``acc_norm`` wherever the
  task reports it, else ``acc`` (``result.get('acc_norm,none', result['acc,none'])`` in its
  ``run_lm_eval.py``), i.e. ``acc`` only for WinoGrande.

This project prunes whole heads and channels as LLM-Pruner does and compares against its table, so
``STANDARD_TASKS`` follows LLM-Pruner. Every task's result also keeps all of ``acc`` / ``acc_norm`` that
lm-eval computed (``metrics``), so the Wanda or SliceGPT convention can be recomputed from ``metrics.json``;
``evaluate_tasks(metrics={...})`` changes the reported one.
"""
from prune.eval.downstream.evaluate import evaluate_tasks
from prune.eval.downstream.tasks import (
    INSTALL_HINT, STANDARD_TASKS, TASK_METRICS, DownstreamError, _dataset_problem, check_task_settings, check_tasks,
)

__all__ = ["INSTALL_HINT", "STANDARD_TASKS", "TASK_METRICS", "DownstreamError", "_dataset_problem", "check_task_settings",
           "check_tasks", "evaluate_tasks"]
