"""The virtual detector: a 4D-STEM stream of diffraction patterns as a stream of scan images.

A pixelated detector (a DECTRIS ARINA or QUADRO, say) records one diffraction pattern per scan
position. Summing each pattern over an annulus (inner/outer radius in detector pixels, around the
direct beam) gives what an annular dark-field detector would have counted there: with the scan
shape (the detector does not know it), every ``rows x cols`` patterns make one virtual HAADF/ADF
image, which enters the pipeline as an ordinary frame.

* weights: an annulus (:func:`annular_mask`: ``inner <= r < outer``, ``r`` from the centre, in
  pixels, pixel centres at integer coordinates), or a mask file (``.npy`` or ``.tif``, 0/1 or
  weights). The annulus' centre is given, or found per series from the mean of its first
  ``centre_frames`` patterns (:func:`find_centre`: the centroid of the pixels above half the
  mean's maximum, i.e. the bright-field disc). Pixels at the detector's maximum value in a
  series' first pattern (DECTRIS flags dead and masked pixels that way) get weight 0.
* patterns are reduced in batches: the decoder decompresses each one straight into the next row
  of a ``(batch, H*W)`` buffer (:meth:`VirtualDetector.lend`), and a batch becomes float32 and
  is reduced against the float32 weights in one call, written into the scan image by position:
  when the batch is full and before a scan frame is emitted, so the virtual image is out as soon
  as its last pattern is in. The product is ``np.vecdot`` over rows cut into pieces of at most
  8192 pixels rather than a matrix-vector product: OpenBLAS runs a gemv of that size (and a dot
  over more than 10,000 elements) on all its threads, whose spinning cost 4x in a loaded
  receiver (measured); these dots stay on the receiver's thread at the same speed. Integer sums
  below 2**24 are exact.
* a scan frame is emitted when its last position arrives, or when a position of a later frame
  does: positions missing in between are gaps (counted), filled with the mean of the frame's
  other positions, as long as at least half arrived. A frame still open when its series ends (or
  another starts) is dropped and counted as ``incomplete``: a partial scan would look like an image
  with a flat band, and denoising and CSS would take it for one.

Virtual images are float32 (``<f4``): a weighted mask needs it, u32 detectors cannot overflow it,
and it is what the engine turns every frame into anyway.

>>> vd = VirtualDetector((2, 2), inner=0, outer=1.2, centre=(1.0, 1.0))  # a pixel and its 4 neighbours
>>> out = [m for i in range(4) for m in vd.add(1, i, np.full((3, 3), i, "<u2"))]
>>> out[0].data.tolist(), out[0].image_id
([[0.0, 5.0], [10.0, 15.0]], 0)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import LivedenoiseError
from ..protocol import ImageFrame
from ._base import Skip

log = logging.getLogger("livedenoise.detectors")

_DOT_PIECE = 8192  # pixels per dot product: below OpenBLAS's threading threshold for dot (10,000)


def annular_mask(shape: tuple[int, int], centre: tuple[float, float], inner: float, outer: float) -> np.ndarray:
    """Boolean ``(height, width)`` mask of the pixels with ``inner <= r < outer`` around ``centre``
    (``(x, y)`` = (column, row), pixel centres at integers).

    >>> annular_mask((3, 3), (1.0, 1.0), 0.5, 1.2).astype(int).tolist()
    [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    """
    h, w = shape
    y, x = np.ogrid[:h, :w]
    r = np.hypot(x - centre[0], y - centre[1])
    return (r >= inner) & (r < outer)


def find_centre(frames: np.ndarray) -> tuple[float, float]:
    """The direct beam's centre ``(x, y)`` in a stack of diffraction patterns ``(N, H, W)``: the
    centroid of the pixels above half the mean pattern's maximum (the bright-field disc), so the
    noise and the dark-field counts far out do not pull it. A dark stack: the frame's middle."""
    mean = np.asarray(frames, np.float64).reshape(-1, *frames.shape[-2:]).mean(axis=0)
    h, w = mean.shape
    top = mean.max()
    if not np.isfinite(top) or top <= 0:
        return (w - 1) / 2, (h - 1) / 2
    weight = np.where(mean >= top / 2, mean, 0.0)
    total = weight.sum()
    return float((weight.sum(axis=0) * np.arange(w)).sum() / total), float((weight.sum(axis=1) * np.arange(h)).sum() / total)


def read_mask(path: Path) -> np.ndarray:
    """A mask file as float32 weights: ``.npy`` (no pickle) or ``.tif``/``.tiff``, one 2-D image."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            raise LivedenoiseError(f"--mask {path}: expected a .npy or .tif file")
    except (OSError, ValueError) as exc:
        raise LivedenoiseError(f"--mask {path}: cannot read it ({exc})") from None
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2 or arr.dtype.kind not in "biuf" or not np.all(np.isfinite(arr)):
        raise LivedenoiseError(f"--mask {path}: expected one 2-D image of finite numbers, got {arr.shape} {arr.dtype}")
    if not np.any(arr):
        raise LivedenoiseError(f"--mask {path}: every weight is 0")
    return arr.astype(np.float32)


class VirtualDetector:
    """Diffraction patterns in, virtual images out (see the module's docstring).

    :meth:`add` takes each pattern with its series and image id and returns the scan frames it
    completed (:class:`~livedenoise.protocol.ImageFrame`, image id = scan frame index within the
    series) and what it skipped (:class:`Skip`); :meth:`start` and :meth:`end` mark the series.
    One thread only (the receiver's).
    """

    def __init__(
        self,
        scan: tuple[int, int],
        *,
        inner: float | None = None,
        outer: float | None = None,
        centre: tuple[float, float] | None = None,
        mask: np.ndarray | None = None,
        centre_frames: int = 16,
        batch_bytes: int = 2 << 20,
    ):
        if (mask is None) == (outer is None):
            raise LivedenoiseError("the virtual detector needs an annulus (inner:outer radius) or a mask, not both")
        self.scan = (int(scan[0]), int(scan[1]))
        self.positions = self.scan[0] * self.scan[1]
        self.inner, self.outer = (0.0 if inner is None else float(inner)), outer
        self.centre = centre
        self.mask = mask
        self.centre_frames = max(1, int(centre_frames))
        self.patterns = 0  # diffraction patterns taken in
        self.centre_used: tuple[float, float] | None = None  # the last centre the weights were built around
        self._series: int | None = None
        self._shape: tuple[int, int] | None = None
        self._weights: np.ndarray | None = None  # float32, flat
        self._wpieces = np.zeros((1, 0), np.float32)  # the weights cut into pieces (see _flush)
        self._batch_bytes = batch_bytes  # the float32 batch's size: up to 64 patterns
        self._raw: np.ndarray | None = None  # (batch, H*W): patterns not reduced yet, in the detector's dtype
        self._f32: np.ndarray | None = None  # the same rows as float32, for one BLAS product
        self._rows: list[np.ndarray] = []  # the rows as (H, W) views, lent to the decoder
        self._address = self._row_bytes = 0  # the batch's data pointer and row stride
        self._at = np.empty(0, np.intp)  # the batched patterns' positions in the scan frame
        self._count = 0  # rows in use
        self._lent: np.ndarray | None = None  # the row lent last, at index _lent_at
        self._lent_at = -1
        self._dtype: np.dtype | None = None
        self._pending: list[tuple[int, np.ndarray]] = []  # patterns waiting for the centre
        self._k: int | None = None  # the open scan frame
        self._image = np.full(self.positions, np.nan, np.float64)
        self._filled = 0
        self._last_id: int | None = None

    # ------------------------------------------------------------------ series

    def start(self, series_id: int) -> list[ImageFrame | Skip]:
        """A new series: what the previous one left open is settled first."""
        out = self.end(self._series) if self._series is not None else []
        self._series = series_id
        self._last_id = None
        if self.centre is None and self.mask is None:
            self._weights = None  # the beam may have moved between series: find it again
        return out

    def end(self, series_id: int | None) -> list[ImageFrame | Skip]:
        """The series ended: patterns still waiting for the centre are reduced, and a scan frame
        still open is dropped (``incomplete``)."""
        out: list[ImageFrame | Skip] = []
        if series_id != self._series or self._series is None:
            return out
        if self._pending:
            self._build_weights(np.stack([f for _, f in self._pending]))
            pending, self._pending = self._pending, []
            for image_id, frame in pending:
                self._reduce(image_id, frame, out)
        if self._k is not None:
            out.append(
                Skip(
                    "incomplete",
                    f"series {self._series} ended with scan frame {self._k} at {self._filled} of "
                    f"{self.positions} positions: dropped",
                )
            )
            self._close()
        self._series = None
        return out

    # ------------------------------------------------------------------ patterns

    def add(self, series_id: int, image_id: int, frame: np.ndarray) -> list[ImageFrame | Skip]:
        out: list[ImageFrame | Skip] = []
        if series_id != self._series:
            out += self.start(series_id)
        self.patterns += 1
        if frame.shape != self._shape or frame.dtype != self._dtype:
            if self._shape is not None:
                log.info("detector frames now %dx%d %s (were %dx%d %s)", *frame.shape, frame.dtype, *self._shape, self._dtype)
                out += self.end(self._series)
                self._series = series_id
            self._shape, self._dtype = frame.shape, frame.dtype
            self._weights = self._raw = None
            self._pending.clear()
        if self._weights is None:
            if self.centre is None and self.mask is None:
                self._pending.append((image_id, frame))
                if len(self._pending) < self.centre_frames:
                    return out
                self._build_weights(np.stack([f for _, f in self._pending]))
                pending, self._pending = self._pending, []
                for pid, pframe in pending:
                    self._reduce(pid, pframe, out)
                return out
            try:
                self._build_weights(frame[None])
            except _ShapeMismatch as exc:
                out.append(Skip("malformed", f"virtual detector: {exc}"))
                return out
        self._reduce(image_id, frame, out)
        return out

    def _build_weights(self, first: np.ndarray) -> None:
        shape = first.shape[-2:]
        if self.mask is not None:
            if self.mask.shape != shape:
                self._weights = None
                raise _ShapeMismatch(f"mask is {self.mask.shape[1]}x{self.mask.shape[0]}, frames {shape[1]}x{shape[0]}")
            weights = self.mask.copy()
        else:
            centre = self.centre if self.centre is not None else find_centre(first)
            if centre != self.centre_used:
                log.info("virtual detector: annulus %g-%g px around (%.2f, %.2f)", self.inner, self.outer, *centre)
            self.centre_used = centre
            weights = annular_mask(shape, centre, self.inner, float(self.outer)).astype(np.float32)
        if first.dtype.kind in "ui":
            flagged = first[0] == np.iinfo(first.dtype).max  # dead or masked pixels, as DECTRIS marks them
            if flagged.any():
                log.info("virtual detector: %d flagged pixels (at the detector's maximum) left out", int(flagged.sum()))
                weights[flagged] = 0
        self._weights = weights.reshape(-1)
        n = self._weights.size
        rows = max(1, min(64, self.positions, self._batch_bytes // (4 * n)))
        pieces = -(-n // _DOT_PIECE)
        piece = (-(-n // pieces) + 15) // 16 * 16  # rows padded with zeros to pieces x piece
        self._wpieces = np.zeros(pieces * piece, np.float32)
        self._wpieces[:n] = self._weights
        self._wpieces = self._wpieces.reshape(pieces, piece)
        self._raw = np.empty((rows, n), first.dtype)
        self._f32 = np.zeros((rows, pieces * piece), np.float32)
        self._rows = [row.reshape(shape) for row in self._raw]
        self._address, self._row_bytes = self._raw.ctypes.data, n * first.dtype.itemsize
        self._at = np.empty(rows, np.intp)
        self._count, self._lent, self._lent_at = 0, None, -1

    def lend(self, series_id: int, shape: tuple[int, int], dtype: np.dtype) -> tuple[np.ndarray, int] | None:
        """The batch row the next pattern can be decompressed into, ``(array (H, W), its data
        address)``, to be handed to :meth:`add` as it is (no copy); None when it would not fit:
        weights not built yet (the centre is being found), another series, shape or dtype."""
        raw = self._raw
        if raw is None or series_id != self._series or shape != self._shape or dtype != raw.dtype:
            return None
        i = self._count
        self._lent, self._lent_at = self._rows[i], i
        return self._lent, self._address + i * self._row_bytes

    def _reduce(self, image_id: int, frame: np.ndarray, out: list) -> None:
        positions = self.positions
        k, pos = divmod(image_id, positions)
        last = self._last_id
        if last is not None and image_id != last + 1:
            if image_id <= last:
                out.append(Skip("gaps", f"series {self._series}: diffraction image {image_id} after {last}: dropped"))
                return
            out.append(Skip("gaps", f"series {self._series}: diffraction image {image_id} after {last} ({image_id - last - 1} missing)"))
        self._last_id = image_id
        if self._k != k:
            if self._k is not None:
                self._emit(out)
            self._k = k
        i = self._count
        assert self._raw is not None
        if frame is not self._lent or i != self._lent_at:  # decoded elsewhere, or the batch moved on
            self._raw[i] = frame.reshape(-1)
        self._lent = None
        self._at[i] = pos
        self._count = i + 1
        self._filled += 1
        if pos == positions - 1:
            self._emit(out)
        elif i + 1 == len(self._at):
            self._flush()

    def _flush(self) -> None:
        """Reduce the batched patterns: float32, one product with the weights, into the image."""
        k = self._count
        if k:
            assert self._f32 is not None and self._raw is not None and self._weights is not None
            f32 = self._f32[:k]
            np.copyto(f32[:, : self._raw.shape[1]], self._raw[:k], casting="unsafe")
            sums = np.vecdot(f32.reshape(k, *self._wpieces.shape), self._wpieces)
            self._image[self._at[:k]] = sums.sum(axis=1) if sums.shape[1] > 1 else sums[:, 0]
            self._count = 0

    def _emit(self, out: list) -> None:
        self._flush()
        image, filled = self._image, self._filled
        if filled < self.positions:
            if 2 * filled < self.positions:
                out.append(
                    Skip("incomplete", f"series {self._series}: scan frame {self._k} had {filled} of {self.positions} positions: dropped")
                )
                self._close()
                return
            image = np.where(np.isnan(image), np.nanmean(image), image)
        data = image.astype("<f4").reshape(self.scan)
        out.append(ImageFrame(series_id=self._series, image_id=self._k, data=data))
        self._close()

    def _close(self) -> None:
        self._k = None
        self._image.fill(np.nan)
        self._filled = self._count = 0


class _ShapeMismatch(ValueError):
    """A mask file that does not fit the detector's frames (each such frame is malformed)."""
