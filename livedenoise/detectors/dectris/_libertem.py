"""DECTRIS Stream v1 through libertem-dectris's Rust receiver, in a receiver process of its own.

libertem-dectris (MIT, by the authors of LiberTEM-live) receives a SIMPLON Stream v1 in a Rust
thread (``DectrisConnection``, passive mode: it latches on to each series' ``dheader-1.0``), writes
the compressed patterns into shared memory as frame stacks, and decompresses a stack in Rust
(``CamClient.decode_range_into_buffer``). The receiver process (:mod:`._relay`) runs that as a
child of ``serve`` and decompresses each stack straight into a slot of a ring of stack buffers in
shared memory (a file in ``/dev/shm``, mapped by both processes); :class:`LibertemReceiver`,
``serve``'s side, is the receiver's decoder: it hands each slot to the :class:`VirtualDetector`
(which reduces it in place) and gives the slot back. Series, skips and slots travel as small
msgpack messages over ZeroMQ ``ipc://`` sockets (the relay, and the slots given back).

So the receiver process does what libertem-dectris's own consumer does (receive, decompress) and
serve's receiver thread reduces the stacks, on another core where there is one: the reduction
(float32, one product with the weights: ~4 us a 192² pattern) is not added to the decompression.

Why a process: ``get_next_stack`` blocks in Rust with no timeout and cannot be interrupted from
another thread, so a stream that stops mid-series would hold a receiver thread for good;
libertem-dectris's receiver thread panics when a series' footer is late; and its decoder hands
each blob to bitshuffle's C code unchecked, which reads wherever a lying block length points (the
Python decoder walks the framing first). In a process of its own, none of that reaches ``serve``:
the process is stopped at shutdown, and one that dies is counted (``receiver_restarts``), logged
and started again, its open scan frame dropped. serve only reads the decompressed pixels.

What libertem-dectris does not do, and how it is counted (the Python decoder reads all of it):

* ``header_detail`` must be ``basic``: with ``all`` (the pixel mask, flatfield and count-rate
  tables in the header) or ``none`` each series fails at its header (``malformed``, logged with the
  fix: ``basic``, or ``--dectris-stream auto``). Stream v2 is not read at all.
* a jump in a series' frame ids ends the series there (Rust): the open scan frame and the scans
  the series had left are ``incomplete``, the jump one ``gaps``; gaps are not filled.
* a series that ends early (its ``dseries_end-1.0`` before the last image): its open scan frame is
  ``incomplete``, as with the Python decoder; a series restarted before its end (a new
  ``dheader-1.0``) costs the new series too, whose header the failed one took (``malformed``);
  a stream that stops mid-series holds the series' last stack in Rust until the next pattern or
  header comes.
* images of a series whose header is lost are dropped in Rust unseen; the series is counted
  (``malformed``) when the next header shows the jump in series ids.
* a stack whose decompression fails is decompressed pattern by pattern: the bad ones are
  ``malformed`` and leave gaps (filled, as the Python decoder's); one whose framing sends bitshuffle
  outside memory ends the process (restarted, the open scan frame ``incomplete``).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import importlib.util
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from ...errors import LivedenoiseError, MalformedMessage
from ...protocol import Buffer, DetectorMessage, ImageFrame, SeriesEnd, SeriesStart
from .._base import Skip, VirtualImage
from .._virtual import VirtualDetector

log = logging.getLogger("livedenoise.detectors")

STACK = 128  # patterns per frame stack in Rust: Python's cost per stack (~40 us) spread thin
SLOT_BYTES = 8 << 20  # one of libertem-dectris's shared-memory slots holds a stack: 128 compressed patterns
SLOTS = 64  # 512 MiB of address space; pages are touched only as stacks fill them (~1-3 MiB used)
STACK_LATENCY = datetime.timedelta(milliseconds=20)  # a slow stream's stack closes after this (at its next pattern)
RING_BYTES = 24 << 20  # the ring of decompressed stacks between the processes: 27 stacks of 128 96² u16 patterns,
RING_MIN_SLOTS = 4  # 6 of 192² (a slack of 3,500-750 patterns, 30 ms at 100,000 a second), at least 4 slots
READY_TIMEOUT_S = 30.0  # a receiver process that has not connected by then is an error at start
MAX_SERIES_JUMP = 1000  # series ids that jump further are a detector restart, not lost headers
RECYCLE_AFTER = 8  # failed series after which the process is replaced (each leaks a shared-memory slot in Rust)
RECYCLE_EXIT = 4  # its exit code then: a planned restart


def available() -> bool:
    """Is libertem-dectris installed (without importing it here), on a system with ``ipc://`` and
    ``select`` on pipes (POSIX)?"""
    return os.name == "posix" and importlib.util.find_spec("libertem_dectris") is not None


# --------------------------------------------------------------------------- the relay format
# msgpack maps, "k": hello, start, end, skip, ring (a new ring of stack buffers), stack (a slot filled);
# "n": detector frames the process has decoded so far. Slots given back: msgpack [ring, slot].


def _pack(message: str, n: int, /, **fields: Any) -> bytes:
    return msgpack.packb({"k": message, "n": n, **fields})


# --------------------------------------------------------------------------- serve's side


class LibertemReceiver:
    """``serve``'s decoder for Stream v1 read by libertem-dectris: starts the receiver process,
    reduces the stacks it decompresses (``virtual``; without it each pattern is a frame), restarts
    it when it ends.

    :attr:`endpoint` is where the daemon's receiver connects (PULL) instead of the detector
    ``source``. Construction waits until the process has connected to the detector, so a process
    that cannot start is an error at start (:class:`~livedenoise.errors.LivedenoiseError`).
    :meth:`close` stops it. Used by the receiver thread only, but for the process watch.
    """

    def __init__(self, source: str, *, virtual: VirtualDetector | None = None, log_level: int | None = None):
        if not available():
            raise LivedenoiseError("--dectris-stream v1 with libertem-dectris: install livedenoise[dectris]")
        self.source = source
        self.virtual = virtual
        self._dir = Path(tempfile.mkdtemp(prefix="livedenoise-dectris-"))
        shm = Path("/dev/shm")
        self._ring_dir = Path(tempfile.mkdtemp(prefix="livedenoise-dectris-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
        self.endpoint = f"ipc://{self._dir / 'relay'}"
        spec = {
            "source": source, "relay": self.endpoint, "acks": f"ipc://{self._dir / 'acks'}", "shm": str(self._dir / "shm"),
            "rings": str(self._ring_dir),
        }
        code = "import sys; from livedenoise.detectors.dectris._relay import main; main(sys.argv[1:])"
        self._argv = [sys.executable, "-c", code, json.dumps(spec)]
        self._log_level = logging.getLogger().getEffectiveLevel() if log_level is None else log_level
        self.frames = 0  # detector frames decoded, over every process
        self.restarts = 0
        self._base = 0  # frames of the processes before this one
        self._open: int | None = None  # the series a start came for and no end yet
        self._rings: dict[str, np.ndarray] = {}  # ring name -> (slots, frames, H, W) view of its file
        self._died: collections.deque[tuple[str, bool]] = collections.deque()  # (why, planned), from the watch
        self._closing = threading.Event()
        self._acks = zmq.Context.instance().socket(zmq.PUSH)
        self._acks.setsockopt(zmq.LINGER, 0)
        self._acks.connect(spec["acks"])
        try:
            self._proc = self._spawn()
        except BaseException:
            self._acks.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            shutil.rmtree(self._ring_dir, ignore_errors=True)
            raise
        self._watch = threading.Thread(target=self._watchdog, name="dectris-receiver-watch", daemon=True)
        self._watch.start()

    # ------------------------------------------------------------------ the process

    def _spawn(self) -> subprocess.Popen:
        package_root = str(Path(__file__).resolve().parents[3])  # this livedenoise, however it was found
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, "LIVEDENOISE_LOG_LEVEL": str(self._log_level)}
        with contextlib.suppress(FileNotFoundError):
            (self._dir / "shm").unlink()  # a dead process's shared-memory socket
        proc = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        assert proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                line = proc.stdout.readline()
                break
        if not line.startswith("ready"):
            _stop(proc)
            raise LivedenoiseError(
                f"the libertem-dectris receiver process did not start ({line.strip() or f'exit code {proc.returncode}'}); "
                "serve --dectris-stream auto reads Stream v1 with the Python decoder"
            )
        log.info("DECTRIS Stream v1: libertem-dectris receiver process %d connected to %s", proc.pid, self.source)
        return proc

    def _watchdog(self) -> None:
        """Restart the receiver process whenever it ends, until :meth:`close`; a process that dies
        soon after its start waits longer before the next (0.5 s, doubling to 10 s). What the dead
        one held is settled by the receiver thread (:meth:`_settle`), at the new one's hello."""
        delay = 0.5
        while not self._closing.is_set():
            proc = self._proc
            started = time.monotonic()
            code = proc.wait()
            _stop(proc)  # its pipes
            if self._closing.is_set():
                return
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            planned = code == RECYCLE_EXIT
            if planned:
                log.info("the libertem-dectris receiver process %d is replaced (after %d failed series)", proc.pid, RECYCLE_AFTER)
            else:
                log.warning("the libertem-dectris receiver process %d ended (%s); restarting it", proc.pid, how)
            self._died.append((how, planned))
            delay = delay * 2 if time.monotonic() - started < 5 and not planned else 0.5
            while not self._closing.is_set():
                if self._closing.wait(min(delay, 10.0)):
                    return
                try:
                    self._proc = self._spawn()
                    if self._closing.is_set():  # close() came while it started
                        _stop(self._proc)
                        return
                    break
                except LivedenoiseError as exc:
                    log.warning("%s; trying again", exc)
                    delay = min(delay * 2, 10.0)

    @property
    def pid(self) -> int:
        """The receiver process's id (a new one after each restart)."""
        return self._proc.pid

    def close(self) -> None:
        """Stop the receiver process (its stdin closes: it exits; else killed) and clean up."""
        self._closing.set()
        _stop(self._proc)
        self._watch.join(5)
        self._acks.close()
        self._rings.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
        shutil.rmtree(self._ring_dir, ignore_errors=True)

    def counters(self) -> dict[str, Any]:
        return {"detector_frames": self.frames, "receiver": "libertem-dectris", "receiver_restarts": self.restarts}

    # ------------------------------------------------------------------ relay messages

    def feed(self, parts: Sequence[Buffer]) -> list[DetectorMessage | Skip | VirtualImage]:
        out: list[DetectorMessage | Skip | VirtualImage] = []
        try:
            head = msgpack.unpackb(parts[0])
            self._relay(head, head["k"], out)
        except MalformedMessage:
            raise
        except Exception as exc:  # noqa: BLE001 - our own process sent it, but a bad message is a skip, never a crash
            raise MalformedMessage(f"relay message does not decode ({type(exc).__name__}: {exc})") from None
        return out

    def _relay(self, head: dict, kind: str, out: list) -> None:
        if kind == "hello":
            while self._died:
                self._settle(*self._died.popleft(), out)
        self.frames = self._base + int(head.get("n", 0))
        vd = self.virtual
        if kind == "stack":
            self._stack(head, out)
        elif kind == "start":
            series, header = head["series"], head["header"]
            if vd is not None:
                out += vd.start(series)
                images = header.get("number_of_images", 0)
                if images > 0 and images % vd.positions:
                    log.warning("series of %d images: not a whole number of %dx%d scans; the last scan frame will be incomplete",
                                images, *vd.scan)
            self._open = series
            out.append(SeriesStart(series, header))
        elif kind == "end":
            series = head["series"]
            if vd is not None:
                out += vd.end(series)
            self._open = None
            out.append(SeriesEnd(series))
        elif kind == "skip":
            out.append(Skip(head["kind"], head["reason"], head["count"]))
        elif kind == "left" and vd is not None:  # a failed series: the scan frames it had to come
            after = -(-head["first"] // vd.positions) * vd.positions  # the open one: the virtual detector's
            scans = -(-(head["first"] + head["count"] - after) // vd.positions)
            if scans > 0:
                out.append(Skip("incomplete", f"series {head['series']}: {scans} more scan frames not received", scans))
        elif kind == "ring":
            self._map_ring(head)

    def _settle(self, how: str, planned: bool, out: list) -> None:
        """A receiver process ended: counted (``malformed`` unless planned), the series it had open
        ended (its open scan frame dropped), its rings let go."""
        self.restarts += 1
        self._base = self.frames
        self._rings.clear()
        if not planned:
            out.append(Skip("malformed", f"the libertem-dectris receiver process ended ({how}): restarted"))
        if self._open is not None:
            if self.virtual is not None:
                out += self.virtual.end(self._open)
            out.append(SeriesEnd(self._open))
            self._open = None

    def _map_ring(self, head: dict) -> None:
        dtype, shape = np.dtype(head["dtype"]), (head["slots"], head["frames"], *head["shape"])
        path = self._ring_dir / head["name"]
        if path.parent != self._ring_dir or int(np.prod(shape)) * dtype.itemsize > 2 * RING_BYTES:
            raise MalformedMessage(f"relay: a ring {head['name']!r:.40} of {shape} {dtype}")
        self._rings = {head["name"]: np.memmap(path, dtype, mode="r", shape=shape)}  # the process's earlier ones retired

    def _stack(self, head: dict, out: list) -> None:
        ring = self._rings.get(head["ring"])
        if ring is None:
            raise MalformedMessage("relay: a stack in a ring not announced")
        slot, n, first, series = head["slot"], head["n_frames"], head["first"], head["series"]
        try:
            patterns = ring[slot, :n]
            bad = head.get("bad")
            ids: int | np.ndarray = first
            if bad:
                good = np.ones(n, bool)
                good[bad] = False
                ids, patterns = first + np.flatnonzero(good), patterns[good]
            if self.virtual is not None:
                out += self.virtual.add_stack(series, ids, patterns)
            else:
                ids = np.arange(first, first + n) if isinstance(ids, int) else ids
                out += [ImageFrame(series, int(i), np.array(p)) for i, p in zip(ids, patterns)]  # copied: the slot goes back
        finally:
            with contextlib.suppress(zmq.Again):
                self._acks.send(msgpack.packb([head["ring"], slot]), zmq.NOBLOCK)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError, ValueError):
        if proc.stdin is not None:
            proc.stdin.close()  # the process exits when its stdin closes
    try:
        proc.wait(2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    with contextlib.suppress(OSError, ValueError):
        if proc.stdout is not None:
            proc.stdout.close()
