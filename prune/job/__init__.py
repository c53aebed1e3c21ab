"""One job: calibrate -> score -> prune -> evaluate -> save -> log (``run_job``, in ``pipeline``).

* ``pipeline``: orders the phases and always writes ``metrics.json``;
* ``checks``: the cheap checks of the settings against the model;
* ``inputs``: text, calibration windows and downstream tasks, refused before the model loads;
* ``record``: the metrics assembled from the phases, plan and scores on disk, FLOPs of a phase;
* ``tracked``: the job's W&B summary, per-layer rows and plots;
* ``naming``: run name, settings record and the config digest that resume compares;
* ``summary``: what a finished job prints.
"""
from prune.errors import ConfigError, DataError, PruningError, UnsupportedModelError
from prune.job.checks import ROLES, check_compatibility, layer_method_for, samples_for, validate
from prune.job.naming import config_digest, run_name
from prune.job.pipeline import USER_ERRORS, failure_record, run_job
from prune.job.summary import print_job_summary, summary_table

__all__ = ["ConfigError", "DataError", "PruningError", "ROLES", "USER_ERRORS", "UnsupportedModelError", "check_compatibility",
           "config_digest", "failure_record", "layer_method_for", "print_job_summary", "run_job", "run_name", "samples_for",
           "summary_table", "validate"]
