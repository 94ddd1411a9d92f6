"""The causal window of multi-frame models: each series' previous frames, as the engine saw them.

A ``k``-frame model (``ModelCard.input_frames = k > 1``) reads the current frame in channel
``k - 1`` and the frame ``j`` frames earlier in channel ``k - 1 - j``; at the start of a series
(or after a restart) the oldest frame available is repeated, the rule
:func:`~livedenoise.engine.causal_windows` applies offline, so training sees what serve feeds.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

import numpy as np

MAX_SERIES_HISTORY = 8  # series whose previous frames are kept


class CausalHistory:
    """Per series, the ``k - 1`` normalised frames before the current one (most recent series kept)."""

    def __init__(self, k: int, max_series: int = MAX_SERIES_HISTORY):
        self.k = k
        self.max_series = max_series
        self._series: OrderedDict[int, deque[np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._series)

    def reset(self, series_id: int) -> None:
        """Forget a series' frames (a restart, or the end of a series)."""
        self._series.pop(series_id, None)

    def fill(
        self,
        buf: np.ndarray,
        idx: list[int],
        series: Sequence[int] | None,
        shape: tuple[int, int],
        restart: Sequence[bool] | None = None,
    ) -> None:
        """Write channels ``0 .. k-2`` of rows ``0 .. len(idx)-1`` of ``buf`` from each frame's
        history (channel ``k - 1`` holds the frame itself), then remember the frame. ``restart[i]``
        starts frame ``i``'s series afresh, mid-batch if need be."""
        k = self.k
        h, w = shape
        for j, i in enumerate(idx):
            sid = series[i] if series is not None else 0
            hist = self._series.get(sid)
            if hist is None or (hist and hist[-1].shape != shape) or (restart is not None and restart[i]):
                hist = deque(maxlen=k - 1)
                self._series[sid] = hist
            self._series.move_to_end(sid)
            while len(self._series) > self.max_series:
                self._series.popitem(last=False)
            current = buf[j, k - 1, :h, :w]
            past = list(hist)
            for c in range(k - 1):
                back = k - 1 - c  # frames before the current one
                src = past[-back] if back <= len(past) else (past[0] if past else current)
                buf[j, c, :h, :w] = src
            hist.append(current.copy())
