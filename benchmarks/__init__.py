"""The benchmarks: scripts that print figures (never timed tests), each run from the repository root
as ``python -m benchmarks.NAME``. The conditions they share are :mod:`benchmarks._conditions`'s,
how they print tables and figures :mod:`benchmarks._report`'s; the tools that write shipped models
are under ``tools/``.
"""
