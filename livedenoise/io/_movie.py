"""Reading movies: one reader for every command that takes a stack of frames.

TIFF (one or many pages; tifffile's first series, so OME and ImageJ stacks read as one) and
``.npy`` (memory-mapped, never unpickled). Everything refused is refused here, with one line that
names the file and what the command expected (``what``: "frames", "denoised", ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LivedenoiseError, short_error
from ..protocol import SUPPORTED_DTYPES


def read_movie(path: str | Path, what: str = "movie") -> np.ndarray:
    """A ``(T, H, W)`` stack of grey frames, in the file's own numeric dtype.

    A single 2-D frame gives ``T = 1``. ``.npy`` files are memory-mapped (a large movie is read as
    it is used). Raises :class:`LivedenoiseError` for a missing, corrupt or colour file, or one that
    is not a stack of real-valued frames.

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "m.npy"; np.save(f, np.zeros((3, 8, 6), "<u2"))
    >>> read_movie(f).shape
    (3, 8, 6)
    """
    p = Path(path)
    if not p.is_file():
        raise LivedenoiseError(f"{what} file not found: {p}")
    npy = p.suffix.lower() == ".npy"
    try:
        if npy:
            arr = np.load(p, allow_pickle=False, mmap_mode="r")
        else:
            import tifffile

            with tifffile.TiffFile(p) as tif:
                series = tif.series[0]
                if "S" in series.axes:
                    raise LivedenoiseError(f"{what} {p} holds colour (RGB) images; need grey frames")
                arr = series.asarray()
    except LivedenoiseError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile and numpy raise many types: all mean "not a readable movie"
        kind = "a .npy array" if npy else "TIFF"
        raise LivedenoiseError(f"cannot read {what} {p} as {kind}: {short_error(exc)}") from None
    if arr.size == 0:
        raise LivedenoiseError(f"cannot read {what} {p}: no image data in it")
    if arr.ndim in (3, 4) and arr.shape[-1] in (3, 4):
        raise LivedenoiseError(f"{what} {p} looks like RGB/RGBA frames {arr.shape}; give grey (T, H, W) frames")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise LivedenoiseError(f"{what} {p}: need a stack of 2-D grey frames (T, H, W), got shape {arr.shape}")
    if arr.dtype.kind not in "uif":
        raise LivedenoiseError(f"{what} {p}: pixel type {arr.dtype} not supported (need integer or float grey frames)")
    return arr


def to_wire_dtype(stack: np.ndarray, path: str | Path = "stack") -> np.ndarray:
    """``stack`` in a dtype of the frame protocol, little-endian and C-contiguous (float64 becomes
    float32); other pixel types are refused in one line."""
    dt = stack.dtype
    if dt.kind == "f" and dt.itemsize == 8:
        stack = stack.astype("<f4")
    elif dt.newbyteorder("<").str in SUPPORTED_DTYPES or dt.str in SUPPORTED_DTYPES:
        stack = stack.astype(dt.newbyteorder("<"), copy=False)
    else:
        raise LivedenoiseError(f"{path}: pixel type {dt} not supported; use one of {sorted(SUPPORTED_DTYPES)}")
    return np.ascontiguousarray(stack)
