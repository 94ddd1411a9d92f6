"""Quantum Detectors Merlin: its data port (MIB frames over TCP) read by libertem-qd-mpx.

The Merlin serves its frames on a TCP port (6342): per acquisition an acquisition header, then
each frame's header and pixels, in one of several pixel formats and chip layouts
(:mod:`._sender` writes them). LiberTEM's ``libertem-qd-mpx`` (MIT; the ``merlin``
extra) receives that stream in a Rust thread of its own into shared memory, in stacks of frames,
and decodes a stack's frames (raw 1/6/12-bit formats, quad layouts, big-endian integers) into a
numpy array of our choosing. :class:`MerlinStream` wraps it for the daemon's receiver thread:

* a helper thread (``ld-merlin``) holds the connection: it connects (``start_passive``), waits
  for an acquisition (``wait_for_arm``), takes its stacks (``get_next_stack``) and hands them over.
  The library's calls block (a stalled acquisition blocks ``get_next_stack`` until the detector
  sends again or hangs up), so they stay off the receiver thread, which :meth:`MerlinStream.poll`s
  and can always stop;
* the receiver thread decodes each stack's patterns straight into the virtual detector's batch
  rows (:func:`reduce_stack`, the one place this path uses :class:`VirtualDetector`) or, without a
  scan, into frames of their own, and releases the stack.

Each acquisition is a series (ids 1, 2, ... in the order they come; the Merlin has none of its
own), its patterns numbered from 0. What goes wrong is a :class:`Skip`, and the acquisition in
progress ends there (its open scan frame dropped, ``incomplete``): a stream that ends
(``disconnects``), a frame header or framing the library rejects, a frame of another size than the
acquisition's first, an acquisition header that is missing or does not parse (``malformed``), a
stack it cannot decode (``malformed``: the rest of that acquisition is skipped). The library then
connects again, as it does after every error.

Two limits of the library (0.3.2) shape this: ``QdConnection.close`` joins its thread holding the
GIL, and that thread, while it retries a connection to a detector that is not there, never looks
at the request to stop; so a connection is closed only once it was established, and otherwise left
to end with the process. And it does not expose a frame's sequence number: frames within an
acquisition are numbered as they arrive (gaps are not seen).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import LivedenoiseError, MalformedMessage
from ...protocol import DEFAULT_LIMITS, DetectorMessage, ImageFrame, Limits, SeriesEnd, SeriesStart
from .._base import Skip, check_shape
from .._virtual import VirtualDetector

log = logging.getLogger("livedenoise.detectors")

MERLIN_DATA_PORT = 6342
_ADDRESS = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[^:/\s]+):(\d{1,5})$")
_DTYPES = {"uint8": "|u1", "uint16": "<u2", "uint32": "<u4"}  # what a Merlin's frames decode to
_CONNECTION_LOST = ("EOF", "I/O error", "connection error", "Connection reset", "Broken pipe")


def load_qd_mpx() -> Any:
    """The ``libertem_qd_mpx`` module, or one clear error naming the extra. Its own log (to stderr,
    unthrottled) is off unless ``LIBERTEM_QD_LOG_LEVEL`` says otherwise: what it reports comes back
    as errors, which the daemon counts and logs."""
    os.environ.setdefault("LIBERTEM_QD_LOG_LEVEL", "off")
    try:
        import libertem_qd_mpx
    except ImportError:
        raise LivedenoiseError("--source-format merlin needs libertem-qd-mpx: pip install livedenoise[merlin]") from None
    return libertem_qd_mpx


def parse_data_address(address: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` (the Merlin's data port) as ``(host, port)``.

    >>> parse_data_address("tcp://merlin-pc:6342")
    ('merlin-pc', 6342)
    """
    match = _ADDRESS.match(address.strip())
    if match is None or not 0 < int(match[2]) < 65536:
        raise LivedenoiseError(
            f"--source {address!r}: a Merlin is read at tcp://HOST:PORT, its data port (usually {MERLIN_DATA_PORT})"
        )
    return match[1].strip("[]"), int(match[2])


