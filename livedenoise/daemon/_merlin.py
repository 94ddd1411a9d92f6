"""The receiving stage of ``serve --source-format merlin``: a Quantum Detectors Merlin's data port.

The Merlin is not a ZeroMQ peer: it serves its frames on a TCP port, which libertem-qd-mpx reads
(:class:`~livedenoise.detectors.MerlinStream`). :class:`MerlinSource` is the receiver thread
around it, a :class:`~livedenoise.daemon.Receiver` like the ZeroMQ :class:`Source`: the same
counters, series and epochs, the same skips, and frames (or virtual images) into the frame queue.
Each Merlin acquisition is a series; what goes wrong in one ends it (its open scan frame dropped,
``scan_incomplete``) and is counted (``malformed``, or ``disconnects`` where the stream ended),
and the library connects again.
"""

from __future__ import annotations

import logging
import time

from ..detectors import MerlinConfig, make_virtual
from ..protocol import DEFAULT_LIMITS, Limits
from ._queue import FrameQueue, QueueClosed
from ._receive import Received, Receiver

log = logging.getLogger("livedenoise.daemon")


class MerlinSource(Receiver):
    """Receives a Merlin's frames at ``address`` (``tcp://HOST:PORT``, its data port) and feeds a
    :class:`~livedenoise.daemon.FrameQueue`; the library and the shared memory are set up here,
    in the caller's thread, so a missing extra or a bad address fails at once."""

    def __init__(self, address: str, queue: FrameQueue[Received], merlin: MerlinConfig, *, limits: Limits = DEFAULT_LIMITS):
        from ..detectors import MerlinStream, load_qd_mpx, parse_data_address

        super().__init__(queue, limits)
        load_qd_mpx()  # the extra, before anything else is built
        self.address = address
        host, port = parse_data_address(address)
        virtual = make_virtual(merlin, f"Merlin at {host}:{port}")
        self.stream = MerlinStream(host, port, virtual=virtual, limits=limits)

    def counters(self) -> dict[str, int]:
        return {**super().counters(), **self.stream.counters()}

    def close(self) -> None:
        self.stream.close()

    def run(self) -> None:
        stream = self.stream
        stream.start()
        try:
            while not self._stop.is_set():
                msgs = stream.poll(0.1)
                if not msgs:
                    continue
                items: list[Received] = []
                self._accept(msgs, time.perf_counter(), items)
                if items:
                    self._enqueue(items)
        except QueueClosed:
            pass
        finally:
            self.queue.close()  # the inference thread drains what is queued, then ends
            stream.close()
