"""What runs on a worker: open a movie, prepare its output, denoise a range of its frames, check
the finished output (CSS and ``serve``'s guard, as ``denoise`` reports them for one file).

Every function here takes paths and small values and returns small values: frames are read and
written on the worker, from and to shared storage, never sent to or from the client. A worker
process keeps one :class:`~livedenoise.engine.Engine` per (model, provider, batch, threads)
(:func:`engine_for`: loaded on the worker's first task, reused by every later one) and the last
few movies it opened (:func:`frames_of`).

Bit-for-bit equal to ``denoise``'s single process: a range starts at a multiple of ``max_batch``
and is fed to the engine in the same batches (the engine's output does not depend on the batch or
thread count on the CPU either, tests/system/test_archive.py), as the same wire dtype; a
``k``-frame model first gets the ``k - 1`` frames before the range as history (their outputs
dropped), with its series restarted, so each frame sees the history the single pass gave it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LivedenoiseError, short_error

MOVIES_KEPT = 2  # open movies per worker (a TIFF that cannot be memory-mapped is held in memory)
GUARD_FRAMES = 256  # the guard reads the first this many frames of a file, as serve scores a stream's first seconds
CSS_CHUNK = GUARD_FRAMES  # frames of the output read at once for CSS: the first chunk is the guard's


@dataclass(frozen=True, slots=True)
class DenoiseSpec:
    """The model and how to run it: the same for every task of a job (small, sent with each)."""

    model: str
    provider: str | None = None
    max_batch: int = 8
    threads: int = 0  # onnxruntime intra-op threads per worker (0: one per core)
    signal: str | None = None
    format: str = "tif"  # "tif" or "zarr"


@dataclass(frozen=True, slots=True)
class Prepared:
    """What :func:`prepare` learnt about one input (sent back to the client: a few numbers)."""

    frames: int
    shape: tuple[int, int, int]
    describe: str
    pixel_size_nm: float | None
    frame_time_s: float | None
    model_name: str
    model_pixel_size_nm: float | None
    provider: str
    work_s: float


@dataclass(frozen=True, slots=True)
class Checked:
    """What :func:`check` found in one finished output (a few numbers, sent to the client)."""

    css_mean: float | None  # mean CSS of consecutive denoised frames; None: a single frame
    guard: str  # the guard's state: fits, does not fit, undecided, unknown
    guard_message: str
    model_db: float | None  # the ground-truth-free score of the model and of the best causal filter
    filter_db: float | None
    work_s: float


_lock = threading.Lock()  # guards the caches; each engine has its own lock (one range at a time)
_engines: dict[tuple, tuple[Any, threading.Lock]] = {}
_movies: OrderedDict[tuple, Any] = OrderedDict()


def engine_for(spec: DenoiseSpec) -> tuple[Any, threading.Lock]:
    """This worker's engine for ``spec`` and the lock that gives one task at a time its history."""
    from ..engine import Engine

    key = (spec.model, spec.provider, spec.max_batch, spec.threads)
    with _lock:
        hit = _engines.get(key)
        if hit is None:
            hit = (Engine(spec.model, provider=spec.provider, max_batch=spec.max_batch, threads=spec.threads), threading.Lock())
            _engines[key] = hit
        return hit


def engines_loaded() -> int:
    """Engines built in this process so far (one per model and settings: not one per task)."""
    return len(_engines)


def frames_of(path: str, signal: str | None) -> Any:
    """The ``(T, H, W)`` frames of ``path``, lazily where the format allows: ``.npy`` and
    uncompressed TIFF memory-mapped, h5py and dask arrays as they come; kept for later ranges."""
    from ..io import open_movie

    st = os.stat(path)
    key = (path, signal, st.st_mtime_ns, st.st_size)
    with _lock:
        data = _movies.get(key)
        if data is not None:
            _movies.move_to_end(key)
            return data
    data = _tiff_memmap(path) if Path(path).suffix.lower() in (".tif", ".tiff") else None
    if data is None:
        data = open_movie(path, "movie", signal=signal).data
    with _lock:
        _movies[key] = data
        while len(_movies) > MOVIES_KEPT:
            _movies.popitem(last=False)
    return data


def _tiff_memmap(path: str) -> np.ndarray | None:
    """The first series of an uncompressed, contiguous TIFF as a read-only memory map (what
    :func:`~livedenoise.io.open_movie` reads into memory), or None: then the file is read whole."""
    import tifffile

    try:
        arr = tifffile.memmap(path, mode="r")
    except Exception:  # noqa: BLE001 - compressed, tiled or not contiguous: tifffile refuses; read it whole
        return None
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim > 3 and all(s == 1 for s in arr.shape[:-3]):
        return arr.reshape((-1, *arr.shape[-2:]))
    return arr if arr.ndim == 3 and arr.shape[-1] not in (3, 4) else None


