"""Recording: every published frame to disk, in chunks that survive ``kill -9`` at any moment.

Layout of a recording directory (``serve --record DIR``)::

    DIR/RECORDING.json                       marks the directory as a livedenoise recording
    DIR/index.jsonl                          one JSON line per closed chunk (append-only, fsynced)
    DIR/series_<sid>/<kind>_<run>_<seq>.tif  a chunk: consecutive frames of one series, one TIFF page each

``kind`` is ``denoised`` (float32 in [0, 1]) or ``raw`` (the input's dtype, with ``--record-raw``).
An index line lists the chunk's image ids and, where the detector sent them, the frames'
``start_times`` (ns) and the ``calibration`` map of the protocol (pixel size in nm, frame time in
s; a change of calibration closes the chunk, so one map holds for all its frames): what
``livedenoise export`` writes into a standard file.
A chunk is written under a temporary name (``*.tif.part``), flushed and fsynced, renamed
atomically (:func:`os.replace`) and the directory fsynced (not on Windows, which cannot open a
directory and journals NTFS metadata itself); only *then* is its index line appended
and fsynced. So at any instant every chunk named in the index is complete on disk, and a crash
leaves at most a ``.part`` file (ignored) and possibly a truncated last index line (ignored).
The ``recorded`` counter in the daemon's stats counts only frames in indexed chunks: every frame
reported as written is readable afterwards.

A chunk closes after ``chunk_frames`` frames, ``chunk_bytes`` bytes, ``chunk_seconds`` seconds
(so the last frames become durable at low frame rates too), when its series changes, and at
shutdown.

The recorder runs in its own thread behind a bounded queue (a side stage,
:class:`~livedenoise._stage.SideStage`), fed by a publisher hook (:meth:`Recorder.submit`):
writing never slows inference. Live mode: a full queue drops the frame
for the recording only (counted as ``record_overflow``; it was still published). Lossless mode:
``submit`` blocks, which holds the publisher, then inference, then the receiver and finally the
detector back (PULL high-water mark): no frame is lost from the recording either.

Examples
--------
>>> rec = Recorder(RecordingConfig(tmp / "run", raw=True))  # doctest: +SKIP
>>> rec.start(); publisher.hooks.append(rec.submit)  # doctest: +SKIP
>>> for series_id, image_id, frame in iter_frames(tmp / "run"): ...  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._options import option
from .._stage import SideStage
from ..errors import LivedenoiseError

log = logging.getLogger("livedenoise.recording")

MARKER = "RECORDING.json"
INDEX = "index.jsonl"
FORMAT = "livedenoise-recording"
VERSION = 1
KINDS = ("denoised", "raw")


@dataclass(slots=True)
class RecordingConfig:
    """``--record DIR``: every published frame to crash-safe chunks (:class:`Recorder`)."""

    directory: Path = option(help="Record every denoised frame into this directory (crash-safe chunks).")
    raw: bool = option(False, "Also record the raw frames.")
    chunk_frames: int = option(100, "Frames per recording chunk (a chunk also closes after --record-chunk-seconds).")
    chunk_seconds: float = option(1.0, "Seconds after which a recording chunk closes, however few its frames.")


# Windows: a directory cannot be opened (os.open raises PermissionError), and NTFS journals
# metadata changes such as renames itself, so there is no directory to fsync.
DIRECTORY_FSYNC = os.name != "nt"


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable: fsync the directory (POSIX; skipped on
    Windows, see :data:`DIRECTORY_FSYNC`)."""
    if not DIRECTORY_FSYNC:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Chunk:
    """One open chunk file: frames are written page by page, so memory stays bounded."""

    def __init__(self, final: Path, series_id: int, kind: str, calibration: dict[str, float] | None = None):
        import tifffile

        self.final = final
        self.part = final.with_name(final.name + ".part")
        self.series_id, self.kind = series_id, kind
        self.calibration = calibration  # the protocol's map, the same for every frame of the chunk
        self.image_ids: list[int] = []
        self.start_times: list[int | None] = []
        self.nbytes = 0
        self.opened = time.monotonic()
        self._fh = open(self.part, "wb")  # noqa: SIM115 - open across many writes; close() or abort() closes it
        self._tw = tifffile.TiffWriter(self._fh)

    def write(self, image_id: int, frame: np.ndarray, start_time: int | None = None) -> None:
        self._tw.write(frame, contiguous=False, metadata=None)
        self.image_ids.append(image_id)
        self.start_times.append(start_time)
        self.nbytes += frame.nbytes

    def close(self) -> None:
        """Complete the file durably under its final name (the caller then indexes it)."""
        self._tw.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.part, self.final)
        _fsync_dir(self.final.parent)

    def abort(self) -> None:
        try:
            self._fh.close()
        finally:
            self.part.unlink(missing_ok=True)


