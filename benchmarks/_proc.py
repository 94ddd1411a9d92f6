"""What the benchmark scripts share: a process's resident memory, the machine's description and a
small pool for training runs; and, from :mod:`livedenoise.testing`, a free loopback address (the
``serve`` and ``replay`` children bind what their command line says, at log level WARNING) and a
subscriber to serve's output."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from livedenoise.testing import free_addr, output_subscriber

__all__ = ["free_addr", "machine", "output_subscriber", "rss_mib", "run_jobs"]


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> str:
    """One line for a report: OS and kernel, CPU model, cores."""
    cpu = platform.processor() or "?"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores"


def run_jobs(
    jobs: list[tuple[str, list[str], Path]], parallel: int, *, nice: int = 0, threads: int | None = None,
    cwd: Path | None = None, start_within_s: float | None = None,
) -> dict[str, dict]:
    """Run commands ``(name, argv, log file)``, at most ``parallel`` at once, each under ``nice -n``
    with ``threads`` OpenMP/MKL threads, its output appended to its log after a ``$ command`` line.
    Returns per name ``rc`` and ``wall_s``; a job not started within ``start_within_s`` of the call
    is skipped (``rc`` None)."""
    env = dict(os.environ) if threads is None else dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t_call = time.monotonic()

    def run(name: str, argv: list[str], log: Path) -> dict:
        if start_within_s is not None and time.monotonic() - t_call > start_within_s:
            return {"rc": None, "wall_s": 0.0}
        cmd = (["nice", "-n", str(nice)] if nice else []) + argv
        print(f"[{time.strftime('%H:%M:%S')}] start {name}: {shlex.join(argv)} (log {log})", flush=True)
        t0 = time.monotonic()
        with open(log, "a") as fh:
            fh.write(f"$ {shlex.join(cmd)}\n")
            fh.flush()
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd).returncode
        wall = time.monotonic() - t0
        tail = Path(log).read_text().strip().splitlines()[-1:]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: exit {rc} after {wall / 60:.1f} min: {tail[0] if tail else ''}", flush=True)
        return {"rc": rc, "wall_s": round(wall, 1)}

    with ThreadPoolExecutor(max(1, parallel)) as pool:
        futures = {name: pool.submit(run, name, argv, log) for name, argv, log in jobs}
        return {name: f.result() for name, f in futures.items()}


def stop(proc: subprocess.Popen, timeout: float = 60) -> str:
    """Terminate ``proc`` (kill it after ``timeout``) and return what it wrote to stderr."""
    if proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""


def wait_until_serving(sub, serve: subprocess.Popen, timeout: float) -> None:
    """Block until ``sub`` (subscribed to ``stats``) gets serve's first stats message: serve is up,
    warmed, and the subscription is in effect. Exits with serve's stderr if serve dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sub.poll(200) and sub.recv_multipart()[0] == b"stats":
            return
        if serve.poll() is not None:
            raise SystemExit(f"serve exited: {stop(serve)[-3000:]}")
    raise SystemExit(f"serve published no stats within {timeout:g} s")