def _read(data: Any, path: str, start: int, stop: int) -> np.ndarray:
    from ..io import to_wire_dtype

    try:
        chunk = np.asarray(data[start:stop])
    except Exception as exc:  # noqa: BLE001 - a lazy read fails only now: truncated or damaged file
        raise LivedenoiseError(f"cannot read frames {start}:{stop} of {path}: {short_error(exc)}") from None
    return to_wire_dtype(chunk, path)


def prepare(spec: DenoiseSpec, src: str, tmp: str) -> Prepared:
    """Open ``src`` (any format :func:`~livedenoise.io.open_movie` reads), load the engine, and
    create the output ``tmp`` at its full size with the input's calibration (frames written later
    by :func:`denoise_range`, in place)."""
    from ..io import open_movie
    from ._outputs import create_output

    t0 = time.perf_counter()
    movie = open_movie(src, "movie", signal=spec.signal)
    engine, _ = engine_for(spec)
    create_output(
        spec.format, tmp, movie.shape, pixel_size_nm=movie.pixel_size_nm, frame_time_s=movie.frame_time_s,
        info=f"livedenoise denoise {Path(src).name} (model {engine.name})", chunk_frames=spec.max_batch,
    )
    return Prepared(
        frames=len(movie), shape=movie.shape, describe=movie.describe(), pixel_size_nm=movie.pixel_size_nm,
        frame_time_s=movie.frame_time_s, model_name=engine.name, model_pixel_size_nm=engine.card.pixel_size_nm,
        provider=engine.provider, work_s=time.perf_counter() - t0,
    )


def denoise_range(spec: DenoiseSpec, src: str, tmp: str, start: int, stop: int) -> tuple[int, float]:
    """Denoise frames ``start:stop`` of ``src`` into the same frames of ``tmp``; returns the frames
    done and the seconds spent (for the scheduling overhead). Run again, it writes the same
    pixels to the same place: a task retried after its worker died leaves no trace."""
    from ._outputs import write_frames

    t0 = time.perf_counter()
    if start % spec.max_batch:
        raise LivedenoiseError(f"range {start}:{stop} does not start at a multiple of the batch ({spec.max_batch})")
    data = frames_of(src, spec.signal)
    engine, lock = engine_for(spec)
    out = np.empty((stop - start, *data.shape[1:]), np.float32)
    k = int(engine.card.input_frames)
    with lock:
        first = True
        if k > 1 and start > 0:  # the history the single pass had at `start`
            a = max(0, start - (k - 1))
            history = _read(data, src, a, start)
            engine.infer(list(history), [0] * len(history), [True] + [False] * (len(history) - 1))
            first = False
        for b in range(start, stop, spec.max_batch):
            chunk = _read(data, src, b, min(b + spec.max_batch, stop))
            try:
                out[b - start : b - start + len(chunk)] = engine.run_stack(chunk, first=b, restart=first)
            except LivedenoiseError as exc:
                raise LivedenoiseError(f"{src}: {exc}") from None
            first = False
    write_frames(spec.format, tmp, start, out)
    return stop - start, time.perf_counter() - t0


def check(spec: DenoiseSpec, src: str, tmp: str, frames: int, pixel_size_nm: float | None) -> Checked:
    """CSS over the whole finished output ``tmp`` (read back in chunks of CSS_CHUNK frames) and the
    guard (:func:`~livedenoise.analysis.guard_report`) on its first GUARD_FRAMES frames with the
    raw ones: an archive gets the figures ``denoise`` prints for one file."""
    from ..analysis import css_series, guard_report
    from ._outputs import read_frames

    t0 = time.perf_counter()
    engine, _ = engine_for(spec)
    total, pairs, head, previous = 0.0, 0, None, None
    for a in range(0, frames, CSS_CHUNK):
        chunk = read_frames(spec.format, tmp, a, min(a + CSS_CHUNK, frames))
        stack = chunk if previous is None else np.concatenate([previous, chunk])
        if len(stack) > 1:
            values = css_series(stack)
            total, pairs = total + float(values.sum()), pairs + len(values)
        head = chunk if head is None else head
        previous = chunk[-1:]
    assert head is not None
    raw = _read(frames_of(src, spec.signal), src, 0, len(head)).astype(np.float32)
    report = guard_report(engine.card.expects, raw, head, pixel_size_nm=pixel_size_nm)
    fit = report.fit
    return Checked(
        css_mean=total / pairs if pairs else None, guard=report.state, guard_message=report.message,
        model_db=None if fit is None else fit.model_db, filter_db=None if fit is None else fit.filter_db,
        work_s=time.perf_counter() - t0,
    )
