"""A simulated detector bound now and streaming later, on a thread of the test process."""

from __future__ import annotations

import threading

from livedenoise.sim import ReplayConfig, Replayer

from ._sockets import LOOPBACK


class ReplayThread(threading.Thread):
    """A :class:`~livedenoise.sim.Replayer` bound at construction (port 0 unless ``bind`` says
    otherwise) and run by :meth:`start`: point the daemon at :attr:`endpoint`, subscribe, then
    start, so no frame leaves before its reader is there."""

    def __init__(self, config: ReplayConfig | None = None, **fields):
        if config is None:
            fields.setdefault("bind", LOOPBACK)
            config = ReplayConfig(**fields)
        self.replayer = Replayer(config)
        self.endpoint = self.replayer.endpoint
        super().__init__(target=self.replayer.run, name="ld-test-replay", daemon=True)

    def close(self, timeout: float = 10.0) -> None:
        """Stop streaming and wait for the thread (its run closes the socket); close it here if the
        thread never started."""
        self.replayer.stop()
        if self.ident is None:
            self.replayer.close()
        else:
            self.join(timeout)
