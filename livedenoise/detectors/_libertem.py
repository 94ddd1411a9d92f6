"""DECTRIS Stream v1 through libertem-dectris's Rust receiver, in a receiver process of its own.

libertem-dectris (MIT, by the authors of LiberTEM-live) receives a SIMPLON Stream v1 in a Rust
thread (``DectrisConnection``, passive mode: it latches on to each series' ``dheader-1.0``), writes
the compressed patterns into shared memory as frame stacks, and decompresses a stack in Rust
(``CamClient.decode_range_into_buffer``). :func:`main` runs that in a child process of ``serve``,
decompressing each stack straight into the :class:`VirtualDetector`'s stack buffer and reducing it
there, and relays what comes out (series, virtual images, skips; without a scan each detector
frame) over a ZeroMQ PUSH socket on an ``ipc://`` endpoint. :class:`LibertemReceiver` is the
``serve`` side: it starts the process, is the receiver's decoder for the relay, and restarts the
process when it ends.

Why a process: ``get_next_stack`` blocks in Rust with no timeout and cannot be interrupted from
another thread, so a stream that stops mid-series would hold a receiver thread for good;
libertem-dectris's receiver thread panics when a series' footer is late; and its decoder hands
each blob to bitshuffle's C code unchecked, which reads past a blob whose block lengths lie (the
Python decoder walks the framing first). In a process of its own, none of that reaches ``serve``:
the process is stopped at shutdown, and one that dies is counted (``receiver_restarts``), logged
and started again. It also has a GIL and a BLAS of its own (one thread: ``OPENBLAS_NUM_THREADS=1``,
so the virtual detector uses a gemv), and ``serve``'s threads keep theirs.

What libertem-dectris does not do, and how it is counted (the Python decoder reads all of it):

* ``header_detail`` must be ``basic``: with ``all`` (the pixel mask, flatfield and count-rate
  tables in the header) or ``none`` each series fails at its header (``malformed``, logged with the
  fix: ``basic``, or ``--dectris-stream auto``). Stream v2 is not read at all.
* a jump in a series' frame ids ends the series there (Rust): the open scan frame and the scans
  the series had left are ``incomplete``, the jump one ``gaps``; gaps are not filled.
* a series that ends early (its ``dseries_end-1.0`` before the last image): its open scan frame is
  ``incomplete``, as with the Python decoder; a series restarted before its end (a new
  ``dheader-1.0``) costs the new series too, whose header the failed one took (``malformed``);
  a stream that stops mid-series and never ends holds the series' last stack until the next
  header comes (then as above).
* images of a series whose header is lost are dropped in Rust unseen; the series is counted
  (``malformed``) when the next header shows the jump in series ids.
* a stack whose decompression fails is decompressed pattern by pattern: the bad ones are
  ``malformed`` and leave gaps (filled, as the Python decoder's); one whose framing sends bitshuffle
  outside memory ends the process (restarted, the open scan frame ``incomplete``).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import logging
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from ..errors import LivedenoiseError, MalformedMessage
from ..protocol import Buffer, DetectorMessage, ImageFrame, SeriesEnd, SeriesStart
from ._base import Skip, VirtualImage
from ._virtual import Annulus, VirtualDetector, Weights

log = logging.getLogger("livedenoise.detectors")

STACK = 128  # patterns per frame stack: Python's cost per stack (~40 us) spread thin, 2.4-9.4 MB of u16 at 96²-192²
SLOT_BYTES = 8 << 20  # one shared-memory slot holds a stack: 128 compressed patterns, or one raw 2048² u16 frame
SLOTS = 64  # 512 MiB of address space; pages are touched only as stacks fill them (~1-3 MiB used)
STACK_LATENCY = datetime.timedelta(milliseconds=20)  # a slow stream's stack closes after this (at its next pattern)
READY_TIMEOUT_S = 30.0  # a receiver process that has not connected by then is an error at start
MAX_SERIES_JUMP = 1000  # series ids that jump further are a detector restart, not lost headers
RECYCLE_AFTER = 8  # failed series after which the process is replaced (each leaks a shared-memory slot in Rust)
RECYCLE_EXIT = 4  # its exit code then: a planned restart


def available() -> bool:
    """Is libertem-dectris installed (without importing it here), on a system with ``ipc://`` and
    ``select`` on pipes (POSIX)?"""
    return os.name == "posix" and importlib.util.find_spec("libertem_dectris") is not None


# --------------------------------------------------------------------------- the relay format
# [msgpack header] or [msgpack header, pixels]; header "k": start, end, frame, virtual, skip, hello;
# "n": detector frames the process has decoded so far.


def _pack(message: str, n: int, /, **fields: Any) -> bytes:
    return msgpack.packb({"k": message, "n": n, **fields})


def _array_fields(data: np.ndarray) -> dict[str, Any]:
    return {"shape": list(data.shape), "dtype": data.dtype.str}


# --------------------------------------------------------------------------- serve's side


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """What the receiver process needs: the detector's address and, for 4D-STEM, the virtual
    detector's scan, detectors (annuli, or weights saved as ``.npy`` by :class:`LibertemReceiver`)
    and centre."""

    source: str
    scan: tuple[int, int] | None = None
    detectors: tuple[Annulus | Weights, ...] = ()
    centre: tuple[float, float] | None = None
    centre_frames: int = 16


class LibertemReceiver:
    """``serve``'s decoder for Stream v1 read by libertem-dectris: starts the receiver process,
    turns its relay messages back into the receiver's messages, restarts it when it ends.

    :attr:`endpoint` is where the daemon's receiver connects (PULL) instead of the detector.
    Construction waits until the process has connected to the detector, so a process that cannot
    start is an error at start (:class:`~livedenoise.errors.LivedenoiseError`). :meth:`close`
    stops it.
    """

    def __init__(self, config: ReceiverConfig, *, log_level: int | None = None):
        if not available():
            raise LivedenoiseError("--dectris-stream v1 with libertem-dectris: install livedenoise[dectris]")
        self.config = config
        self._dir = Path(tempfile.mkdtemp(prefix="livedenoise-dectris-"))
        self.endpoint = f"ipc://{self._dir / 'relay'}"
        code = "import sys; from livedenoise.detectors._libertem import main; main(sys.argv[1:])"
        self._argv = [sys.executable, "-c", code, json.dumps(self._spec(config))]
        self._log_level = logging.getLogger().getEffectiveLevel() if log_level is None else log_level
        self.frames = 0  # detector frames decoded, over every process
        self.restarts = 0
        self._base = 0  # frames of the processes before this one
        self._open: int | None = None  # the series a start was relayed for and no end yet
        self._lost: list[Skip | SeriesEnd] = []  # what a dead process cost, handed out with the next message
        self._lock = threading.Lock()
        self._closing = threading.Event()
        try:
            self._proc = self._spawn()
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._watch = threading.Thread(target=self._watchdog, name="dectris-receiver-watch", daemon=True)
        self._watch.start()

    def _spec(self, config: ReceiverConfig) -> dict[str, Any]:
        detectors = []
        for i, d in enumerate(config.detectors):
            if isinstance(d, Annulus):
                detectors.append({"annulus": [d.inner, d.outer], "name": d.name})
            else:
                path = self._dir / f"weights{i}.npy"
                np.save(path, np.asarray(d.weights, np.float32), allow_pickle=False)
                detectors.append({"weights": str(path), "name": d.name})
        return {
            "source": config.source, "relay": f"ipc://{self._dir / 'relay'}", "shm": str(self._dir / "shm"),
            "scan": list(config.scan) if config.scan else None, "detectors": detectors,
            "centre": list(config.centre) if config.centre else None, "centre_frames": config.centre_frames,
        }

    def _spawn(self) -> subprocess.Popen:
        package_root = str(Path(__file__).resolve().parents[2])  # this livedenoise, however it was found
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
        env = {
            **os.environ, "PYTHONPATH": path, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "LIVEDENOISE_LOG_LEVEL": str(self._log_level),
        }
        with contextlib.suppress(FileNotFoundError):
            (self._dir / "shm").unlink()  # a dead process's shared-memory socket
        proc = subprocess.Popen(
            self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
        )
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
        log.info("DECTRIS Stream v1: libertem-dectris receiver process %d connected to %s", proc.pid, self.config.source)
        return proc

    def _watchdog(self) -> None:
        """Restart the receiver process whenever it ends, until :meth:`close`; a process that dies
        soon after its start waits longer before the next (0.5 s, doubling to 10 s)."""
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
            with self._lock:
                self.restarts += 1
                self._base = self.frames
                if not planned:
                    self._lost.append(Skip("malformed", f"the libertem-dectris receiver process ended ({how}): restarted"))
                if self._open is not None:
                    self._lost.append(Skip("incomplete", f"series {self._open}: the scan frame the receiver process held is lost"))
                    self._lost.append(SeriesEnd(self._open))
                    self._open = None
            delay = delay * 2 if time.monotonic() - started < 5 and not planned else 0.5
            while not self._closing.is_set():
                if self._closing.wait(min(delay, 10.0)):
                    return
                try:
                    self._proc = self._spawn()
                    break
                except LivedenoiseError as exc:
                    log.warning("%s; trying again", exc)
                    delay = min(delay * 2, 10.0)

    @property
    def pid(self) -> int:
        """The receiver process's id (a new one after each restart)."""
        return self._proc.pid

    def close(self) -> None:
        """Stop the receiver process (its stdin closes: it exits; else terminated) and clean up."""
        self._closing.set()
        _stop(self._proc)
        self._watch.join(5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def counters(self) -> dict[str, Any]:
        return {"detector_frames": self.frames, "receiver": "libertem-dectris", "receiver_restarts": self.restarts}

    def feed(self, parts: Sequence[Buffer]) -> list[DetectorMessage | Skip | VirtualImage]:
        out: list[DetectorMessage | Skip | VirtualImage] = []
        if self._lost:
            with self._lock:
                out += self._lost
                self._lost = []
        try:
            head = msgpack.unpackb(parts[0])
            kind = head["k"]
        except Exception as exc:  # noqa: BLE001 - msgpack raises several types; our own process sent it
            raise MalformedMessage(f"relay message does not decode ({type(exc).__name__})") from None
        with self._lock:
            self.frames = self._base + int(head.get("n", 0))
        if kind == "frame" or kind == "virtual":
            data = _relay_array(head, parts)
            if kind == "frame":
                out.append(ImageFrame(series_id=head["series"], image_id=head["image"], data=data))
            else:
                out.append(VirtualImage(head["series"], head["image"], head["index"], head["name"], data))
        elif kind == "skip":
            out.append(Skip(head["kind"], head["reason"], head["count"]))
        elif kind == "start":
            self._open = head["series"]
            out.append(SeriesStart(head["series"], head["header"]))
        elif kind == "end":
            self._open = None
            out.append(SeriesEnd(head["series"]))
        return out


def _relay_array(head: dict, parts: Sequence[Buffer]) -> np.ndarray:
    if len(parts) != 2:
        raise MalformedMessage("relay image without its pixels")
    dtype, shape = np.dtype(head["dtype"]), tuple(head["shape"])
    view = memoryview(parts[1]).cast("B")
    if view.nbytes != int(np.prod(shape)) * dtype.itemsize:
        raise MalformedMessage("relay image of the wrong size")
    return np.frombuffer(view, dtype).reshape(shape)


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


# --------------------------------------------------------------------------- the receiver process

_FRAME_ID = re.compile(r"got (\d+), expected (\d+)")
_NEW_SERIES = re.compile(r'"series"\s*:\s*(\d+)')


class _Relay:
    """The receiver process's side: libertem-dectris in, relay messages out."""

    def __init__(self, spec: dict[str, Any]):
        import libertem_dectris

        self.ld = libertem_dectris
        self.spec = spec
        self.frames = 0
        self.ctx = zmq.Context()
        self.out = self.ctx.socket(zmq.PUSH)
        self.out.setsockopt(zmq.LINGER, 2000)
        self.out.setsockopt(zmq.SNDHWM, 1000)  # then blocks: back-pressure to the stream (serve --lossless)
        self.out.bind(spec["relay"])
        self.vd: VirtualDetector | None = None
        if spec["scan"]:
            detectors: list[Annulus | Weights] = []
            for d in spec["detectors"]:
                if "annulus" in d:
                    detectors.append(Annulus(*d["annulus"], name=d["name"]))
                else:
                    detectors.append(Weights(np.load(d["weights"], allow_pickle=False), name=d["name"]))
            centre = tuple(spec["centre"]) if spec["centre"] else None
            self.vd = VirtualDetector(
                tuple(spec["scan"]), detectors=detectors, centre=centre, centre_frames=spec["centre_frames"], blas=True,  # type: ignore[arg-type]
            )
        self.conn = libertem_dectris.DectrisConnection(
            uri=spec["source"], frame_stack_size=STACK, handle_path=spec["shm"], max_latency_per_stack=STACK_LATENCY,
            num_slots=SLOTS, bytes_per_frame=SLOT_BYTES // STACK, huge=False,
        )
        self.client = libertem_dectris.CamClient(self.conn.get_socket_path())
        self.conn.start_passive()
        self.last_series: int | None = None
        self.failures = 0  # failed series (RECYCLE_AFTER)

    # ------------------------------------------------------------------ sending

    def send(self, msgs: Sequence[Any]) -> None:
        out, n = self.out, self.frames
        for m in msgs:
            kind = type(m)
            if kind is ImageFrame:
                out.send_multipart([_pack("frame", n, series=m.series_id, image=m.image_id, **_array_fields(m.data)), m.data], copy=False)
            elif kind is VirtualImage:
                out.send_multipart(
                    [_pack("virtual", n, series=m.series_id, image=m.image_id, index=m.index, name=m.name, **_array_fields(m.data)), m.data],
                    copy=False,
                )
            elif kind is Skip:
                out.send(_pack("skip", n, kind=m.kind, reason=m.reason, count=m.count))

    def skip(self, kind: str, reason: str, count: int = 1) -> None:
        log.warning("%s", reason)
        self.send([Skip(kind, reason, count)])

    # ------------------------------------------------------------------ series

    def run(self) -> None:
        print("ready", flush=True)
        self.out.send(_pack("hello", self.frames))  # serve hands out what a dead predecessor cost
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
        vd, n_images = self.vd, int(config.get_num_frames())
        if self.last_series is not None and 0 < series - self.last_series - 1 <= MAX_SERIES_JUMP:
            lost = series - self.last_series - 1
            self.skip("malformed", f"series {self.last_series + 1}-{series - 1}: no header seen, their images were not read "
                      "(libertem-dectris reads a series from its header only)", lost)
        self.last_series = series
        header = {"stream": "dectris v1", "receiver": "libertem-dectris", "number_of_images": n_images}
        if vd is not None:
            self.send(vd.start(series))
            if n_images > 0 and n_images % vd.positions:
                log.warning("series of %d images: not a whole number of %dx%d scans; the last scan frame will be incomplete",
                            n_images, *vd.scan)
        self.out.send(_pack("start", self.frames, series=series, header=header))
        got = 0
        try:
            while (handle := self.conn.get_next_stack(max_size=STACK)) is not None:
                got += self.stack(handle, series, got)
        except Exception as exc:  # noqa: BLE001 - the series failed in Rust: count it, go on with the next
            self.failed_series(series, str(exc), got, n_images)
            self.rearm()
        if vd is not None:
            self.send(vd.end(series))
        self.out.send(_pack("end", self.frames, series=series))

    def failed_series(self, series: int, error: str, got: int, n_images: int) -> None:
        if "background thread is dead" in error:
            log.error("libertem-dectris's receiver thread ended (%s): the receiver process restarts", error)
            sys.exit(3)
        left = 0
        vd = self.vd
        if vd is not None and n_images > got:
            first_left = -(-got // vd.positions) * vd.positions  # the scan after the open one
            left = max(0, -(-(n_images - first_left) // vd.positions))
        if "frame id mismatch" in error:
            m = _FRAME_ID.search(error)
            jump = f"image {m[1]} after {int(m[2]) - 1}" if m else "a jump in its frame ids"
            self.skip("gaps", f"series {series}: {jump}; libertem-dectris gives the rest of the series up")
        elif "dseries_end" in error:
            log.info("series %d ended after %d of %d images", series, got, n_images)
            left = 0  # ended early on purpose: only the open scan frame, counted by the virtual detector
        elif "dheader" in error:
            m = _NEW_SERIES.search(error)
            new = f"series {m[1]}" if m else "a new series"
            self.skip("malformed", f"series {series}: {new} started before this one ended; libertem-dectris "
                      "loses the new one (its header went with the failed series)")
            if m:
                self.last_series = int(m[1])  # counted here: not again as a series without its header
        else:
            self.skip("malformed", f"series {series} failed after {got} images: {error[:300]}")
        if left:
            self.skip("incomplete", f"series {series}: {left} more scan frames not received", left)

    # ------------------------------------------------------------------ stacks

    def stack(self, handle: Any, series: int, first: int) -> int:
        """Decompress one stack (into the virtual detector's stack buffer) and reduce or relay it."""
        n = len(handle)
        width, height = handle.get_shape()
        shape, dtype = (int(height), int(width)), np.dtype(handle.get_dtype_string())
        vd = self.vd
        buf = vd.stack_buffer(series, n, shape, dtype) if vd is not None else None
        if buf is None:
            buf = np.empty((n, *shape), dtype)
        good: np.ndarray | None = None
        try:
            self.client.decode_range_into_buffer(handle, buf, 0, n)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            good = self.one_by_one(handle, buf, series, first)
        finally:
            self.client.done(handle)
        self.frames += n
        ids: int | np.ndarray = first
        if good is not None:
            ids, buf = first + np.flatnonzero(good), buf[good]
        if vd is not None:
            self.send(vd.add_stack(series, ids, buf))
        else:
            ids = np.arange(first, first + n) if isinstance(ids, int) else ids
            self.send([ImageFrame(series, int(i), frame) for i, frame in zip(ids, buf)])
        return n

    def one_by_one(self, handle: Any, buf: np.ndarray, series: int, first: int) -> np.ndarray:
        good = np.ones(len(buf), bool)
        error = ""
        for i in range(len(buf)):
            try:
                self.client.decode_range_into_buffer(handle, buf[i : i + 1], i, i + 1)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                good[i] = False
                error = error or " ".join(str(exc).split())[:200]
        bad = np.flatnonzero(~good)
        if len(bad):
            more = f" (and {len(bad) - 1} more in this stack)" if len(bad) > 1 else ""
            self.skip("malformed", f"series {series}: image {first + bad[0]} does not decompress{more}: {error}", len(bad))
        return good


def _exit_when_orphaned() -> None:
    """The process ends when serve does: its stdin (a pipe from serve) closes."""

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    level = int(os.environ.get("LIVEDENOISE_LOG_LEVEL", logging.INFO))
    logging.basicConfig(level=level, format="%(asctime)s dectris-receiver %(levelname)s %(message)s", stream=sys.stderr)
    _exit_when_orphaned()
    try:
        relay = _Relay(json.loads(argv[0]))
    except Exception as exc:  # noqa: BLE001 - told to serve in one line
        print(f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}", flush=True)
        sys.exit(2)
    relay.run()

