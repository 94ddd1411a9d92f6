"""``serve --pipeline-cpus``: the three threads every frame passes run on the CPUs given, the rest of
the process (libzmq's I/O, onnxruntime's pool) on the others. Checked in a real ``serve`` process
through /proc, since placing threads changes the CPUs of the process that does it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from livedenoise.testing import LOOPBACK, SERVE_PUBLISH, read_address

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs Linux and 2 CPUs"
)


PIPELINE = {"ld-receive", "ld-infer", "ld-publish"}


def threads_by_name(pid: int) -> dict[str, set[int]]:
    """Each thread name of ``pid`` -> the union of the CPUs its threads may run on."""
    out: dict[str, set[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        out.setdefault(name, set()).update(os.sched_getaffinity(int(task.name)))
    return out


def test_pipeline_threads_run_on_the_cpus_given_and_the_rest_elsewhere(conv_model, detector):
    _, source = detector()
    pipeline_cpu = min(os.sched_getaffinity(0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "livedenoise", "serve", "--model", str(conv_model), "--source", source, "--pull",
         "--publish", LOOPBACK, "--provider", "cpu", "--pipeline-cpus", str(pipeline_cpu)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        read_address(proc.stdout, SERVE_PUBLISH)  # logged as the stage threads start
        deadline = time.monotonic() + 10
        while not set(threads := threads_by_name(proc.pid)) >= PIPELINE and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    for stage in PIPELINE:
        assert threads.get(stage) == {pipeline_cpu}, (stage, threads)
    others = {name: cpus for name, cpus in threads.items() if name not in PIPELINE}
    assert others and all(pipeline_cpu not in cpus for cpus in others.values()), others
    assert proc.returncode == 0


def test_a_cpu_the_process_may_not_use_is_one_clear_error(conv_model):
    cpu = max(os.sched_getaffinity(0)) + 1
    proc = subprocess.run(
        [sys.executable, "-m", "livedenoise", "serve", "--model", str(conv_model), "--pipeline-cpus", str(cpu)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --pipeline-cpus {cpu}: this process may use")
