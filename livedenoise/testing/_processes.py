"""Reading back the address a child ``serve`` or ``replay`` bound on port 0, from its start-up log."""

from __future__ import annotations

import os
import re
import select
import time
from typing import IO

# the start-up lines of ``serve`` ("serving M: PULL <source> -> PUB <address>; provider ...")
# and ``replay`` ("replaying F at 100.0 fps on <address> (PUSH)"), at log level INFO
SERVE_PUBLISH = re.compile(r"-> PUB (\S+);")
REPLAY_BIND = re.compile(r" fps on (\S+) \((?:PUB|PUSH)\)")


def read_address(stream: IO, pattern: re.Pattern[str], timeout: float = 30.0) -> tuple[str, str]:
    """Read a child's output ``stream`` up to the first line matching ``pattern``; return the
    pattern's group 1 (the address) and the text read so far.

    It reads the pipe's file descriptor one byte at a time, so nothing is left in a Python buffer:
    a later ``proc.communicate()`` gets the rest of the output, and the caller joins the two.
    AssertionError (with the output) if the child exits or ``timeout`` passes first.
    """
    fd = stream.fileno()
    text = bytearray()
    line_start = 0
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(
                f"no line matching {pattern.pattern!r} in {timeout:g} s:\n{text.decode(errors='replace')}"
            )
        if not select.select([fd], [], [], left)[0]:
            continue
        byte = os.read(fd, 1)
        if not byte:
            raise AssertionError(f"no line matching {pattern.pattern!r}, then EOF:\n{text.decode(errors='replace')}")
        text += byte
        if byte == b"\n":
            match = pattern.search(text[line_start:].decode(errors="replace"))
            if match:
                return match.group(1), text.decode(errors="replace")
            line_start = len(text)
