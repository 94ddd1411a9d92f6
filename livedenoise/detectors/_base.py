"""What every decoder of a detector stream hands the receiver besides messages: the input it
skipped, and the virtual images beyond the one that is denoised; and the check of a frame shape
a detector claims, which every decoder makes before it allocates."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..errors import MalformedMessage
from ..protocol import Limits


class Skip(NamedTuple):
    """Input a decoder passed over, handed to the receiver in line with the messages, which
    counts and logs it (throttled); never an exception, so one bad part does not cost the good
    messages decoded around it.

    ``kind``: ``"malformed"`` (a part that breaks the format, a corrupt blob, a series without its
    header, a pixel mask that does not fit), ``"gaps"`` (frame ids that jump; ``count``
    discontinuities), ``"incomplete"`` (scan frames given up: their series ended before they did,
    or the receiver lost them) or ``"disconnects"`` (the detector's stream ended).
    """

    kind: str
    reason: str
    count: int = 1


class VirtualImage(NamedTuple):
    """A virtual image of a detector other than the first (:class:`~livedenoise.detectors.VirtualDetector`
    with several): the first is an :class:`~livedenoise.protocol.ImageFrame` and is denoised, these
    are published as they are (``serve``: the ``virtual`` topic). ``index``: the detector's place in
    the list (1, 2 ...), ``name`` its name; ``image_id``: the scan frame's, as the first's."""

    series_id: int
    image_id: int
    index: int
    name: str
    data: np.ndarray


def check_shape(height: Any, width: Any, limits: Limits) -> tuple[int, int]:
    """A claimed ``height x width``, as ints within ``limits``, or :class:`MalformedMessage`."""
    if type(height) is not int or type(width) is not int:
        raise MalformedMessage(f"frame shape must be integers, got {height!r:.20} x {width!r:.20}")
    if not (0 < height <= limits.max_side and 0 < width <= limits.max_side) or height * width > limits.max_pixels:
        raise MalformedMessage(f"frame shape {height}x{width} outside the accepted range")
    return height, width
