"""Tuning-quality benchmark (../shared/BENCHMARK.md section 1).

Three workloads (``workloads``), the methods that set their learning rate (``methods``
for the schedules and single-run baselines, ``tuned`` for stagelr through a live server),
a resumable results cache and the run plan (``harness``), and the statistics, tables,
plots and verdicts (``report``). Run it as ``python -m benchmarks.quality --help``.
"""
