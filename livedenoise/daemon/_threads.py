"""What every pipeline thread shares: throttled logging, and one failure path."""

from __future__ import annotations

import logging
import time


class LogThrottle:
    """Log the first ``burst`` messages of a kind, then at most one per ``interval`` seconds with a
    count of those suppressed, so a flood of bad input cannot flood the log."""

    def __init__(self, logger: logging.Logger, burst: int = 5, interval: float = 1.0):
        self.logger, self.burst, self.interval = logger, burst, interval
        self._count = 0
        self._suppressed = 0
        self._next = 0.0

    def warning(self, msg: str, *args) -> None:
        self._count += 1
        now = time.monotonic()
        if self._count <= self.burst or now >= self._next:
            if self._suppressed:
                msg = f"{msg} ({self._suppressed} similar messages suppressed)"
                self._suppressed = 0
            self.logger.warning(msg, *args)
            if self._count > self.burst:
                self._next = now + self.interval
        else:
            self._suppressed += 1
