"""SIGINT/SIGTERM handling shared by ``serve``, ``demo``, ``replay`` and the viewer.

The first signal asks the program to stop cleanly (drain, close, write the recording); a second
one leaves at once with the shell's code for it (128 + signal number), for when draining hangs.

>>> import signal
>>> with stop_on_signals(lambda signum: None):
...     signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
True
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(on_stop: Callable[[int], object]) -> Iterator[None]:
    """Within the block, the first SIGINT/SIGTERM calls ``on_stop(signum)``; a second exits the
    process at once. The previous handlers come back afterwards. Main thread only (Python's rule)."""
    count = 0

    def handler(signum: int, _frame: object) -> None:
        nonlocal count
        count += 1
        if count > 1:
            os._exit(128 + signum)
        on_stop(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
