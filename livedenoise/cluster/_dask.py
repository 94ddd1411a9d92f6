"""Where the tasks run: an existing Dask scheduler, or a cluster of worker processes started on
this machine (one worker per core with one thread each, or one worker per GPU with
``CUDA_VISIBLE_DEVICES`` set to its device: what dask-cuda's ``LocalCUDACluster`` does, without
dask-cuda). Dask is imported here only, lazily: without the ``distributed`` extra the
command-line paths that need it stop with one line naming the extra."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import LivedenoiseError, short_error

EXTRA_HINT = 'pip install -e ".[distributed]"'
CONNECT_TIMEOUT_S = 10.0


def have_distributed() -> bool:
    """Is ``dask.distributed`` importable here?"""
    try:
        import distributed  # noqa: F401 - only: is the extra installed?
    except ImportError:
        return False
    return True


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise LivedenoiseError(f"running on a Dask cluster needs dask.distributed: {EXTRA_HINT}") from None
    return distributed


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """The CUDA devices a worker could be pinned to: ``CUDA_VISIBLE_DEVICES`` where set, else the
    indices ``nvidia-smi -L`` lists; none without a driver."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """A cluster to connect to or start. ``scheduler``: the address of a running one
    (``tcp://host:8786``); else ``workers`` processes are started here, each with one task
    thread, pinned to one of ``gpus`` each where given (``CUDA_VISIBLE_DEVICES``)."""

    scheduler: str | None = None
    workers: int = 2
    gpus: tuple[str, ...] = ()
    threads: int = 1  # task threads per started worker (one: a worker's engine runs one range at a time)
    host: str = "127.0.0.1"  # a local cluster listens on loopback only (its dashboard too, on a free port)


@contextlib.contextmanager
def connect(spec: ClusterSpec) -> Iterator[Any]:
    """A ``distributed.Client`` on the cluster ``spec`` names, closed (and a local cluster shut
    down) on exit. An unreachable scheduler is one :class:`LivedenoiseError` line."""
    distributed = _distributed()
    if spec.scheduler:
        try:
            client = distributed.Client(spec.scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise LivedenoiseError(
                f"cannot reach the Dask scheduler at {spec.scheduler} within {CONNECT_TIMEOUT_S:g} s: {short_error(exc)}"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    if spec.workers < 1:
        raise LivedenoiseError(f"--workers {spec.workers}: need at least 1 worker process")
    cluster = _local_cluster(distributed, spec)
    try:
        with distributed.Client(cluster, set_as_default=False) as client:
            yield client
    finally:
        cluster.close()


def _local_cluster(distributed: Any, spec: ClusterSpec) -> Any:
    quiet = {"silence_logs": logging.CRITICAL}  # a failed task is reported once, by the job, in one line
    if not spec.gpus:
        return distributed.LocalCluster(
            n_workers=spec.workers, threads_per_worker=spec.threads, processes=True, host=spec.host,
            dashboard_address=":0", **quiet,
        )
    # one worker per device, each seeing only its own: what LocalCUDACluster does
    workers = {
        f"gpu-{dev}": {
            "cls": distributed.Nanny,
            "options": {"nthreads": spec.threads, "host": spec.host, "env": {"CUDA_VISIBLE_DEVICES": dev}, **quiet},
        }
        for dev in spec.gpus[: spec.workers]
    }
    scheduler = {"cls": distributed.Scheduler, "options": {"host": spec.host, "dashboard_address": ":0"}}
    return distributed.SpecCluster(workers=workers, scheduler=scheduler, **quiet)


def worker_count(client: Any) -> int:
    """Workers connected now (at least 1: tasks wait for one otherwise)."""
    return max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))


def worker_threads(client: Any) -> int:
    """The fewest cores a worker process may use, for onnxruntime's or torch's thread count:
    the worker's machine cores over the workers on that machine (at least 1)."""
    info = client.scheduler_info(n_workers=-1).get("workers", {})
    per_host: dict[str, int] = {}
    for w in info.values():
        per_host[w.get("host", "")] = per_host.get(w.get("host", ""), 0) + 1
    cores = client.run(usable_cores)  # {address: cores} of each worker's process
    counts = [cores[a] // per_host.get(w.get("host", ""), 1) for a, w in info.items() if a in cores]
    return max(1, min(counts)) if counts else 1
