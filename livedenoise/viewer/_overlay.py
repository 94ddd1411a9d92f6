"""What the monitor draws over the denoised frame, as plain numbers (no Qt): ring colours from each
atom's evidence, which atoms are weak, the trail of each track, and how far a hop marker has faded.

The daemon (``serve --atoms``) publishes, per atom, the evidence z-score that the raw counts support
it (accumulated along its track: :class:`livedenoise.analysis.TrackEvidence`) and its track id, and
hop events on their own topic (``docs/protocol.md``). A denoiser can invent a convincing atom out of
a few bright noise pixels; the colour of its ring is how the operator tells it from a real one.

**Colours** (:func:`evidence_index` into :data:`PALETTE`): two ramps that meet at ``weak_z`` with a
jump, so "weak" and "supported" never look alike. Weak atoms (z below ``weak_z``) go from magenta
(z <= 0: nothing there) to pale pink; supported ones from cyan (just above ``weak_z``) to green
(z >= :func:`strong_z`). NaN (no figure could be made: the daemon counts it as weak) is drawn as
z <= 0. Atoms of a daemon that publishes no evidence (an older version) keep the plain red ring of
:data:`NO_EVIDENCE`.

>>> evidence_index(np.array([-2.0, 2.9, 3.0, 50.0, np.nan]), weak_z=3.0).tolist()
[0, 7, 8, 15, 0]
>>> weak_mask(np.array([-2.0, 2.9, 3.0, np.nan]), weak_z=3.0).tolist()
[True, True, False, True]
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..analysis import WEAK_Z
from ..protocol import AtomsMessage

__all__ = [
    "NO_EVIDENCE",
    "PALETTE",
    "STEPS",
    "WEAK_Z",
    "evidence_index",
    "fade",
    "strong_z",
    "trails",
    "weak_mask",
]

STEPS = 8  # colours per ramp: the overlay reuses 2 x STEPS pens, whatever the number of atoms
NO_EVIDENCE = (255, 70, 70)  # the ring of an atom without evidence: the monitor's colour before evidence
WEAK_LOW, WEAK_HIGH = (230, 40, 230), (255, 175, 255)  # z <= 0 .. just below weak_z
STRONG_LOW, STRONG_HIGH = (40, 215, 255), (70, 255, 90)  # weak_z .. strong_z and above


def _ramp(low: tuple[int, int, int], high: tuple[int, int, int]) -> np.ndarray:
    t = np.linspace(0.0, 1.0, STEPS)[:, None]
    return np.rint((1 - t) * np.array(low) + t * np.array(high)).astype(np.uint8)


#: (2 STEPS, 3) uint8 RGB: the weak ramp, then the supported one.
PALETTE: np.ndarray = np.concatenate([_ramp(WEAK_LOW, WEAK_HIGH), _ramp(STRONG_LOW, STRONG_HIGH)])


def strong_z(weak_z: float = WEAK_Z) -> float:
    """The z at which the supported ramp tops out (3 x ``weak_z`` for the default: a z of 9 is an
    atom no reasonable noise gives)."""
    return weak_z + 2.0 * max(weak_z, 1.0)


def weak_mask(evidence: np.ndarray, weak_z: float = WEAK_Z) -> np.ndarray:
    """Atoms whose evidence is below ``weak_z``, or NaN (as the daemon counts its ``weak``)."""
    z = np.asarray(evidence, np.float64)
    return ~(z >= weak_z)


@lru_cache(maxsize=8)
def _edges(weak_z: float) -> np.ndarray:
    """The z values where the colour steps up: each ramp's levels rounded to the nearest, and the
    jump at ``weak_z`` (16 levels, 15 edges)."""
    half = (np.arange(STEPS - 1) + 0.5) / (STEPS - 1)
    weak = half * weak_z if weak_z > 0 else np.full(STEPS - 1, weak_z)  # weak_z <= 0: every weak atom at 0
    strong = weak_z + half * (strong_z(weak_z) - weak_z)
    return np.concatenate([np.minimum(weak, weak_z), [weak_z], strong])


def evidence_index(evidence: np.ndarray, weak_z: float = WEAK_Z) -> np.ndarray:
    """Each atom's colour as an index into :data:`PALETTE` (NaN: 0, the bottom of the weak ramp).

    One ``searchsorted`` on the ramps' edges: a few microseconds whatever the number of atoms.
    """
    z = np.asarray(evidence, np.float64)
    return np.searchsorted(_edges(float(weak_z)), np.where(np.isnan(z), -np.inf, z), side="right")


def trails(
    history: Sequence[AtomsMessage], shown: AtomsMessage, length: int, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The trail of each track of ``shown``: its positions in the last ``length`` frames up to the
    shown one, from ``history`` (the atoms messages kept, any order). Returns ``(points, connect)``
    for one line item: (P, 2) float32 ``[x, y]`` sorted by track then image id, and (P,) bool,
    True where a point joins the next one (same track).

    Only tracks alive in ``shown`` get a trail (``keep``: those of its atoms drawn), so a track that
    ended leaves nothing behind, and the memory is that of the messages kept: bounded.

    >>> from livedenoise.protocol import decode_atoms, encode_atoms
    >>> def msg(i, xy, ids):
    ...     xy = np.array(xy, np.float32)
    ...     k = len(xy)
    ...     return decode_atoms(encode_atoms({"series_id": 1, "image_id": i}, xy, np.ones(k), np.ones(k),
    ...                                      threshold=0.3, track_ids=np.array(ids)))
    >>> history = [msg(0, [[1, 1], [9, 9]], [0, 1]), msg(1, [[2, 1]], [0]), msg(2, [[3, 1], [20, 20]], [0, 2])]
    >>> points, connect = trails(history, history[-1], length=10)
    >>> points.tolist(), connect.tolist()
    ([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [20.0, 20.0]], [True, True, False, False])
    """
    empty = np.zeros((0, 2), np.float32), np.zeros(0, bool)
    ids_shown = shown.track_ids
    if ids_shown is None or len(shown) == 0 or length < 2:
        return empty
    alive = ids_shown[ids_shown >= 0] if keep is None else ids_shown[keep & (ids_shown >= 0)]
    if alive.size == 0:
        return empty
    first = shown.image_id - length
    parts = [
        m for m in history
        if m.series_id == shown.series_id and first < m.image_id <= shown.image_id and m.track_ids is not None
        and len(m)
    ]
    if not parts:
        return empty
    tid = np.concatenate([m.track_ids for m in parts])
    image = np.repeat(np.array([m.image_id for m in parts], np.int64), [len(m) for m in parts])
    xy = np.concatenate([m.positions for m in parts])
    on = np.isin(tid, alive)
    tid, image, xy = tid[on], image[on], xy[on]
    order = np.lexsort((image, tid))
    tid, xy = tid[order], xy[order]
    connect = np.zeros(tid.size, bool)
    connect[:-1] = tid[1:] == tid[:-1]
    return np.ascontiguousarray(xy, np.float32), connect


def fade(age: np.ndarray, span: float) -> np.ndarray:
    """Opacity of a marker ``age`` seconds old that fades out linearly over ``span`` seconds (0 after).

    >>> fade(np.array([0.0, 0.25, 1.0, 2.0]), 1.0).tolist()
    [1.0, 0.75, 0.0, 0.0]
    """
    return np.clip(1.0 - np.asarray(age, np.float64) / span, 0.0, 1.0)
