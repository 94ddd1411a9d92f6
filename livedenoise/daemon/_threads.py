"""Where serve's threads run: the pipeline's CPUs (``--pipeline-cpus``) and real-time scheduling
(``--realtime``), for the whole process. What each thread shares (the one failure path, the side
stage) is :mod:`livedenoise._stage`."""

from __future__ import annotations

import contextlib
import os

from ..errors import LivedenoiseError


def place_pipeline(cpus: tuple[int, ...]) -> frozenset[int]:
    """``ServeConfig.pipeline_cpus``: move the process's threads, and so every thread started from
    now on (libzmq's I/O threads, onnxruntime's pool), to the CPUs *not* listed, and return the
    listed ones for the pipeline threads to take (:class:`PipelineThread` ``cpus``). Empty: nothing
    moves. One clear error where it cannot be done (not Linux, a CPU this process may not use)."""
    if not cpus:
        return frozenset()
    if not hasattr(os, "sched_setaffinity"):
        raise LivedenoiseError("--pipeline-cpus needs Linux (sched_setaffinity)")
    allowed = os.sched_getaffinity(0)
    wanted = frozenset(cpus)
    if not wanted <= allowed:
        raise LivedenoiseError(
            f"--pipeline-cpus {','.join(map(str, sorted(wanted)))}: this process may use CPUs "
            f"{','.join(map(str, sorted(allowed)))} only"
        )
    rest = (allowed - wanted) or wanted  # one CPU in all: everything shares it
    # every thread there is (numpy's BLAS pool started at import too), and so those started later
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), rest)
    return wanted


def make_realtime(priority: int | None) -> None:
    """``ServeConfig.realtime``: every thread of this process, and so every thread started from now
    on (a thread starts with its starter's policy: onnxruntime's pool, libzmq's I/O), under
    ``SCHED_RR`` at ``priority`` (Linux). All of them: a thread left behind that holds the GIL when
    it is preempted would stall the others. None: nothing changes. One clear error where it cannot
    be done (not Linux, not permitted)."""
    if priority is None:
        return
    if not hasattr(os, "sched_setscheduler"):
        raise LivedenoiseError("--realtime needs Linux (SCHED_RR)")
    param = os.sched_param(priority)
    for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):  # the main thread first
        try:
            os.sched_setscheduler(tid, os.SCHED_RR, param)
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
        except PermissionError:
            raise LivedenoiseError(
                f"--realtime {priority}: not permitted; real-time scheduling needs root, CAP_SYS_NICE or an "
                "RLIMIT_RTPRIO allowance ('rtprio' in /etc/security/limits.conf, LimitRTPRIO= in a systemd unit)"
            ) from None