_Item = tuple[int, int, np.ndarray, np.ndarray, int | None, dict[str, float] | None]
"""(series_id, image_id, raw, denoised, start_time, calibration) of a frame waiting to be written."""


class Recorder(SideStage[_Item]):
    """Writes delivered frames to ``config.directory`` in its own thread (see the module docstring).

    Parameters
    ----------
    config : the directory (created if missing; an existing recording is appended to, under a new
        run token), whether raw frames are recorded too, and when a chunk closes (after
        ``chunk_frames`` frames or ``chunk_seconds``; also after ``chunk_bytes``).
    lossless : :meth:`submit` blocks when the queue is full instead of dropping.
    queue_size, queue_bytes : frames (and their bytes, raw + denoised) waiting to be written, at
        most; a single frame larger than ``queue_bytes`` is still taken, alone.

    Counters (written by the recorder thread, or by :meth:`submit` for ``overflow``):
    ``recorded`` / ``recorded_raw`` (frames in indexed chunks), ``overflow`` (frames not recorded
    because the queue was full, live mode, or because the writer thread had failed),
    ``errors`` (chunks lost to disk errors).

    An exception escaping the writer loop (a bug, not a disk error) ends the thread: what was
    queued is still written if it can be, open chunks are closed and indexed, :meth:`submit` stops
    blocking (lossless mode would otherwise hold the whole pipeline back), and the exception
    propagates to whoever started the thread (the daemon stops and reports it).
    """

    stage = "record"
    failure_level = logging.ERROR

    def __init__(
        self,
        config: RecordingConfig,
        *,
        lossless: bool = False,
        chunk_bytes: int = 256 << 20,
        queue_size: int = 256,
        queue_bytes: int = 128 << 20,
    ):
        super().__init__(
            capacity=queue_size, capacity_bytes=int(queue_bytes), when_full="block" if lossless else "drop", logger=log
        )
        self.directory = Path(config.directory)
        self.raw = config.raw
        self.lossless = lossless
        self.chunk_frames = max(1, int(config.chunk_frames))
        self.chunk_seconds = float(config.chunk_seconds)
        self.chunk_bytes = int(chunk_bytes)
        self.recorded = 0
        self.recorded_raw = 0
        self._open: dict[tuple[int, str], _Chunk] = {}
        self._seq = 0
        self._closed = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            marker = self.directory / MARKER
            if not marker.exists():
                tmp = marker.with_name(MARKER + ".part")
                tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION}) + "\n")
                os.replace(tmp, marker)
                _fsync_dir(self.directory)
            elif read_marker(self.directory) is None:
                raise LivedenoiseError(f"{marker} exists but is not a livedenoise recording marker")
            self._index_fd = os.open(self.directory / INDEX, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LivedenoiseError(f"cannot record into {self.directory}: {exc.strerror or exc}") from None
        self.run_token = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"

    @property
    def overflow(self) -> int:
        """Frames not recorded: the queue was full (live mode), or the writer thread had failed."""
        return self.skipped

    @property
    def errors(self) -> int:
        """Chunks lost to disk errors, and frames a bug kept from being written."""
        return self.failed

    # ------------------------------------------------------------------ producer side

    def submit(self, delivered) -> None:
        """Publisher hook: queue one :class:`~livedenoise.daemon.Delivered` frame for writing."""
        nbytes = delivered.denoised.nbytes + (delivered.raw.nbytes if self.raw else 0)
        calibration = delivered.calibration
        item = (
            delivered.series_id, delivered.image_id, delivered.raw, delivered.denoised,
            delivered.start_time, None if calibration is None else calibration.to_header(),
        )
        self._put(item, nbytes)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Write what is queued, close every open chunk, stop the thread. Idempotent."""
        if self._closed:
            return True
        self._closed = True
        if self._thread is None:
            self._close_all()
        elif not super().close(timeout):
            log.error("recorder did not finish within %s s", timeout)
            return False
        os.close(self._index_fd)
        return True

    def counters(self) -> dict[str, int]:
        return {
            "recorded": self.recorded,
            "recorded_raw": self.recorded_raw,
            "record_overflow": self.overflow,
            "record_errors": self.errors,
            "record_queue": self.waiting,
        }

    # ------------------------------------------------------------------ recorder thread

    def _handle(self, item: _Item) -> None:
        try:
            self._write(*item)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop recording (lossless would then block): counted, logged
            self._failed("recording frame %s of series %s failed", item[1], item[0], exc_info=exc)

    def _tick(self) -> None:
        try:
            self._close_expired()
        except Exception as exc:  # noqa: BLE001 - likewise
            self._failed("closing the recording's expired chunks failed", exc_info=exc)

    def _wait_s(self) -> float | None:
        return self._next_deadline()

    def _end(self) -> None:
        self._close_all()

    def _rescue(self, items: list[_Item]) -> None:
        """The thread is dying of an exception: write what was queued while the writing itself
        still works (the rest counts as ``overflow``)."""
        for i, item in enumerate(items):
            try:
                self._write(*item)
            except Exception:
                super()._rescue(items[i:])
                log.exception("recorder failed: %d queued frames not recorded", len(items) - i)
                return

    def _next_deadline(self) -> float | None:
        if not self._open:
            return None
        oldest = min(c.opened for c in self._open.values())
        return max(0.0, oldest + self.chunk_seconds - time.monotonic())

    def _write(
        self,
        series_id: int,
        image_id: int,
        raw: np.ndarray,
        denoised: np.ndarray,
        start_time: int | None = None,
        calibration: dict[str, float] | None = None,
    ) -> None:
        # a new series ends the others (close their chunks so they become durable now); a new
        # calibration ends the series' own, so that one index line's map holds for all its frames
        for key in [k for k, c in self._open.items() if k[0] != series_id or c.calibration != calibration]:
            self._finish(key)
        self._append(series_id, "denoised", image_id, denoised, start_time, calibration)
        if self.raw:
            self._append(series_id, "raw", image_id, raw, start_time, calibration)

    def _append(
        self,
        series_id: int,
        kind: str,
        image_id: int,
        frame: np.ndarray,
        start_time: int | None = None,
        calibration: dict[str, float] | None = None,
    ) -> None:
        key = (series_id, kind)
        chunk = self._open.get(key)
        try:
            if chunk is None:
                folder = self.directory / f"series_{series_id}"
                folder.mkdir(exist_ok=True)
                self._seq += 1
                chunk = _Chunk(folder / f"{kind}_{self.run_token}_{self._seq:06d}.tif", series_id, kind, calibration)
                self._open[key] = chunk
            chunk.write(image_id, frame, start_time)
        except (OSError, ValueError) as exc:
            self._fail(key, exc)
            return
        if len(chunk.image_ids) >= self.chunk_frames or chunk.nbytes >= self.chunk_bytes:
            self._finish(key)

    def _close_expired(self) -> None:
        now = time.monotonic()
        for key in [k for k, c in self._open.items() if now - c.opened >= self.chunk_seconds]:
            self._finish(key)

    def _close_all(self) -> None:
        for key in list(self._open):
            self._finish(key)

    def _finish(self, key: tuple[int, str]) -> None:
        chunk = self._open.pop(key)
        try:
            chunk.close()
            entry = {
                "series_id": chunk.series_id,
                "kind": chunk.kind,
                "file": chunk.final.relative_to(self.directory).as_posix(),
                "frames": len(chunk.image_ids),
                "image_ids": chunk.image_ids,
                "closed": time.time(),
            }
            if any(t is not None for t in chunk.start_times):
                entry["start_times"] = chunk.start_times
            if chunk.calibration:
                entry["calibration"] = chunk.calibration
            os.write(self._index_fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
            os.fsync(self._index_fd)
        except (OSError, ValueError) as exc:
            self._open[key] = chunk
            self._fail(key, exc)
            return
        if chunk.kind == "denoised":
            self.recorded += len(chunk.image_ids)
        else:
            self.recorded_raw += len(chunk.image_ids)

    def _fail(self, key: tuple[int, str], exc: Exception) -> None:
        """A disk error (full, removed): lose this chunk, log, count, keep serving."""
        self.failed += 1
        chunk = self._open.pop(key, None)
        log.error("recording %s of series %d failed: %s", key[1], key[0], exc)
        if chunk is not None:
            with contextlib.suppress(OSError):
                chunk.abort()


def read_marker(directory: Path) -> dict | None:
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == FORMAT else None
