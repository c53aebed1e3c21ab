"""A finished sweep, aggregated: summary tables, figures, verdicts and a readable report (``prune-report``).

Writes into the sweep folder: ``summary.csv`` / ``summary.json`` (one row per job), ``report.md``,
``verdicts.json`` and PNG figures; and logs them to a W&B run of job type ``report`` in the sweep's group.

* ``jobs``: the one reader of the job folders' ``metrics.json``;
* ``conditions``: jobs grouped into conditions, the x axis and the series (``Sweep``);
* ``table``: one row per job (``summary.csv``), and the time a sweep spent;
* ``comparisons``: the verdict rows (statistics in ``prune.stats``, wording in ``prune.verdicts``);
* ``design`` / ``study``: what the sweep declared (primary endpoint, reference arm) and the study rules:
  primary first, Holm on the secondary lines, the magnitude negative control;
* ``figures``, ``markdown``, ``after`` (recovery and the long-context probe): the report's parts;
* ``report``: puts them together (``build_report``); ``cli``: the ``prune-report`` command.
"""
