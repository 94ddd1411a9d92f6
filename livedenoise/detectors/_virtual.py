"""The virtual detector: a 4D-STEM stream of diffraction patterns as a stream of scan images.

A pixelated detector (a DECTRIS ARINA or QUADRO, a Quantum Detectors Merlin) records one
diffraction pattern per scan position. Summing each pattern over an annulus (inner/outer radius in
detector pixels, around the direct beam) gives what an annular dark-field detector would have
counted there: with the scan shape (the detector does not know it), every ``rows x cols``
patterns make one virtual HAADF/ADF/BF image.

* detectors: one or several, each an :class:`Annulus` (:func:`annular_mask`: ``inner <= r <
  outer`` around the centre, pixel centres at integer coordinates) or :class:`Weights` (a mask
  file, 0/1 or any weights). All are reduced in the same pass, as one ``(detectors, pixels)``
  weight matrix. The **first** is the image that enters the pipeline (an
  :class:`~livedenoise.protocol.ImageFrame`: denoised, recorded); the others come out beside it
  as :class:`~livedenoise.detectors.VirtualImage` (``serve`` publishes them on ``virtual``).
* the annuli's centre is given, or found per series from the mean of its first
  ``centre_frames`` patterns (:func:`find_centre`: the centroid of the pixels above half the
  mean's maximum, i.e. the bright-field disc). Weight 0, in every detector: pixels at the
  detector's maximum value in a series' first pattern (DECTRIS flags dead and masked pixels that
  way) and the bad pixels of the series' pixel mask (:meth:`VirtualDetector.start`, from the
  detector's header). A pixel mask of another shape than the frames is refused (counted
  ``malformed``, logged once): the flagged-pixel rule still holds and the series' images go on.
* whole stacks at once: :meth:`VirtualDetector.add_stack` takes ``(N, H, W)`` patterns with their
  image ids (a receiver that decodes stacks decompresses into :meth:`VirtualDetector.stack_buffer`);
  :meth:`VirtualDetector.add` takes one pattern, decompressed by the caller straight into the next
  row of a ``(batch, H*W)`` buffer (:meth:`VirtualDetector.lend`), and reduces the batch when it is
  full or a scan frame's last position came. Either way, the Python cost is per batch, not per
  pattern: float32 in pieces, one product with the weights, and the scan bookkeeping (gaps, scan
  frames) vectorised over the batch's image ids. The product is ``np.vecdot`` over rows cut into
  pieces of at most 8192 pixels, not a BLAS gemv: OpenBLAS runs a gemv of that size on all its
  threads, whose spinning cost 4-200x on a loaded machine (measured); ``blas=True`` uses the gemv,
  2-3x faster, where BLAS runs on one thread (a process of its own, ``OPENBLAS_NUM_THREADS=1``).
  Integer sums below 2**24 are exact either way.
* a scan frame is emitted when its last position arrives, or when a position of a later frame
  does: positions missing in between are gaps (counted), filled with the mean of the frame's
  other positions, as long as at least half arrived. A frame still open when its series ends (or
  another starts, or the frames change shape) is dropped and counted as ``incomplete``: a partial
  scan would look like an image with a flat band, and denoising and CSS would take it for one.
  A series picked up without its start (its header was lost, ``serve`` started mid-series) or
  after a change of shape begins at the next scan frame's first position: the scan frame it came
  into is dropped (``incomplete``), never emitted in part. A series from its start expects image 0
  first: a later first id is a gap.

Virtual images are float32 (``<f4``): a weighted mask needs it, u32 detectors cannot overflow it,
and it is what the engine turns every frame into anyway.

>>> vd = VirtualDetector((2, 2), inner=0, outer=1.2, centre=(1.0, 1.0))  # a pixel and its 4 neighbours
>>> out = vd.add_stack(1, 0, np.arange(4, dtype="<u2")[:, None, None] * np.ones((4, 3, 3), "<u2"))
>>> out[0].data.tolist(), out[0].image_id
([[0.0, 5.0], [10.0, 15.0]], 0)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..errors import LivedenoiseError
from ..protocol import ImageFrame
from ._base import Skip, VirtualImage
from ._masks import Annulus, Weights, annular_mask, find_centre
from ._scan import _ScanFrames

log = logging.getLogger("livedenoise.detectors")

_DOT_PIECE = 8192  # pixels per dot product: below OpenBLAS's threading threshold for dot (10,000)


class VirtualDetector(_ScanFrames):
    """Diffraction patterns in, virtual images out (see the module's docstring).

    :meth:`add_stack` takes ``(N, H, W)`` patterns with their image ids, :meth:`add` one pattern;
    both return the scan frames they completed (:class:`~livedenoise.protocol.ImageFrame` for the
    first detector, image id = scan frame index within the series; a
    :class:`~livedenoise.detectors.VirtualImage` for each other detector) and what they skipped
    (:class:`Skip`). :meth:`start` and :meth:`end` mark the series (a series that comes without
    :meth:`start` is picked up at its next scan frame). One thread only.

    ``detectors``: :class:`Annulus` and :class:`Weights`, the first one denoised; ``inner``/``outer``
    and ``mask`` are short for one annulus and one mask (in that order, before ``detectors``).
    ``centre``: the annuli's centre ``(x, y)``, else found per series. ``blas``: reduce with a BLAS
    gemv (only where BLAS runs on one thread).
    """

    def __init__(
        self,
        scan: tuple[int, int],
        *,
        detectors: Sequence[Annulus | Weights] = (),
        inner: float | None = None,
        outer: float | None = None,
        mask: np.ndarray | None = None,
        centre: tuple[float, float] | None = None,
        centre_frames: int = 16,
        batch_bytes: int = 2 << 20,
        blas: bool = False,
    ):
        given: list[Annulus | Weights] = []
        if outer is not None:
            given.append(Annulus(0.0 if inner is None else float(inner), float(outer)))
        elif inner is not None:
            raise LivedenoiseError("the virtual detector's annulus needs an outer radius")
        if mask is not None:
            given.append(Weights(np.asarray(mask, np.float32)))
        given += detectors
        if not given:
            raise LivedenoiseError("the virtual detector needs an annulus (inner:outer radius) or a mask")
        self.detectors: tuple[Annulus | Weights, ...] = tuple(given)
        self.names = [d.label for d in given]
        self.scan = (int(scan[0]), int(scan[1]))
        if min(self.scan) < 1:
            raise LivedenoiseError(f"scan {self.scan}: expected at least 1x1 positions")
        self.positions = self.scan[0] * self.scan[1]
        self.centre = centre
        self.centre_frames = max(1, int(centre_frames))
        self.blas = blas
        self.patterns = 0  # diffraction patterns taken in
        self.centre_used: tuple[float, float] | None = None  # the last centre the annuli were built around
        self._find_centre = centre is None and any(isinstance(d, Annulus) for d in given)
        self._batch_bytes = batch_bytes
        n_det = len(given)
        # the series
        self._series: int | None = None
        self._last_id: int | None = None  # the last image id placed (-1: a series from its start, expecting 0)
        self._join = False  # picked up mid-series: patterns wait for a scan frame's first position
        self._series_patterns = 0  # patterns of this series so far (a new shape within a series drops its open scan)
        self._join_dropped: int | None = None  # the scan frame the join dropped last (counted once)
        self._pixel_mask: np.ndarray | None = None  # the series' bad pixels (True), from its header
        self._mask_refused = False
        # the detector's frames: shape, dtype, weights and buffers
        self._shape: tuple[int, int] | None = None
        self._dtype: np.dtype | None = None
        self._weights: np.ndarray | None = None  # (detectors, H*W) float32
        self._wpieces = np.zeros((n_det, 1, 0), np.float32)  # the weights cut into pieces (_sums)
        self._raw: np.ndarray | None = None  # (batch, H*W): patterns added one by one, not reduced yet
        self._rows: list[np.ndarray] = []  # the batch's rows as (H, W) views, lent to the decoder
        self._batch_ids: list[int] = []  # their image ids
        self._batch_rows = 0  # the batch's rows
        self._last_position = self.positions - 1
        self._address = self._row_bytes = 0  # the batch's data pointer and row stride
        self._count = 0  # rows in use
        self._lent: np.ndarray | None = None  # the row lent last, at index _lent_at
        self._lent_at = -1
        self._f32 = np.zeros((1, 0), np.float32)  # float32 rows for the product, a piece of a stack at a time
        self._stack: np.ndarray | None = None  # stack_buffer()
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (ids, patterns) waiting for the centre
        self._pending_n = 0
        # the open scan frame
        self._k: int | None = None
        self._image = np.full((n_det, self.positions), np.nan, np.float64)
        self._filled = 0

    # ------------------------------------------------------------------ series

    def start(self, series_id: int, *, pixel_mask: np.ndarray | None = None) -> list[ImageFrame | VirtualImage | Skip]:
        """A new series, from its start (its header): what the previous one left open is settled
        first. ``pixel_mask``: the detector's ``(H, W)`` pixel mask for this series (non-zero: a bad
        pixel), left out of every detector."""
        out = self.end(self._series) if self._series is not None else []
        self._series = series_id
        self._series_patterns = 0
        self._last_id = -1  # its first image is 0
        self._join, self._join_dropped = False, None
        self._pixel_mask = None if pixel_mask is None else np.atleast_2d(np.asarray(pixel_mask) != 0)
        self._mask_refused = False
        self._weights = None  # rebuilt from the series' first patterns (centre, flagged pixels, pixel mask)
        return out

    def end(self, series_id: int | None) -> list[ImageFrame | VirtualImage | Skip]:
        """The series ended: what is batched or waits for the centre is reduced, and a scan frame
        still open is dropped (``incomplete``)."""
        out: list[ImageFrame | VirtualImage | Skip] = []
        if series_id != self._series or self._series is None:
            return out
        self._flush(out)
        if self._pending:
            self._release_pending(out)
        self._drop_open(out, "its series ended")
        self._series = None
        return out

    def _pick_up(self, series_id: int, out: list) -> None:
        """A series without :meth:`start` (its header lost, or this receiver started mid-series):
        it begins at the next scan frame."""
        self._flush(out)
        out += self.start(series_id)
        self._last_id = None
        self._join = True

    # ------------------------------------------------------------------ patterns

    def add_stack(self, series_id: int, image_ids: int | np.ndarray, stack: np.ndarray) -> list[ImageFrame | VirtualImage | Skip]:
        """``(N, H, W)`` patterns of one series at once: ``image_ids`` the first of N consecutive
        ids, or N ids. Reduced at once (no copy), unless the centre is still being found."""
        stack = np.asarray(stack)
        if stack.ndim != 3:
            raise ValueError(f"add_stack needs (N, H, W) patterns, got {stack.shape}")
        n = len(stack)
        if isinstance(image_ids, int | np.integer):
            ids = np.arange(int(image_ids), int(image_ids) + n, dtype=np.int64)
        else:
            ids = np.asarray(image_ids, np.int64).reshape(-1)
            if len(ids) != n:
                raise ValueError(f"add_stack: {len(ids)} image ids for {n} patterns")
        out: list[ImageFrame | VirtualImage | Skip] = []
        if n == 0:
            return out
        self.patterns += n
        if series_id != self._series:
            self._pick_up(series_id, out)
        shape, dtype = (stack.shape[1], stack.shape[2]), stack.dtype
        if shape != self._shape or dtype != self._dtype:
            self._new_shape(shape, dtype, out)
        self._series_patterns += n
        if self._weights is None:
            if self._find_centre:
                self._pending.append((ids, stack.copy()))
                self._pending_n += n
                if self._pending_n >= self.centre_frames:
                    self._release_pending(out)
                return out
            try:
                self._build_weights(stack, out)
            except _ShapeMismatch as exc:
                out.append(Skip("malformed", f"virtual detector: {exc}", n))
                return out
        self._flush(out)
        self._place(ids, self._sums(stack.reshape(n, -1)), out)
        return out

    def add(self, series_id: int, image_id: int, frame: np.ndarray) -> list[ImageFrame | VirtualImage | Skip]:
        """One ``(H, W)`` pattern (decoded into the row :meth:`lend` gave, or anywhere). A few
        operations per pattern: the batch is reduced when full or at a scan frame's last position."""
        i = self._count
        if frame is self._lent and i == self._lent_at and series_id == self._series:
            self._lent = None  # decoded into the row lent for this series, shape and dtype
        elif series_id == self._series and self._weights is not None and frame.shape == self._shape and frame.dtype == self._dtype:
            self._raw[i] = frame.reshape(-1)  # type: ignore[index]  # decoded elsewhere
        else:
            return self.add_stack(series_id, image_id, frame[None])
        self._batch_ids.append(image_id)
        self._count = i + 1
        if i + 1 < self._batch_rows and image_id % self.positions != self._last_position:
            return []
        out: list[ImageFrame | VirtualImage | Skip] = []
        self._flush(out)
        return out

    def lend(self, series_id: int, shape: tuple[int, int], dtype: np.dtype) -> tuple[np.ndarray, int] | None:
        """The batch row the next pattern can be decompressed into, ``(array (H, W), its data
        address)``, to be handed to :meth:`add` as it is (no copy); None when it would not fit:
        weights not built yet (the centre is being found), another series, shape or dtype."""
        if self._weights is None or series_id != self._series or shape != self._shape or (dtype is not self._dtype and dtype != self._dtype):
            return None
        i = self._count
        self._lent, self._lent_at = self._rows[i], i
        return self._lent, self._address + i * self._row_bytes

    def stack_buffer(self, series_id: int, n: int, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray | None:
        """A C-contiguous ``(n, H, W)`` buffer to decompress a stack into and hand to
        :meth:`add_stack` (no allocation per stack); None where the stack would not be reduced at
        once (another series, shape or dtype, or the centre not found yet): decode it anywhere."""
        if self._weights is None or series_id != self._series or shape != self._shape or np.dtype(dtype) != self._dtype:
            return None
        buf = self._stack
        if buf is None or len(buf) < n:
            buf = self._stack = np.empty((max(n, 64), *shape), self._dtype)
        return buf[:n]

    # ------------------------------------------------------------------ weights and products

    def _new_shape(self, shape: tuple[int, int], dtype: np.dtype, out: list) -> None:
        if self._shape is not None and self._series_patterns + self._count:  # within a series: its open scan frame goes
            log.warning(
                "series %s: detector frames now %dx%d %s (were %dx%d %s)",
                self._series, shape[1], shape[0], dtype, self._shape[1], self._shape[0], self._dtype,
            )
            self._flush(out)
            if self._pending:
                self._release_pending(out)
            self._join_dropped = self._k
            self._drop_open(out, "the detector's frames changed shape")
            self._join = True
        self._shape, self._dtype = shape, np.dtype(dtype)
        self._weights = None
        n = shape[0] * shape[1]
        rows = max(1, min(64, self.positions, self._batch_bytes // (4 * n)))
        self._raw = np.empty((rows, n), dtype)
        self._rows = [row.reshape(shape) for row in self._raw]
        self._batch_ids.clear()
        self._batch_rows = rows
        self._address, self._row_bytes = self._raw.ctypes.data, n * self._dtype.itemsize
        self._count, self._lent, self._lent_at = 0, None, -1
        self._stack = None
        pieces = -(-n // _DOT_PIECE)
        width = n if self.blas else pieces * ((-(-n // pieces) + 15) // 16 * 16)  # padded with zeros to pieces x piece
        chunk = max(1, min(rows, (1 << 20) // (4 * n))) if self.blas else rows  # a gemv's rows stay in L2 (1 MiB)
        self._f32 = np.zeros((chunk, width), np.float32)

    def _build_weights(self, first: np.ndarray, out: list) -> None:
        """The ``(detectors, pixels)`` weights for frames like ``first`` ``(n, H, W)``, the series'
        first patterns (the centre, the flagged pixels)."""
        shape = (first.shape[-2], first.shape[-1])
        rows, centre = [], None
        for d in self.detectors:
            if isinstance(d, Weights):
                if d.weights.shape != shape:
                    raise _ShapeMismatch(f"{d.name} is {d.weights.shape[1]}x{d.weights.shape[0]}, frames {shape[1]}x{shape[0]}")
                rows.append(d.weights.astype(np.float32))
                continue
            if centre is None:
                centre = self.centre if self.centre is not None else find_centre(first[: self.centre_frames])
            rows.append(annular_mask(shape, centre, d.inner, d.outer).astype(np.float32))
        if centre is not None and centre != self.centre_used:
            log.info("virtual detector: annuli around (%.2f, %.2f)", *centre)
            self.centre_used = centre
        weights = np.stack(rows)
        if first.dtype.kind in "ui":
            flagged = first[0] == np.iinfo(first.dtype).max  # dead or masked pixels, as DECTRIS marks them
            if flagged.any():
                log.info("virtual detector: %d flagged pixels (at the detector's maximum) left out", int(flagged.sum()))
                weights[:, flagged] = 0
        self._apply_pixel_mask(weights, out)
        self._set_weights(weights.reshape(len(rows), -1))

    def _set_weights(self, weights: np.ndarray) -> None:
        self._weights = weights
        if not self.blas:
            n_det, n = weights.shape
            wp = np.zeros((n_det, self._f32.shape[1]), np.float32)
            wp[:, :n] = weights
            self._wpieces = wp.reshape(n_det, -(-n // _DOT_PIECE), -1)

    def set_pixel_mask(self, pixel_mask: np.ndarray | None) -> list[ImageFrame | VirtualImage | Skip]:
        """The series' pixel mask, where it comes after :meth:`start` (Stream v1 sends it after the
        series header): non-zero pixels are left out of every detector from now on."""
        out: list[ImageFrame | VirtualImage | Skip] = []
        self._flush(out)
        self._pixel_mask = None if pixel_mask is None else np.atleast_2d(np.asarray(pixel_mask) != 0)
        self._mask_refused = False
        if self._weights is not None and self._shape is not None:
            weights = self._weights.copy().reshape(len(self._weights), *self._shape)
            self._apply_pixel_mask(weights, out)
            self._set_weights(weights.reshape(len(weights), -1))
        return out

    def _apply_pixel_mask(self, weights: np.ndarray, out: list) -> None:
        """Zero the series' bad pixels in ``weights`` ``(detectors, H, W)``; a mask of another shape
        is refused, once per series (counted ``malformed``)."""
        bad, shape = self._pixel_mask, weights.shape[1:]
        if bad is None:
            return
        if bad.shape != shape:
            if not self._mask_refused:
                self._mask_refused = True
                out.append(Skip(
                    "malformed", f"series {self._series}: pixel mask of {bad.shape[-1]}x{bad.shape[0]} for frames of "
                    f"{shape[1]}x{shape[0]}: refused (pixels at the detector's maximum are still left out)",
                ))
            return
        if bad.any():
            log.info("virtual detector: %d bad pixels of the series' pixel mask left out", int(bad.sum()))
            weights[:, bad] = 0

    def _release_pending(self, out: list) -> None:
        """The patterns that waited for the centre: weights from them, then reduced in order."""
        pending, self._pending, self._pending_n = self._pending, [], 0
        try:
            self._build_weights(np.concatenate([p for _, p in pending[:1 + self.centre_frames]]), out)
        except _ShapeMismatch as exc:
            out.append(Skip("malformed", f"virtual detector: {exc}", sum(len(p) for _, p in pending)))
            return
        for ids, patterns in pending:
            self._place(ids, self._sums(patterns.reshape(len(patterns), -1)), out)

    def _sums(self, rows: np.ndarray) -> np.ndarray:
        """``(n, pixels)`` patterns -> ``(n, detectors)`` weighted sums, float64."""
        n, p = rows.shape
        weights = self._weights
        assert weights is not None
        n_det = len(weights)
        sums = np.empty((n, n_det), np.float64)
        f32 = self._f32
        for a in range(0, n, len(f32)):
            b = min(n, a + len(f32))
            part = f32[: b - a]
            np.copyto(part[:, :p], rows[a:b], casting="unsafe")
            if self.blas:
                for m in range(n_det):
                    sums[a:b, m] = part @ weights[m]
            else:
                pieces = np.vecdot(part.reshape(b - a, 1, *self._wpieces.shape[1:]), self._wpieces)
                sums[a:b] = pieces.sum(axis=2) if pieces.shape[2] > 1 else pieces[:, :, 0]
        return sums

    def _flush(self, out: list) -> None:
        """Reduce the patterns batched by :meth:`add`."""
        k = self._count
        if k:
            self._count = 0
            self.patterns += k
            self._series_patterns += k
            ids = np.array(self._batch_ids, np.int64)
            self._batch_ids.clear()
            self._place(ids, self._sums(self._raw[:k]), out)  # type: ignore[index]


class _ShapeMismatch(ValueError):
    """A weights file that does not fit the detector's frames (each such frame is malformed)."""
