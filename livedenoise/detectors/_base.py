"""What every decoder of a detector stream hands the receiver besides messages: the input it skipped."""

from __future__ import annotations

from typing import NamedTuple


class Skip(NamedTuple):
    """Input a decoder passed over, handed to the receiver in line with the messages, which
    counts and logs it (throttled); never an exception, so one bad part does not cost the good
    messages decoded around it.

    ``kind``: ``"malformed"`` (a part that breaks the format, a corrupt blob), ``"gaps"`` (frame
    ids that jump; ``count`` discontinuities), ``"incomplete"`` (a scan frame given up because
    its series ended before it did) or ``"disconnects"`` (the detector's stream ended).
    """

    kind: str
    reason: str
    count: int = 1
