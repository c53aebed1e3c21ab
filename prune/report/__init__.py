"""Reporting: what a job prints and logs, and a finished sweep aggregated into tables, figures, verdicts, a
readable report (``prune-report``) and dashboards (``prune-dashboard``).

Per job: ``terminal`` (the rich summary tables), ``job_plots`` (its PNG figures), ``tracking`` (W&B, or
nothing). Per sweep, written into the sweep folder: ``summary.csv`` / ``summary.json`` (one row per job),
``report.md``, ``verdicts.json`` and PNG figures, also logged to a W&B run of job type ``report``:

* ``callbacks``: the Hydra callback that builds the report when a multirun ends; ``progress``: its per-job
  progress line with the time left;
* ``jobs``: the one reader of the job folders' ``metrics.json``;
* ``conditions``: jobs grouped into conditions, the x axis and the series (``Sweep``);
* ``table``: one row per job (``summary.csv``), and the time a sweep spent;
* ``comparisons``: the verdict rows (statistics in ``prune.stats``, wording in ``prune.report.verdicts``);
* ``design`` / ``study``: what the sweep declared (primary endpoint, reference arm) and the study rules:
  primary first, Holm on the secondary lines, the magnitude negative control;
* ``figures``, ``markdown``, ``after`` (recovery and the long-context probe): the report's parts;
* ``build``: puts them together (``build_report``); ``cli``: the ``prune-report`` command; ``archive``: a
  study's compact copy for the repository;
* ``verdicts``: the verdict rules and their wording; ``detection``: a positive control's detection rates;
* ``dashboard`` (``prune-dashboard``: ``panels`` + ``html_dashboard`` offline, ``dashboard_online`` on W&B).
"""
