"""What the benchmark scripts share: a free loopback address, a subscriber to serve's output and
a process's resident memory."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path


def free_addr() -> str:
    """A TCP address on 127.0.0.1 with a port free right now (benchmarks stay on loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def output_subscriber(ctx, publish: str):
    """A SUB socket on serve's ``denoised`` and ``stats`` topics at ``publish``, unbounded (no HWM drops)."""
    import zmq

    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"denoised")
    sub.setsockopt(zmq.SUBSCRIBE, b"stats")
    sub.connect(publish)
    return sub


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
