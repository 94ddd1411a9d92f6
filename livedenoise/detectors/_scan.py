"""The virtual detector's scan frames: the sums of patterns placed at their scan positions, gaps
counted and filled, frames emitted as they complete or dropped (``incomplete``) where too few
positions came (the rules: :mod:`._virtual`'s docstring).
"""

from __future__ import annotations

import itertools

import numpy as np

from ..protocol import ImageFrame
from ._base import Skip, VirtualImage


class _ScanFrames:
    """The open scan frame, methods of :class:`~livedenoise.detectors.VirtualDetector` (which holds
    the state): a module of their own for its length."""

    def _place(self, ids: np.ndarray, sums: np.ndarray, out: list) -> None:
        """Write the sums of patterns ``ids`` (in arrival order) into their scan frames: out of
        order ids dropped, jumps counted as gaps, frames emitted as they complete."""
        last = self._last_id
        running = np.maximum.accumulate(np.concatenate(([ids[0] - 1 if last is None else last], ids)))
        before = running[:-1]
        ok = ids > before
        series = self._series
        if not ok.all():
            bad = np.flatnonzero(~ok)
            more = f" (and {len(bad) - 1} more out of order)" if len(bad) > 1 else ""
            out.append(Skip("gaps", f"series {series}: diffraction image {ids[bad[0]]} after {before[bad[0]]}: dropped{more}", len(bad)))
            ids, sums, before = ids[ok], sums[ok], before[ok]
            if not len(ids):
                return
        jumps = np.flatnonzero(ids > before + 1)
        if len(jumps):
            j = jumps[0]
            more = f"; {len(jumps) - 1} more jumps" if len(jumps) > 1 else ""
            out.append(Skip("gaps", f"series {series}: diffraction image {ids[j]} after {before[j]} ({ids[j] - before[j] - 1} missing){more}", len(jumps)))
        self._last_id = int(ids[-1])
        positions = self.positions
        scans, pos = np.divmod(ids, positions)
        cuts = [0, *(np.flatnonzero(np.diff(scans)) + 1).tolist(), len(ids)]
        for a, b in itertools.pairwise(cuts):
            k = int(scans[a])
            if self._join:
                if pos[a] != 0:
                    if self._join_dropped != k:
                        self._join_dropped = k
                        out.append(Skip("incomplete", f"series {series}: picked up at scan frame {k}, position {pos[a]}: that scan frame is dropped"))
                    continue
                self._join = False
            if self._k != k:
                if self._k is not None:
                    self._emit(out)
                self._k = k
            self._image[:, pos[a:b]] = sums[a:b].T
            self._filled += b - a
            if pos[b - 1] == positions - 1:
                self._emit(out)

    def _drop_open(self, out: list, why: str) -> None:
        if self._k is not None:
            out.append(Skip(
                "incomplete", f"series {self._series}: scan frame {self._k} dropped at {self._filled} of "
                f"{self.positions} positions: {why}",
            ))
            self._close()

    def _emit(self, out: list) -> None:
        image, filled = self._image, self._filled
        if filled < self.positions:
            if 2 * filled < self.positions:
                out.append(Skip(
                    "incomplete", f"series {self._series}: scan frame {self._k} had {filled} of {self.positions} positions: dropped"
                ))
                self._close()
                return
            image = np.where(np.isnan(image), np.nanmean(image, axis=1, keepdims=True), image)
        data = image.astype("<f4").reshape(len(image), *self.scan)
        series, k = self._series, self._k
        assert series is not None and k is not None
        out.append(ImageFrame(series_id=series, image_id=k, data=data[0]))
        for m in range(1, len(data)):
            out.append(VirtualImage(series, k, m, self.names[m], data[m]))
        self._close()

    def _close(self) -> None:
        self._k = None
        self._image.fill(np.nan)
        self._filled = 0
