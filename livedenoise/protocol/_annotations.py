"""The ``atoms`` and ``hops`` topics (``serve --atoms``): header-only messages, the arrays as
float32/int32 ``bin`` fields, capped so one message always fits the header limit
(``docs/protocol.md``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MalformedMessage
from ._wire import (
    DEFAULT_LIMITS,
    TOPIC_ATOMS,
    TOPIC_HOPS,
    Buffer,
    Limits,
    Published,
    _int_field,
    decode_published,
    pack,
)

# --------------------------------------------------------------------------- atoms (serve --atoms)

#: Most atoms listed in one ``atoms`` message (the brightest; ``count`` still says how many were
#: found): 16 bytes each, so the header stays well under :attr:`Limits.max_header_bytes`.
MAX_ATOMS = 3072
#: Most atoms listed when the message also carries ``evidence`` and ``track_ids`` (24 bytes each:
#: 2560 of them take 61,440 bytes, still under the 64 KiB header cap).
MAX_ATOMS_ANNOTATED = 2560
_ATOM_ARRAYS: tuple[tuple[str, int], ...] = (("positions", 2), ("intensities", 1), ("heights", 1))
_ATOM_EXTRAS: tuple[tuple[str, str], ...] = (("evidence", "<f4"), ("track_ids", "<i4"))


@dataclass(frozen=True, slots=True)
class AtomsMessage:
    """A decoded ``atoms`` message: the peaks found in one denoised frame, brightest first.

    The arrays are read-only views on the received header (no copy). ``evidence``,
    ``track_ids``, ``weak`` and ``weak_z`` are None when the daemon runs without them.
    """

    series_id: int
    image_id: int
    count: int  # atoms found in the frame; ``len(positions)`` is less only beyond MAX_ATOMS
    positions: np.ndarray  # (K, 2) float32, [x, y] = [column, row] in pixels, pixel centres at integers
    intensities: np.ndarray  # (K,) float32, integrated (frame - background) over 5 x 5 px
    heights: np.ndarray  # (K,) float32, peak value minus background
    threshold: float  # the height threshold applied (above background, denoised units)
    header: dict[str, Any] = field(default_factory=dict)
    evidence: np.ndarray | None = None  # (K,) float32, the raw counts' z-score, accumulated along the track
    track_ids: np.ndarray | None = None  # (K,) int32, -1 for an untracked atom
    weak: int | None = None  # atoms whose evidence is below weak_z (NaN counts as weak)
    weak_z: float | None = None  # the evidence threshold of ``weak``

    def __len__(self) -> int:
        return int(self.positions.shape[0])


def encode_atoms(
    header: dict[str, Any],
    positions: np.ndarray,
    intensities: np.ndarray,
    heights: np.ndarray,
    *,
    threshold: float,
    count: int | None = None,
    evidence: np.ndarray | None = None,
    track_ids: np.ndarray | None = None,
    weak: int | None = None,
    weak_z: float | None = None,
) -> list[Buffer]:
    """``[b"atoms", header]``: ``header`` (ids, timestamps) plus ``count``, ``threshold`` and the
    three arrays as little-endian float32 msgpack ``bin`` fields; optionally ``evidence``
    (float32) and ``track_ids`` (int32, -1: untracked), one per atom, and the ``weak`` count with
    its ``weak_z`` threshold.

    The atoms must come brightest first (as :func:`livedenoise.analysis.find_atoms` sorts them):
    beyond :data:`MAX_ATOMS` (:data:`MAX_ATOMS_ANNOTATED` with evidence or track ids) the rest
    are left out, and ``count`` (default: all given) still counts them.

    >>> parts = encode_atoms({"series_id": 1, "image_id": 7}, np.array([[3.25, 4.5]]), np.array([5.0]),
    ...                      np.array([0.9]), threshold=0.3)
    >>> msg = decode_atoms(parts)
    >>> msg.image_id, msg.count, msg.positions.tolist(), msg.threshold, msg.evidence
    (7, 1, [[3.25, 4.5]], 0.3, None)
    >>> parts = encode_atoms({"series_id": 1, "image_id": 8}, np.array([[3.5, 4.5]]), np.array([5.0]),
    ...                      np.array([0.9]), threshold=0.3, evidence=np.array([6.5]), track_ids=np.array([4]),
    ...                      weak=0, weak_z=3.0)
    >>> msg = decode_atoms(parts)
    >>> msg.evidence.tolist(), msg.track_ids.tolist(), msg.weak, msg.weak_z
    ([6.5], [4], 0, 3.0)
    """
    annotated = evidence is not None or track_ids is not None
    cap = MAX_ATOMS_ANNOTATED if annotated else MAX_ATOMS
    arrays = {}
    k = None
    for (name, cols), values in zip(_ATOM_ARRAYS, (positions, intensities, heights), strict=True):
        arr = np.asarray(values, dtype="<f4")
        if arr.ndim == 0 or arr.shape != ((len(arr), cols) if cols > 1 else (len(arr),)):
            raise ValueError(f"atoms {name}: expected {cols} value(s) per atom, got shape {arr.shape}")
        if k is not None and arr.shape[0] != k:
            raise ValueError(f"atoms arrays differ in length: {name} has {arr.shape[0]}, expected {k}")
        k = arr.shape[0]
        arrays[name] = np.ascontiguousarray(arr[:cap]).tobytes()
    assert k is not None
    for (name, dtype), values in zip(_ATOM_EXTRAS, (evidence, track_ids), strict=True):
        if values is None:
            continue
        arr = np.asarray(values)
        if arr.shape != (k,):
            raise ValueError(f"atoms {name}: expected shape ({k},), got {arr.shape}")
        if dtype == "<i4" and arr.size and (arr.min() < -1 or arr.max() > np.iinfo(np.int32).max):
            raise ValueError(f"atoms {name} must be int32 values >= -1")
        arrays[name] = np.ascontiguousarray(arr[:cap], dtype=dtype).tobytes()
    count = k if count is None else int(count)
    if count < k:
        raise ValueError(f"count {count} is less than the {k} atoms given")
    extra: dict[str, Any] = {}
    if weak is not None:
        extra["weak"] = int(weak)
    if weak_z is not None:
        extra["weak_z"] = float(weak_z)
    return [TOPIC_ATOMS, pack({**header, "count": count, "threshold": float(threshold), **arrays, **extra})]


def decode_atoms(message: Published | Sequence[Buffer], limits: Limits = DEFAULT_LIMITS) -> AtomsMessage:
    """Validate and decode an ``atoms`` message (raw parts, or a :class:`Published` already decoded).

    Raises :class:`MalformedMessage` if anything is off: not the atoms topic, a payload part,
    mistyped ids, count or threshold, arrays of the wrong type, of unequal lengths, more than
    :data:`MAX_ATOMS` or more than ``count``; an ``evidence`` or ``track_ids`` field that is not
    bin of K values (or track ids below -1), a ``weak`` that is not an integer in [0, count], a
    ``weak_z`` not a finite number.
    """
    msg = message if isinstance(message, Published) else decode_published(message, limits)
    if msg.topic != TOPIC_ATOMS or msg.data is not None:
        raise MalformedMessage(f"not an atoms message (topic {msg.topic!r:.20}, payload {msg.data is not None})")
    header = msg.header
    series_id = _int_field(header, "series_id")
    image_id = _int_field(header, "image_id")
    count = _int_field(header, "count")
    threshold = header.get("threshold")
    if type(threshold) not in (int, float):
        raise MalformedMessage(f"atoms threshold must be a number, got {threshold!r:.40}")
    arrays = []
    k = None
    for name, cols in _ATOM_ARRAYS:
        raw = header.get(name)
        if type(raw) is not bytes or len(raw) % (4 * cols):
            raise MalformedMessage(f"atoms {name} must be bin of float32 x {cols} per atom")
        n = len(raw) // (4 * cols)
        if k is not None and n != k:
            raise MalformedMessage(f"atoms {name} lists {n} atoms, positions {k}")
        k = n
        arr = np.frombuffer(raw, dtype="<f4")
        arrays.append(arr.reshape(n, cols) if cols > 1 else arr)
    assert k is not None
    if k > min(count, MAX_ATOMS):
        raise MalformedMessage(f"atoms message lists {k} atoms for a count of {count} (at most {MAX_ATOMS})")
    extras: list[np.ndarray | None] = []
    for name, dtype in _ATOM_EXTRAS:
        raw = header.get(name)
        if raw is None:
            extras.append(None)
            continue
        if type(raw) is not bytes or len(raw) != 4 * k:
            raise MalformedMessage(f"atoms {name} must be bin of {k} x 4 bytes (one {dtype} per atom)")
        extras.append(np.frombuffer(raw, dtype=dtype))
    if extras[1] is not None and k and int(extras[1].min()) < -1:
        raise MalformedMessage("atoms track_ids must be >= -1")
    weak = header.get("weak")
    if weak is not None and (type(weak) is not int or not 0 <= weak <= count):
        raise MalformedMessage(f"atoms weak must be an integer in [0, count], got {weak!r:.40}")
    weak_z = header.get("weak_z")
    if weak_z is not None and (type(weak_z) not in (int, float) or not math.isfinite(weak_z)):
        raise MalformedMessage(f"atoms weak_z must be a finite number, got {weak_z!r:.40}")
    return AtomsMessage(
        series_id,
        image_id,
        count,
        *arrays,
        threshold=float(threshold),
        header=header,
        evidence=extras[0],
        track_ids=extras[1],
        weak=weak,
        weak_z=None if weak_z is None else float(weak_z),
    )


# --------------------------------------------------------------------------- hops (serve --atoms)

#: Most hops listed in one ``hops`` message (``count`` still says how many there were).
MAX_HOPS = 256
_HOP_ARRAYS: tuple[tuple[str, str, int], ...] = (
    ("track_ids", "<i4", 1),
    ("before", "<f4", 2),
    ("after", "<f4", 2),
    ("before_image_ids", "<i4", 1),
)


@dataclass(frozen=True, slots=True)
class HopsMessage:
    """A decoded ``hops`` message: the tracks whose atom jumped on one frame.

    Arrays (length M = the hops listed) are read-only views on the received header.
    """

    series_id: int
    image_id: int  # the frame the atoms landed on
    count: int  # hops on this frame; ``len(track_ids)`` is less only beyond MAX_HOPS
    track_ids: np.ndarray  # (M,) int32, as on the ``atoms`` topic
    before: np.ndarray  # (M, 2) float32 [x, y] px, the track's last position before the hop
    after: np.ndarray  # (M, 2) float32 [x, y] px, where it landed (on frame ``image_id``)
    before_image_ids: np.ndarray  # (M,) int32, the frame of ``before`` (earlier than image_id by 1 + gap)
    header: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.track_ids.shape[0])


def encode_hops(
    header: dict[str, Any],
    track_ids: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    before_image_ids: np.ndarray,
    count: int | None = None,
) -> list[Buffer]:
    """``[b"hops", header]``: ``header`` (``series_id``, ``image_id``, timestamps) plus ``count``
    and the four arrays as little-endian msgpack ``bin`` fields, at most :data:`MAX_HOPS` listed.

    >>> parts = encode_hops({"series_id": 1, "image_id": 9}, np.array([3]), np.array([[10.0, 4.0]]),
    ...                     np.array([[14.5, 4.0]]), np.array([8]))
    >>> msg = decode_hops(parts)
    >>> msg.image_id, msg.count, msg.track_ids.tolist(), msg.after.tolist(), msg.before_image_ids.tolist()
    (9, 1, [3], [[14.5, 4.0]], [8])
    """
    arrays = {}
    m = None
    for (name, dtype, cols), values in zip(_HOP_ARRAYS, (track_ids, before, after, before_image_ids), strict=True):
        arr = np.asarray(values)
        if arr.ndim == 0 or arr.shape != ((len(arr), cols) if cols > 1 else (len(arr),)):
            raise ValueError(f"hops {name}: expected {cols} value(s) per hop, got shape {arr.shape}")
        if m is not None and arr.shape[0] != m:
            raise ValueError(f"hops arrays differ in length: {name} has {arr.shape[0]}, expected {m}")
        m = arr.shape[0]
        if dtype == "<i4" and arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
            raise ValueError(f"hops {name} must be int32 values >= 0")
        arrays[name] = np.ascontiguousarray(arr[:MAX_HOPS], dtype=dtype).tobytes()
    assert m is not None
    count = m if count is None else int(count)
    if count < m:
        raise ValueError(f"count {count} is less than the {m} hops given")
    return [TOPIC_HOPS, pack({**header, "count": count, **arrays})]


def decode_hops(message: Published | Sequence[Buffer], limits: Limits = DEFAULT_LIMITS) -> HopsMessage:
    """Validate and decode a ``hops`` message (raw parts, or a :class:`Published` already decoded).

    Raises :class:`MalformedMessage` if anything is off: not the hops topic, a payload part,
    mistyped ids or count, arrays that are not bin of the right size, of unequal lengths, negative
    ids, more than :data:`MAX_HOPS` or more than ``count``.
    """
    msg = message if isinstance(message, Published) else decode_published(message, limits)
    if msg.topic != TOPIC_HOPS or msg.data is not None:
        raise MalformedMessage(f"not a hops message (topic {msg.topic!r:.20}, payload {msg.data is not None})")
    header = msg.header
    series_id = _int_field(header, "series_id")
    image_id = _int_field(header, "image_id")
    count = _int_field(header, "count")
    arrays = []
    m = None
    for name, dtype, cols in _HOP_ARRAYS:
        raw = header.get(name)
        if type(raw) is not bytes or len(raw) % (4 * cols):
            raise MalformedMessage(f"hops {name} must be bin of {dtype} x {cols} per hop")
        n = len(raw) // (4 * cols)
        if m is not None and n != m:
            raise MalformedMessage(f"hops {name} lists {n} hops, track_ids {m}")
        m = n
        arr = np.frombuffer(raw, dtype=dtype)
        arrays.append(arr.reshape(n, cols) if cols > 1 else arr)
    assert m is not None
    if m and (int(arrays[0].min()) < 0 or int(arrays[3].min()) < 0):
        raise MalformedMessage("hops track_ids and before_image_ids must be >= 0")
    if m > min(count, MAX_HOPS):
        raise MalformedMessage(f"hops message lists {m} hops for a count of {count} (at most {MAX_HOPS})")
    return HopsMessage(series_id, image_id, count, *arrays, header=header)
