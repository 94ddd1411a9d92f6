"""The Dask cluster that offline work runs on: an existing scheduler, or worker processes started
on this machine (one per core, or one per GPU), and what a job asks of it (workers, threads).

Used by :mod:`livedenoise.archive` (denoising archives of movies), the trainer's sweeps and the
CLI (``denoise``, ``train-sweep``). Dask is an optional extra (``distributed``), imported only when
a cluster is used; the daemon never imports this package (import-linter contract).
"""

from ._dask import ClusterSpec, connect, have_distributed, usable_cores, visible_gpus, worker_count, worker_threads

__all__ = [
    "ClusterSpec",
    "connect",
    "have_distributed",
    "usable_cores",
    "visible_gpus",
    "worker_count",
    "worker_threads",
]
