"""The claim suite: which pairs, what each claim expects, measurements, verdicts, baselines, reports.

``pairs`` (the registry of model pairs), ``claims`` (expectations, judging intervals),
``measurement`` (run settings and the result record), ``measure`` (computing one),
``store`` (memory and disk cache), ``verdicts`` (judging a measurement), ``runner`` (the
session that ties them), ``baselines`` (stored values and tolerances), ``report`` (tables, figures).
May import: every room below it — ``engine``, ``analysis``, ``pipeline``, ``zoo`` — and the shared modules.
"""
