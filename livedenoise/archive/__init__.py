"""Offline work past one process: denoise whole archives of movies on a Dask cluster (or a local
one), frames read lazily and in ranges on the workers, outputs written in place and published once.

:func:`denoise_files` runs a job (on a ``distributed.Client``, or here without Dask); the
cluster it runs on is :mod:`livedenoise.cluster`'s (:func:`connect` and its helpers, re-exported
here). Dask is an optional extra (``distributed``), imported only when a cluster is used. The
daemon never imports this package (import-linter contract).
"""

from ..cluster import ClusterSpec, connect, have_distributed, usable_cores, visible_gpus, worker_count, worker_threads
from ._job import FileResult, JobReport, denoise_files, frames_per_task, output_paths, plan_ranges
from ._outputs import FORMATS
from ._tasks import Checked, DenoiseSpec, Prepared

__all__ = [
    "FORMATS",
    "Checked",
    "ClusterSpec",
    "DenoiseSpec",
    "FileResult",
    "JobReport",
    "Prepared",
    "connect",
    "denoise_files",
    "frames_per_task",
    "have_distributed",
    "output_paths",
    "plan_ranges",
    "usable_cores",
    "visible_gpus",
    "worker_count",
    "worker_threads",
]
