"""A process as ``benchmarks/soak_all.py`` watches it, from /proc: resident memory, open file
descriptors, the live pipeline threads (their ``ld-<stage>`` names) and children; and the bytes a
folder holds. Read-only and cheap: it shares two cores with the ``serve`` it watches.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One look at a process: ``rss_mib`` its own, ``children_rss_mib`` its children's (serve's
    libertem-dectris receiver process), ``fds`` open descriptors, ``threads`` its ``ld-*`` threads."""

    rss_mib: float
    children_rss_mib: float
    fds: int
    threads: frozenset[str]
    children: int


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def children(pid: int) -> list[int]:
    """The process ids of ``pid``'s children."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def sample_process(pid: int, prefix: str = "ld-") -> ProcSample:
    """RSS, fds and the threads named ``prefix*`` of ``pid`` (Linux /proc; a few hundred us)."""
    threads = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as fh:
                name = fh.read().strip()
        except OSError:
            continue  # the thread just ended
        if name.startswith(prefix):
            threads.add(name)
    kids = children(pid)
    return ProcSample(
        _rss_mib(pid), sum(_rss_mib(k) for k in kids), len(os.listdir(f"/proc/{pid}/fd")), frozenset(threads), len(kids)
    )


def dir_bytes(path: Path) -> int:
    """Bytes in the files under ``path`` (what a recording holds on disk right now)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # renamed or deleted meanwhile
                total += os.stat(os.path.join(root, name)).st_size
    return total
