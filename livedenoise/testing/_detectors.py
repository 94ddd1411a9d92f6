"""Helpers of the pixelated-detector tests (DECTRIS, Merlin): what a virtual detector should give,
and senders on a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np


def virtual_reference(patterns: np.ndarray, centre, inner: float, outer: float, scan: tuple[int, int]) -> np.ndarray:
    """The annular virtual image of ``patterns`` ``(N, h, w)`` (a scan of ``scan`` positions), summed
    in float64 with the detectors' own mask: what serve's virtual detector must publish."""
    from ..detectors import annular_mask

    mask = annular_mask(patterns.shape[1:], centre, inner, outer)
    return (patterns.astype(np.float64) * mask).sum(axis=(1, 2)).reshape(-1, *scan).astype("<f4")


def send_in_thread(target: Callable[[], object]) -> threading.Thread:
    """Run a sender (a detector simulator's loop) on a daemon thread, started."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread
