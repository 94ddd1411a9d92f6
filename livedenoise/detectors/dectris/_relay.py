"""The libertem-dectris receiver process (:func:`main`): libertem-dectris in, decompressed stacks
in a ring of shared-memory buffers and small msgpack relay messages out, to ``serve``'s
:class:`~livedenoise.detectors.LibertemReceiver` (:mod:`._libertem`: why a process, and what it
counts). Started by it as ``python -c``; a module of its own so that serve's side and the
process's read apart.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from ._libertem import (
    MAX_SERIES_JUMP,
    RECYCLE_AFTER,
    RECYCLE_EXIT,
    RING_BYTES,
    RING_MIN_SLOTS,
    SLOT_BYTES,
    SLOTS,
    STACK,
    STACK_LATENCY,
    _pack,
)

log = logging.getLogger("livedenoise.detectors")

_FRAME_ID = re.compile(r"got (\d+), expected (\d+)")
_NEW_SERIES = re.compile(r'"series"\s*:\s*(\d+)')


class _Relay:
    """The receiver process's side: libertem-dectris in, decompressed stacks and relay messages out."""

    def __init__(self, spec: dict[str, Any]):
        import libertem_dectris

        self.spec = spec
        self.frames = 0
        self.ctx = zmq.Context()
        self.out = self.ctx.socket(zmq.PUSH)
        self.out.setsockopt(zmq.LINGER, 2000)
        self.out.setsockopt(zmq.SNDHWM, 1000)  # then blocks: back-pressure to the stream (serve --lossless)
        self.out.bind(spec["relay"])
        self.acks = self.ctx.socket(zmq.PULL)
        self.acks.setsockopt(zmq.LINGER, 0)
        self.acks.bind(spec["acks"])
        self.conn = libertem_dectris.DectrisConnection(
            uri=spec["source"], frame_stack_size=STACK, handle_path=spec["shm"], max_latency_per_stack=STACK_LATENCY,
            num_slots=SLOTS, bytes_per_frame=SLOT_BYTES // STACK, huge=False,
        )
        self.client = libertem_dectris.CamClient(self.conn.get_socket_path())
        self.conn.start_passive()
        self.last_series: int | None = None
        self.failures = 0  # failed series (RECYCLE_AFTER)
        self.ring: np.ndarray | None = None  # (slots, frames, H, W): this process's ring of stack buffers
        self.ring_name = ""
        self.rings = 0
        self.free: collections.deque[int] = collections.deque()

    # ------------------------------------------------------------------ sending

    def send(self, message: str, /, **fields: Any) -> None:
        self.out.send(_pack(message, self.frames, **fields))

    def skip(self, kind: str, reason: str, count: int = 1) -> None:
        self.send("skip", kind=kind, reason=reason, count=count)  # serve counts and logs it

    # ------------------------------------------------------------------ the ring of stack buffers

    def ring_for(self, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        """The ring for patterns of this shape and type: a new file (the old one once all its
        slots are back), announced to serve before its first stack."""
        ring = self.ring
        if ring is not None and ring.shape[2:] == shape and ring.dtype == dtype:
            return ring
        while ring is not None and len(self.free) < ring.shape[0]:
            self.take_back(block=True)
        old = Path(self.spec["rings"]) / self.ring_name if ring is not None else None
        frame_bytes = shape[0] * shape[1] * dtype.itemsize
        frames = max(1, min(STACK, RING_BYTES // RING_MIN_SLOTS // frame_bytes))
        slots = max(RING_MIN_SLOTS, RING_BYTES // (frames * frame_bytes))
        self.rings += 1
        self.ring_name = f"ring-{os.getpid()}-{self.rings}"
        self.ring = np.memmap(Path(self.spec["rings"]) / self.ring_name, dtype, mode="w+", shape=(slots, frames, *shape))
        self.free = collections.deque(range(slots))
        self.send("ring", name=self.ring_name, slots=slots, frames=frames, shape=list(shape), dtype=dtype.str)
        if old is not None:
            with contextlib.suppress(OSError):
                old.unlink()
        return self.ring

    def take_back(self, *, block: bool) -> None:
        """Slots serve gave back (waiting for one where ``block``)."""
        while True:
            try:
                name, slot = msgpack.unpackb(self.acks.recv(0 if block else zmq.NOBLOCK))
            except zmq.Again:
                return
            if name == self.ring_name:
                self.free.append(slot)
            block = False

    # ------------------------------------------------------------------ series

    def run(self) -> None:
        print("ready", flush=True)
        self.send("hello")  # serve settles what a dead predecessor held
        while True:
            try:
                armed = self.conn.wait_for_arm(timeout=1.0)
            except Exception as exc:  # noqa: BLE001 - libertem-dectris raises its own connection errors
                self.failed_header(str(exc))
                continue
            if armed is not None:
                self.series(*armed)

    def failed_header(self, error: str) -> None:
        if "header_detail" in error or any(h in error for h in ("dflatfield", "dpixelmask", "dcountrate")):
            why = "libertem-dectris reads header_detail 'basic' only: set the detector's header_detail to basic, " \
                  "or serve --dectris-stream auto (the Python decoder; it applies the pixel mask of 'all')"
        else:
            why = error
        self.skip("malformed", f"a series header was not read: {why}")
        self.rearm()

    def rearm(self) -> None:
        """After a failed series libertem-dectris's receiver waits for a new start. Each failure
        keeps the shared-memory slot of the stack it was writing (libertem-dectris 0.3.2 frees it
        nowhere): after :data:`RECYCLE_AFTER` the process exits and serve starts a fresh one."""
        self.failures += 1
        if self.failures >= RECYCLE_AFTER:
            sys.exit(RECYCLE_EXIT)
        self.conn.start_passive()

    def series(self, config: Any, series: int) -> None:
        n_images = int(config.get_num_frames())
        if self.last_series is not None and 0 < series - self.last_series - 1 <= MAX_SERIES_JUMP:
            lost = series - self.last_series - 1
            self.skip("malformed", f"series {self.last_series + 1}-{series - 1}: no header seen, their images were not read "
                      "(libertem-dectris reads a series from its header only)", lost)
        self.last_series = series
        self.send("start", series=series, header={"stream": "dectris v1", "receiver": "libertem-dectris", "number_of_images": n_images})
        got = 0
        try:
            while (handle := self.conn.get_next_stack(max_size=STACK)) is not None:
                got += self.stack(handle, series, got)
        except Exception as exc:  # noqa: BLE001 - the series failed in Rust: count it, go on with the next
            self.failed_series(series, str(exc), got, n_images)
            self.rearm()
        self.send("end", series=series)

    def failed_series(self, series: int, error: str, got: int, n_images: int) -> None:
        if "background thread is dead" in error:
            log.error("libertem-dectris's receiver thread ended (%s): the receiver process restarts", error)
            sys.exit(3)
        if "frame id mismatch" in error:
            m = _FRAME_ID.search(error)
            jump = f"image {m[1]} after {int(m[2]) - 1}" if m else "a jump in its frame ids"
            self.skip("gaps", f"series {series}: {jump}; libertem-dectris gives the rest of the series up")
        elif "dseries_end" in error:
            log.info("series %d ended after %d of %d images", series, got, n_images)
            return  # ended early on purpose: only the open scan frame, counted by the virtual detector
        elif "dheader" in error:
            m = _NEW_SERIES.search(error)
            new = f"series {m[1]}" if m else "a new series"
            self.skip("malformed", f"series {series}: {new} started before this one ended; libertem-dectris "
                      "loses the new one (its header went with the failed series)")
            if m:
                self.last_series = int(m[1])  # counted here: not again as a series without its header
        else:
            self.skip("malformed", f"series {series} failed after {got} images: {error[:300]}")
        if n_images > got:
            self.send("left", series=series, first=got, count=n_images - got)

    # ------------------------------------------------------------------ stacks

    def stack(self, handle: Any, series: int, first: int) -> int:
        """Decompress one stack into ring slots (as many as it takes) and tell serve each."""
        n = len(handle)
        width, height = handle.get_shape()
        try:
            ring = self.ring_for((int(height), int(width)), np.dtype(handle.get_dtype_string()))
            for a in range(0, n, ring.shape[1]):
                b = min(n, a + ring.shape[1])
                self.take_back(block=not self.free)
                slot = self.free.popleft()
                buf = ring[slot, : b - a]
                bad: list[int] = []
                try:
                    self.client.decode_range_into_buffer(handle, buf, a, b)
                except BaseException as exc:  # DecompressError, or a Rust panic (pyo3's PanicException)
                    if isinstance(exc, KeyboardInterrupt | SystemExit):
                        raise
                    bad = self.one_by_one(handle, buf, a, series, first)
                self.frames += b - a
                self.send("stack", series=series, first=first + a, n_frames=b - a, ring=self.ring_name, slot=slot, bad=bad)
        finally:
            self.client.done(handle)
        return n

    def one_by_one(self, handle: Any, buf: np.ndarray, a: int, series: int, first: int) -> list[int]:
        bad, error = [], ""
        for i in range(len(buf)):
            try:
                self.client.decode_range_into_buffer(handle, buf[i : i + 1], a + i, a + i + 1)
            except BaseException as exc:  # as in stack()
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                bad.append(i)
                error = error or " ".join(str(exc).split())[:200]
        if bad:
            more = f" (and {len(bad) - 1} more in this stack)" if len(bad) > 1 else ""
            self.skip("malformed", f"series {series}: image {first + a + bad[0]} does not decompress{more}: {error}", len(bad))
        return bad


def _exit_when_orphaned(rings: Path) -> None:
    """The process ends when serve does: its stdin (a pipe from serve) closes. Its ring files go
    with it (serve removes their folder, unless it was killed)."""

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.read()
        for ring in rings.glob(f"ring-{os.getpid()}-*"):
            with contextlib.suppress(OSError):
                ring.unlink()
        os._exit(0)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    level = int(os.environ.get("LIVEDENOISE_LOG_LEVEL", logging.INFO))
    logging.basicConfig(level=level, format="%(asctime)s dectris-receiver %(levelname)s %(message)s", stream=sys.stderr)
    spec = json.loads(argv[0])
    _exit_when_orphaned(Path(spec["rings"]))
    try:
        relay = _Relay(spec)
    except Exception as exc:  # noqa: BLE001 - told to serve in one line
        print(f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}", flush=True)
        sys.exit(2)
    relay.run()