def shutdown_connections(host: str, port: int) -> int:
    """Shut down this process's TCP connections to ``host:port`` (Linux; elsewhere none), so that a
    read blocked on one returns: the library's ``get_next_stack`` waits for a stalled acquisition
    with no way to be interrupted, and its thread must not be left inside it at exit (CPython ends
    such threads at finalization by unwinding through the library, which aborts the process).
    The connections are found by peer address in ``/proc/net/tcp*`` and by inode among our file
    descriptors. Returns how many were shut down."""
    try:
        peers = {info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
        inodes: set[str] = set()
        for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
            with contextlib.suppress(FileNotFoundError), open(table) as f:
                for line in list(f)[1:]:
                    fields = line.split()
                    address, peer_port = fields[2].split(":")
                    if int(peer_port, 16) == port and fields[3] == "01" and _proc_address(address, family) in peers:
                        inodes.add(fields[9])
        done = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}").removeprefix("socket:[").removesuffix("]") in inodes:
                    with socket.socket(fileno=os.dup(int(fd))) as sock:
                        sock.shutdown(socket.SHUT_RDWR)
                    done += 1
    except OSError:
        return 0
    return done


def _proc_address(hex_address: str, family: int) -> str:
    """An address of ``/proc/net/tcp*`` (32-bit words in host order, hex) as text."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)) if sys.byteorder == "little" else raw
    text = socket.inet_ntop(family, words)
    return text.removeprefix("::ffff:") if family == socket.AF_INET6 and text.startswith("::ffff:") and "." in text else text


def reduce_stack(
    virtual: VirtualDetector, series: int, first_id: int, count: int, shape: tuple[int, int], dtype: np.dtype,
    decode: Callable[[np.ndarray, int, int], None],
) -> list[ImageFrame | Skip]:
    """A stack of ``count`` patterns into the virtual detector, as images ``first_id`` on: decoded
    at once by ``decode(out, 0, count)`` straight into the stack buffer
    :meth:`VirtualDetector.stack_buffer` lends (a fresh array while it lends none: the weights wait
    for a series' first patterns) and reduced at once (:meth:`VirtualDetector.add_stack`: no Python
    per pattern). The one place the Merlin path calls the virtual detector."""
    buf = virtual.stack_buffer(series, count, shape, dtype)
    if buf is None:
        buf = np.empty((count, *shape), dtype)
    decode(buf, 0, count)
    return virtual.add_stack(series, first_id, buf)


class MerlinStream:
    """A Merlin's data port as the receiver's messages: :meth:`start` the connection's thread,
    :meth:`poll` for what arrived (:class:`SeriesStart`, frames or virtual images,
    :class:`SeriesEnd`, :class:`Skip`), :meth:`close`. ``poll`` runs on one thread (the receiver's).

    The library hands frames over in stacks that fill a slot of its shared memory (by bytes):
    ``slot_bytes`` must hold the largest frame (a quad's 514 x 514 u32 with gaps: 1.06 MB), and a
    slot of that size holds 17 single-chip u8 patterns, 8 u16, 2 quad u16 (more of small ROI
    frames: the stack goes when full or when its acquisition ends). ``shm_bytes``: all the slots,
    how far the library may run ahead of us before TCP holds the detector back.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        virtual: VirtualDetector | None = None,
        limits: Limits = DEFAULT_LIMITS,
        slot_bytes: int = 17 << 16,
        shm_bytes: int = 256 << 20,
        max_stack: int = 64,
    ):
        qd = load_qd_mpx()
        self.host, self.port = host, port
        self.virtual = virtual
        self.limits = limits
        self.frames = 0  # detector frames (patterns) decoded
        self.acquisitions = 0
        self._max_stack = max_stack
        self._events: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._series: int | None = None  # the acquisition in progress
        self._image_id = 0
        self._skipping = False  # the rest of this acquisition: it cannot be decoded
        bytes_per_frame = 1 << 16  # the library's slot is frame_stack_size x bytes_per_frame
        stack_frames = max(1, -(-slot_bytes // bytes_per_frame))
        workdir = tempfile.mkdtemp(prefix="livedenoise-merlin-")
        handle = os.path.join(workdir, "shm")
        try:
            self._conn = qd.QdConnection(
                data_host=host, data_port=port, frame_stack_size=stack_frames, shm_handle_path=handle,
                num_slots=max(8, shm_bytes // (stack_frames * bytes_per_frame)), bytes_per_frame=bytes_per_frame,
            )
            self._client = qd.CamClient(handle)
        except Exception as exc:  # noqa: BLE001 - the library raises its own exception types
            raise LivedenoiseError(f"libertem-qd-mpx cannot set up its shared memory: {exc}") from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)  # the client is attached: nothing else will open the handle
        self._thread = threading.Thread(target=self._connection, name="ld-merlin", daemon=True)

    def counters(self) -> dict[str, int]:
        return {"detector_frames": self.frames, "acquisitions": self.acquisitions}

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 1.0) -> bool:
        """Stop, and wait up to ``timeout`` s for the connection's thread to close the connection
        (it does as soon as its call returns: at once between acquisitions, while a stalled
        acquisition holds it until the detector sends or hangs up). True where it finished."""
        self._stop.set()
        if self._thread.ident is None:  # never started
            self._close_connection(connected=True)
            return True
        self._thread.join(timeout)
        if self._thread.is_alive() and shutdown_connections(self.host, self.port):  # a stalled acquisition
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("Merlin at %s:%d: the connection's thread did not finish", self.host, self.port)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ the connection's thread

    def _connection(self) -> None:
        """Connect, wait for acquisitions and hand their stacks over, until :meth:`close`."""
        conn, put, stop = self._conn, self._events.put, self._stop
        # whether the library's thread is known not to be retrying a connection (then close() is
        # safe): after a connection, an acquisition or an error; not after a start that timed out
        connected = True
        need_start = True
        failures = 0  # errors in a row without an acquisition: the wait before trying again doubles
        try:
            while not stop.is_set():
                try:
                    if need_start:
                        need_start, connected = False, False
                        try:
                            conn.start_passive(timeout=0.5)
                            connected = True
                        except Exception as exc:
                            if "timed out" not in str(exc):
                                raise
                            log.info("Merlin at %s:%d: waiting for its data port", self.host, self.port)
                    config = conn.wait_for_arm(timeout=0.2)
                    if config is None:
                        continue
                    connected, failures = True, 0
                    put(("start", config))
                    while True:
                        stack = conn.get_next_stack(self._max_stack)
                        if stack is None:
                            put(("end",))
                            break
                        put(("stack", stack))
                        if stop.is_set():
                            return
                except Exception as exc:  # noqa: BLE001 - a stream error: the library connects again
                    put(("error", str(exc)))
                    need_start, connected = True, True  # its thread is idle now, waiting to be started
                    stop.wait(min(2.0, 0.05 * 2**failures))
                    failures += 1
        finally:
            self._close_connection(connected)

    def _close_connection(self, connected: bool) -> None:
        if connected:
            try:
                self._conn.close()
            except Exception as exc:  # noqa: BLE001 - closing twice, or the library's thread gone
                log.debug("libertem-qd-mpx close: %s", exc)
        else:
            log.info("Merlin at %s:%d never answered: its connection attempt ends with the process", self.host, self.port)

    # ------------------------------------------------------------------ the receiver's thread

    def poll(self, timeout: float) -> list[DetectorMessage | Skip]:
        """What arrived: waits up to ``timeout`` s for the first event, then takes those already
        there, up to 4 (stacks of up to 64 patterns each: the scan frames they complete go out
        with little delay)."""
        out: list[DetectorMessage | Skip] = []
        get = self._events.get
        try:
            self._event(get(timeout=timeout), out)
            for _ in range(3):
                self._event(get(block=False), out)
        except queue.Empty:
            pass
        return out

    def _event(self, event: tuple, out: list) -> None:
        kind = event[0]
        if kind == "stack":
            stack = event[1]
            try:
                if not self._skipping:
                    self._stack(stack, out)
            except MalformedMessage as exc:
                self._give_up(str(exc), out)
            finally:
                self._client.done(stack)
        elif kind == "start":
            self._start(event[1], out)
        elif kind == "end":
            self._end(out)
        else:
            reason = event[1]
            lost = any(s in reason for s in _CONNECTION_LOST)
            where = "" if self._series is None else f"acquisition {self._series} after {self._image_id} frames: "
            if self._series is not None:
                out += self.virtual.end(self._series) if self.virtual is not None else []
                out.append(SeriesEnd(self._series))
                self._series = None
            out.append(Skip("disconnects" if lost else "malformed", f"Merlin stream: {where}{reason}"))

    def _start(self, config: Any, out: list) -> None:
        self.acquisitions += 1
        series = self.acquisitions
        frames = int(config.frames_in_acquisition())
        shape = tuple(int(v) for v in config.detector_shape())
        nav = config.nav_shape()
        if self._series is not None:  # not ended (cannot happen: the library ends or fails each one)
            self._end(out)
        self._series, self._image_id, self._skipping = series, 0, False
        header: dict[str, Any] = {"stream": "merlin", "frames_in_acquisition": frames, "detector_shape": list(shape)}
        if nav is not None:
            header["scan"] = [int(nav[0]), int(nav[1])]
        if self.virtual is not None:
            out += self.virtual.start(series)
            vd = self.virtual
            if frames and frames % vd.positions:
                log.warning(
                    "Merlin acquisition of %d frames: not a whole number of %dx%d scans; the last scan frame will be incomplete",
                    frames, *vd.scan,
                )
            if nav is not None and tuple(nav) != vd.scan:
                log.warning("Merlin acquisition header says a %dx%d scan, --scan says %dx%d", *nav, *vd.scan)
        out.append(SeriesStart(series, header))

    def _end(self, out: list) -> None:
        series, self._series = self._series, None
        if series is None:
            return
        if self.virtual is not None:
            out += self.virtual.end(series)
        out.append(SeriesEnd(series))

    def _give_up(self, reason: str, out: list) -> None:
        """This acquisition cannot be decoded: its open scan frame goes, the rest of it is skipped."""
        self._skipping = True
        if self.virtual is not None and self._series is not None:
            out += self.virtual.end(self._series)
        out.append(Skip("malformed", f"Merlin acquisition {self._series}: {reason}; the rest of it is skipped"))

    def _stack(self, stack: Any, out: list) -> None:
        if self._series is None:
            raise MalformedMessage("frames outside an acquisition")
        count = len(stack)
        width, height = (int(v) for v in stack.get_shape())
        name = stack.get_dtype_string()
        if name not in _DTYPES:
            raise MalformedMessage(f"frames of {name}, not a pixel type of the pipeline")
        shape = check_shape(height, width, self.limits)
        dtype = np.dtype(_DTYPES[name])
        client, series, first = self._client, self._series, self._image_id

        def decode(into: np.ndarray, start: int, end: int) -> None:
            try:
                client.decode_range_into_buffer(stack, into, start, end)
            except Exception as exc:  # noqa: BLE001 - the library's decode error (a format it does not read)
                raise MalformedMessage(str(exc).removeprefix("decode failed: ")) from None

        if self.virtual is not None:
            out += reduce_stack(self.virtual, series, first, count, shape, dtype, decode)
        else:
            frames = np.empty((count, *shape), dtype)
            decode(frames, 0, count)
            out += [ImageFrame(series_id=series, image_id=first + i, data=frames[i]) for i in range(count)]
        self._image_id += count
        self.frames += count
