"""``serve --realtime P``: every thread of serve under real-time round-robin scheduling, those started
after it was set included (onnxruntime's pool, libzmq's I/O, the stage threads), or one clear error
where that is not permitted. Checked in real ``serve`` processes through /proc, since it changes the
scheduling of the process that asks."""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from livedenoise.testing import LOOPBACK, SERVE_PUBLISH, read_address

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_RR is Linux's")

STAGES = {"ld-receive", "ld-infer", "ld-publish", "ld-atoms", "ld-guard"}
BACKGROUND = {"ld-atoms", "ld-guard"}  # one priority below the pipeline
PR_CAPBSET_DROP, CAP_SYS_NICE = 24, 23


def realtime_permitted() -> bool:
    probe = "import os; os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def scheduling(pid: int) -> dict[str, set[tuple[int, int]]]:
    """Each thread name of ``pid`` -> its threads' (policy, real-time priority)."""
    out: dict[str, set[tuple[int, int]]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        tid = int(task.name)
        try:
            name = (task / "comm").read_text().strip()
            out.setdefault(name, set()).add((os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority))
        except (OSError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return out


def test_every_serve_thread_runs_round_robin_at_the_priority_given_the_background_just_below(conv_model, detector):
    if not realtime_permitted():
        pytest.skip("real-time scheduling is not permitted here (root, CAP_SYS_NICE or RLIMIT_RTPRIO)")
    _, source = detector()
    proc = subprocess.Popen(
        [sys.executable, "-m", "livedenoise", "serve", "--model", str(conv_model), "--source", source, "--pull",
         "--publish", LOOPBACK, "--provider", "cpu", "--atoms", "--realtime", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        read_address(proc.stdout, SERVE_PUBLISH)  # logged as the stage threads start
        deadline = time.monotonic() + 10
        while not set(threads := scheduling(proc.pid)) >= STAGES and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert set(threads) >= STAGES, threads
    assert len(threads) > len(STAGES) + 1  # and libzmq's, onnxruntime's, the main thread
    for name, policies in threads.items():
        assert policies == {(os.SCHED_RR, 2 if name in BACKGROUND else 3)}, threads
    assert proc.returncode == 0


def _without_realtime_rights() -> None:
    """In the child: no RLIMIT_RTPRIO allowance and, for root, no CAP_SYS_NICE after exec."""
    resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_CAPBSET_DROP, CAP_SYS_NICE, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot drop CAP_SYS_NICE")


def test_realtime_where_it_is_not_permitted_is_one_clear_error(conv_model):
    proc = subprocess.run(
        [sys.executable, "-m", "livedenoise", "serve", "--model", str(conv_model), "--realtime", "3"],
        capture_output=True, text=True, timeout=60, preexec_fn=_without_realtime_rights,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --realtime 3: not permitted; real-time scheduling needs")


def test_a_priority_out_of_range_is_refused(conv_model):
    proc = subprocess.run(
        [sys.executable, "-m", "livedenoise", "serve", "--model", str(conv_model), "--realtime", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: --realtime 0: must be a priority from 1 to 99"
