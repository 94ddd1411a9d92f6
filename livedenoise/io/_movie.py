"""Reading movies: one reader for every command that takes a stack of frames.

:func:`open_movie` returns a :class:`Movie`: the frames (lazy where the format allows), the
pixel size in nm, the frame time in s and, where the file has them, per-frame times. By
extension:

* TIFF (tifffile's first series, so OME and ImageJ stacks read as one; ImageJ's and OME's
  calibration) and ``.npy`` (memory-mapped, never unpickled): no optional dependency;
* Nion Swift's ``.ndata`` and ``.h5`` (:mod:`._nion`; ``.h5`` needs h5py);
* everything RosettaSciIO reads as images (:mod:`._rsciio`: Velox and NCEM ``.emd``,
  ``.dm3``/``.dm4``, ``.ser``/``.emi``, ``.mrc``, ``.hspy``, ``.zspy`` ...), through the
  ``formats`` extra.

Everything refused is refused here, with one line that names the file and the reason
(``what`` says what the command expected: "frames", "denoised", ...).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LivedenoiseError, short_error
from ..protocol import SUPPORTED_DTYPES, Calibration

TIFF_SUFFIXES = (".tif", ".tiff")
NION_SUFFIXES = (".ndata", ".h5")


@dataclass(frozen=True, eq=False)
class Movie:
    """A ``(T, H, W)`` stack of grey frames and what the file says about it.

    ``data`` is a numpy array, a memory map, an open h5py dataset or a dask array (RosettaSciIO's
    lazy loading): index it, or use :meth:`frames` / :meth:`read` to get numpy. ``times_s`` are
    per-frame acquisition times in seconds since the epoch (TIA files), else None.
    """

    path: Path
    data: Any
    format: str
    pixel_size_nm: float | None = None
    frame_time_s: float | None = None
    times_s: np.ndarray | None = None
    signal: str | None = None  # the signal read, where the file holds named ones
    signals: tuple[str, ...] = field(default_factory=tuple)  # every signal in the file

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def calibration(self) -> Calibration | None:
        """The protocol's calibration field, None where the file states neither value."""
        if self.pixel_size_nm is None and self.frame_time_s is None:
            return None
        return Calibration(self.pixel_size_nm, self.frame_time_s)

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start:stop`` as numpy (read from disk now, for lazy data)."""
        try:
            return np.asarray(self.data[start:stop])
        except LivedenoiseError:
            raise
        except Exception as exc:  # noqa: BLE001 - a lazy read fails only now: truncated or damaged file
            raise LivedenoiseError(f"cannot read frames {start}:{stop} of {self.path}: {short_error(exc)}") from None

    def read(self) -> np.ndarray:
        """The whole stack as numpy."""
        return self.frames()

    def describe(self) -> str:
        """One line for the user: format, shape, calibration."""
        bits = [f"{self.format}", f"{len(self)} x {self.shape[1]} x {self.shape[2]} {self.dtype}"]
        if self.signal:
            bits.append(f"signal {self.signal!r}")
        bits.append(f"{self.pixel_size_nm:.5g} nm/px" if self.pixel_size_nm else "pixel size unknown")
        if self.frame_time_s:
            bits.append(f"{self.frame_time_s:.5g} s/frame")
        return ", ".join(bits)


def open_movie(path: str | Path, what: str = "movie", *, signal: str | None = None) -> Movie:
    """Open any supported movie file; frames stay on disk where the format allows.

    ``signal`` names the signal to read in a file that holds several (a Velox file's HAADF and
    DF4, say; by title or index); by default the image series is found (the longest, HAADF on a
    tie). Raises :class:`LivedenoiseError` with one line for a missing file, an unknown extension,
    a file that is not what its extension says, one without images, 1-D or colour signals, a
    truncated file, or a missing optional extra.

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "m.npy"; np.save(f, np.zeros((3, 8, 6), "<u2"))
    >>> movie = open_movie(f); movie.shape, movie.pixel_size_nm
    ((3, 8, 6), None)
    """
    p = Path(path)
    if not p.is_file():
        raise LivedenoiseError(f"{what} file not found: {p}")
    suffix = p.suffix.lower()
    fields: dict[str, Any] = {}
    try:
        if suffix == ".npy":
            fmt, data = "npy", np.load(p, allow_pickle=False, mmap_mode="r")
        elif suffix in TIFF_SUFFIXES:
            from ._tiff import read_tiff

            fmt = "TIFF"
            data, fields = read_tiff(p)
            if "S" in fields.pop("axes", ""):
                raise LivedenoiseError(f"{what} {p} holds colour (RGB) images; need grey frames")
        elif suffix == ".ndata":
            from ._nion import read_ndata

            fmt = "Nion ndata"
            data, fields = read_ndata(p)
        elif suffix == ".h5":
            from ._nion import read_nion_h5

            fmt = "Nion HDF5"
            data, fields = read_nion_h5(p)
        else:
            from ._rsciio import plugin_for, read_rsciio

            module = plugin_for(suffix)
            if module is None:
                raise LivedenoiseError(
                    f"{what} {p}: unknown file type {suffix or '(no extension)'}; "
                    "give TIFF, .npy, a Nion .ndata/.h5 or a microscope file RosettaSciIO reads (.emd, .dm4, .ser ...)"
                )
            fmt = module.rsplit(".", 1)[-1]
            data, fields = read_rsciio(p, module, signal, what)
    except LivedenoiseError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile, numpy, zipfile, h5py raise many types: all mean "not readable"
        kind = {".npy": "a .npy array", ".ndata": "a Nion .ndata file", ".h5": "a Nion HDF5 file"}.get(suffix, "TIFF")
        if isinstance(exc, zipfile.BadZipFile):
            kind = "a Nion .ndata file (a zip)"
        raise LivedenoiseError(f"cannot read {what} {p} as {kind}: {short_error(exc)}") from None
    frame_axis = fields.pop("frame_axis", 0)
    fields.pop("nion_collection", None)
    data = _as_stack(data, p, what, frame_axis)
    fields = {k: v for k, v in fields.items() if v is not None}
    times = fields.pop("times_s", None)
    return Movie(p, data, fmt, times_s=times, **fields)


def _as_stack(arr: Any, p: Path, what: str, frame_axis: int | None = 0) -> Any:
    """``arr`` checked and shaped ``(T, H, W)`` (without reading it)."""
    shape = tuple(int(s) for s in arr.shape)
    if int(np.prod(shape)) == 0:
        raise LivedenoiseError(f"cannot read {what} {p}: no image data in it")
    if getattr(arr.dtype, "names", None) is not None:
        raise LivedenoiseError(f"{what} {p} holds colour (RGB) images; need grey frames")
    if len(shape) in (3, 4) and shape[-1] in (3, 4):
        raise LivedenoiseError(f"{what} {p} looks like RGB/RGBA frames {shape}; give grey (T, H, W) frames")
    if len(shape) == 1:
        raise LivedenoiseError(f"{what} {p} holds a 1-D signal (a spectrum or profile), not images")
    if len(shape) > 3:  # e.g. TIFF (T, Z, Y, X) with a dimension of 1, or a Nion collection of one
        extra = [i for i in range(len(shape) - 2) if shape[i] == 1]
        if len(shape) - len(extra) <= 3:
            arr = arr.reshape((-1, *shape[-2:])) if hasattr(arr, "reshape") else np.asarray(arr).reshape((-1, *shape[-2:]))
            shape = tuple(int(s) for s in arr.shape)
    if len(shape) == 2:
        arr = arr[None]
    elif len(shape) != 3:
        raise LivedenoiseError(f"{what} {p}: need a stack of 2-D grey frames (T, H, W), got shape {shape}")
    if np.dtype(arr.dtype).kind not in "uif":
        raise LivedenoiseError(
            f"{what} {p}: pixel type {arr.dtype} not supported (need integer or float grey frames)"
        )
    return arr


def read_movie(path: str | Path, what: str = "movie", *, signal: str | None = None) -> np.ndarray:
    """A ``(T, H, W)`` stack of grey frames, in the file's own numeric dtype (:func:`open_movie`,
    then the frames; for callers that want only the array).

    A single 2-D frame gives ``T = 1``. ``.npy`` files stay memory-mapped. Raises
    :class:`LivedenoiseError` for a missing, corrupt or colour file, or one that is not a stack
    of real-valued frames.

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "m.npy"; np.save(f, np.zeros((3, 8, 6), "<u2"))
    >>> read_movie(f).shape
    (3, 8, 6)
    """
    movie = open_movie(path, what, signal=signal)
    if isinstance(movie.data, np.ndarray):  # memory maps too: stay lazy
        return movie.data
    return movie.read()


def to_wire_dtype(stack: np.ndarray, path: str | Path = "stack") -> np.ndarray:
    """``stack`` in a dtype of the frame protocol, little-endian and C-contiguous (float64 becomes
    float32; int32 and uint32 frames whose values fit become uint16 or float32); other pixel types are refused in one line."""
    dt = stack.dtype
    if dt.kind == "f" and dt.itemsize == 8:
        stack = stack.astype("<f4")
    elif dt.newbyteorder("<").str in SUPPORTED_DTYPES or dt.str in SUPPORTED_DTYPES:
        stack = stack.astype(dt.newbyteorder("<"), copy=False)
    elif dt.kind in "iu" and dt.itemsize <= 8 and stack.size:
        lo, hi = int(stack.min()), int(stack.max())
        stack = stack.astype("<u2" if lo >= 0 and hi <= 0xFFFF else "<f4")  # DM's int32/uint32 scans
    else:
        raise LivedenoiseError(f"{path}: pixel type {dt} not supported; use one of {sorted(SUPPORTED_DTYPES)}")
    return np.ascontiguousarray(stack)
