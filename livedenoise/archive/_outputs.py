"""Output files written in place by many tasks, published once: created at full size under a
temporary name in the output folder, each range of frames written where it belongs (a retried task
rewrites the same bytes), renamed to the final name when every range is done. A reader never sees
a half-written output, and a job that fails leaves none.

TIFF: the same ImageJ file :func:`~livedenoise.io.write_imagej` writes (calibration, ``Info``),
created empty by tifffile and filled range by range (``pwrite``). zarr (the ``distributed`` extra): a
float32 array chunked by batches of frames, the calibration in its attributes.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LivedenoiseError
from ..io import imagej_metadata

FORMATS = ("tif", "zarr")


def _zarr() -> Any:
    try:
        import zarr
    except ImportError:
        raise LivedenoiseError('--format zarr needs zarr: pip install -e ".[distributed]"') from None
    return zarr


def create_output(
    fmt: str, path: str, shape: tuple[int, int, int], *, pixel_size_nm: float | None, frame_time_s: float | None,
    info: str, chunk_frames: int,
) -> None:
    """The output at its full size, frames not written yet (TIFF: a sparse file)."""
    remove_output(path)
    try:
        if fmt == "tif":
            import tifffile

            metadata, kwargs = imagej_metadata(pixel_size_nm, frame_time_s, info)
            tifffile.imwrite(path, shape=shape, dtype="float32", imagej=True, metadata=metadata, **kwargs)
        elif fmt == "zarr":
            zarr = _zarr()
            arr = zarr.open_array(path, mode="w", shape=shape, chunks=(chunk_frames, *shape[1:]), dtype="float32")
            arr.attrs.update({
                "axes": "TYX", "pixel_size_nm": pixel_size_nm, "frame_time_s": frame_time_s, "info": info,
                "range": [0.0, 1.0],
            })
        else:
            raise LivedenoiseError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    except OSError as exc:
        raise LivedenoiseError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_frames(fmt: str, path: str, start: int, frames: np.ndarray) -> None:
    """Frames ``start : start + len(frames)`` of the output, in place, on disk when this returns.

    TIFF: one ``pwrite`` of exactly those bytes and an ``fsync`` (not a memory map: workers on
    several nodes write one file on shared storage, and a page two ranges share must not be
    written back whole by both). zarr: whole chunks (ranges start at multiples of its chunk)."""
    try:
        if fmt == "tif":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                offset, byteorder, shape = series.dataoffset, tif.byteorder, series.shape
            if offset is None:
                raise LivedenoiseError(f"{path}: not a contiguous TIFF (was it created by this job?)")
            data = np.ascontiguousarray(frames.reshape(len(frames), *shape[-2:]), dtype=np.dtype(byteorder + "f4"))
            fd = os.open(path, os.O_WRONLY)
            try:
                at = offset + start * data[0].nbytes
                view = memoryview(data).cast("B")
                while view:
                    n = os.pwrite(fd, view, at)
                    view, at = view[n:], at + n
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            arr = _zarr().open_array(path, mode="r+")
            arr[start : start + len(frames)] = frames
    except OSError as exc:
        raise LivedenoiseError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_frames(fmt: str, path: str, start: int, stop: int) -> np.ndarray:
    """Frames ``start:stop`` of an output written by this job (float32)."""
    try:
        if fmt == "tif":
            import tifffile

            return np.asarray(tifffile.memmap(path, mode="r")[start:stop], np.float32)
        return np.asarray(_zarr().open_array(path, mode="r")[start:stop], np.float32)
    except OSError as exc:
        raise LivedenoiseError(f"cannot read {path}: {exc.strerror or exc}") from None


def publish(tmp: str, final: str) -> None:
    """Rename the finished ``tmp`` to ``final``, replacing an older output of that name: a file, or
    a zarr store (a folder, which rename cannot replace); any other folder there is left alone
    (``IsADirectoryError``)."""
    p = Path(final)
    if p.is_dir() and not p.is_symlink():
        if not (Path(tmp).is_dir() and any((p / n).exists() for n in (".zarray", ".zgroup", "zarr.json"))):
            raise IsADirectoryError(errno.EISDIR, "a folder of that name is in the way", final)
        shutil.rmtree(p)
    os.replace(tmp, final)


def remove_output(path: str) -> None:
    """Remove an unfinished output, file or zarr folder (nothing if it is not there)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
