"""The frame protocol: what detectors send to ``serve`` and what ``serve`` publishes.

This module is the contract instrument programmers write against (``docs/protocol.md`` is its
prose twin). It knows msgpack and numpy, nothing of sockets, so a test or a fuzzer can drive it
with plain byte strings.

Input (detector -> daemon):

* image: ``[header, payload]``; ``header`` a msgpack map with ``htype="image"``, ``series_id``,
  ``image_id``, ``shape=[height, width]``, ``dtype`` (one of :data:`SUPPORTED_DTYPES`), optional
  ``start_time`` (ns), ``user_data`` and ``calibration`` (:class:`Calibration`); ``payload`` exactly ``height*width*itemsize`` C-order bytes.
* series framing: one-part ``{htype: "start", series_id, ...}`` and ``{htype: "end", series_id}``.

Output (daemon PUB socket, ``[topic, header(, payload)]``): topics :data:`TOPIC_DENOISED`,
:data:`TOPIC_RAW`, :data:`TOPIC_STATS`, :data:`TOPIC_ATOMS`, :data:`TOPIC_HOPS` and
:data:`TOPIC_VIRTUAL` (4D-STEM with several virtual detectors: the images of those after the first,
``[topic, header, payload]`` as ``raw``, the header naming the ``detector`` and its ``index``). ``atoms``
(``serve --atoms``) is header-only like ``stats``: ids, ``count``, ``threshold`` and the peaks'
positions, intensities and heights as float32 ``bin`` fields, optionally each atom's evidence
z-score and track id (:func:`encode_atoms`, :func:`decode_atoms`), at most :data:`MAX_ATOMS` of
them (:data:`MAX_ATOMS_ANNOTATED` with evidence or track ids), so it fits the header cap. ``hops``
(header-only too) lists the tracks of one frame whose atom jumped (:func:`encode_hops`,
:func:`decode_hops`).

Everything is checked and capped *before* allocation: a header is at most
:attr:`Limits.max_header_bytes`, and a claimed frame larger than :attr:`Limits.max_pixels` is
rejected without touching the payload.

Examples
--------
>>> import numpy as np
>>> parts = encode_image(np.zeros((4, 6), "<u2"), series_id=1, image_id=0)
>>> msg = decode_detector_message(parts)
>>> msg.series_id, msg.image_id, msg.data.shape, msg.data.dtype.str
(1, 0, (4, 6), '<u2')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from ..errors import MalformedMessage

SUPPORTED_DTYPES: frozenset[str] = frozenset({"|u1", "<u2", "<i2", "<u4", "<f4"})

TOPIC_DENOISED = b"denoised"
TOPIC_RAW = b"raw"
TOPIC_STATS = b"stats"
TOPIC_ATOMS = b"atoms"
TOPIC_HOPS = b"hops"
TOPIC_VIRTUAL = b"virtual"  # 4D-STEM: the virtual detectors after the first (serve --scan, several --annulus/--mask)
TOPICS: tuple[bytes, ...] = (TOPIC_DENOISED, TOPIC_RAW, TOPIC_STATS, TOPIC_ATOMS, TOPIC_HOPS, TOPIC_VIRTUAL)

Buffer = bytes | bytearray | memoryview  # anything with the buffer protocol (zmq.Frame too)


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps applied before any allocation, so a hostile header cannot exhaust memory."""

    max_header_bytes: int = 64 * 1024
    max_side: int = 8192
    max_pixels: int = 4096 * 4096


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Calibration:
    """What one pixel and one frame are in physical units: the optional ``calibration`` field.

    On the wire a msgpack map ``{"pixel_size_nm": float, "frame_time_s": float}``, each key
    optional. Pixels are square, and the size is always in nanometres whatever the source unit,
    so a receiver never converts. Decoding ignores unknown keys (the map can grow) and rejects a
    value that is not a positive finite number.

    >>> Calibration(0.0384, 1.5).to_header()
    {'pixel_size_nm': 0.0384, 'frame_time_s': 1.5}
    >>> Calibration.from_header({"pixel_size_nm": 0.1, "detector": "HAADF"})
    Calibration(pixel_size_nm=0.1, frame_time_s=None)
    """

    pixel_size_nm: float | None = None
    frame_time_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("pixel_size_nm", "frame_time_s"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
                raise ValueError(f"calibration {name} must be a number, got {value!r:.40}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"calibration {name} must be a positive finite number, got {value!r:.40}")
            object.__setattr__(self, name, float(value))  # numpy scalars become plain floats

    def to_header(self) -> dict[str, float]:
        """The wire map: only the keys that are known."""
        out: dict[str, float] = {}
        if self.pixel_size_nm is not None:
            out["pixel_size_nm"] = float(self.pixel_size_nm)
        if self.frame_time_s is not None:
            out["frame_time_s"] = float(self.frame_time_s)
        return out

    @classmethod
    def from_header(cls, value: Any) -> Calibration | None:
        """Decode the ``calibration`` map; ``None`` stays ``None`` (and so does an empty map).

        Raises :class:`MalformedMessage` for anything but a map of positive finite numbers.
        """
        if value is None:
            return None
        if not isinstance(value, dict):
            raise MalformedMessage(f"calibration must be a map, got {type(value).__name__}")
        fields: dict[str, float] = {}
        for key in ("pixel_size_nm", "frame_time_s"):
            item = value.get(key)
            if item is None:
                continue
            if type(item) not in (int, float) or not (math.isfinite(item) and item > 0):
                raise MalformedMessage(f"calibration {key} must be a positive finite number, got {item!r:.40}")
            fields[key] = float(item)
        return cls(**fields) if fields else None


@dataclass(frozen=True, slots=True)
class ImageFrame:
    """One detector frame. ``data`` is a read-only view on the received payload (zero-copy)."""

    series_id: int
    image_id: int
    data: np.ndarray
    start_time: int | None = None
    user_data: Any = None
    calibration: Calibration | None = None


@dataclass(frozen=True, slots=True)
class SeriesStart:
    series_id: int
    header: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SeriesEnd:
    series_id: int


DetectorMessage = ImageFrame | SeriesStart | SeriesEnd


@dataclass(frozen=True, slots=True)
class Published:
    """A decoded message from the daemon's PUB socket (for subscribers, the viewer, tests)."""

    topic: bytes
    header: dict[str, Any]
    data: np.ndarray | None = None


# --------------------------------------------------------------------------- msgpack helpers


def _unpack_header(raw: Buffer, limits: Limits) -> dict[str, Any]:
    view = memoryview(raw)
    if view.nbytes > limits.max_header_bytes:
        raise MalformedMessage(f"header of {view.nbytes} bytes exceeds {limits.max_header_bytes}")
    cap = limits.max_header_bytes
    try:
        header = msgpack.unpackb(
            view,
            raw=False,
            strict_map_key=True,
            max_str_len=cap,
            max_bin_len=cap,
            max_array_len=cap,
            max_map_len=cap,
            max_ext_len=0,
        )
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types; all mean "not a valid header"
        raise MalformedMessage(f"header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise MalformedMessage(f"header is a {type(header).__name__}, not a map")
    return header


def _int_field(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if type(value) is not int:  # bool is an int subclass: reject it too
        raise MalformedMessage(f"header field {key!r} must be an integer, got {value!r:.40}")
    return value


def pack(obj: Any) -> bytes:
    """msgpack without pickle: plain maps, lists, numbers and strings only."""
    return msgpack.packb(obj, use_bin_type=True)


# --------------------------------------------------------------------------- detector side


def encode_image(
    data: np.ndarray,
    *,
    series_id: int,
    image_id: int,
    start_time: int | None = None,
    user_data: Any = None,
    calibration: Calibration | None = None,
) -> list[Buffer]:
    """Build the two-part image message a detector sends (payload is not copied).

    ``calibration`` (pixel size in nm, frame time in s) goes into the optional header field of
    the same name; ``serve`` passes it through to its outputs and its recording.
    """
    arr = np.ascontiguousarray(data)
    dtype = arr.dtype.str
    if dtype not in SUPPORTED_DTYPES or arr.ndim != 2:
        raise ValueError(f"cannot send a {arr.ndim}-D {dtype} frame; need 2-D {sorted(SUPPORTED_DTYPES)}")
    header: dict[str, Any] = {
        "htype": "image",
        "series_id": int(series_id),
        "image_id": int(image_id),
        "shape": list(arr.shape),
        "dtype": dtype,
    }
    if start_time is not None:
        header["start_time"] = int(start_time)
    if user_data is not None:
        header["user_data"] = user_data
    if calibration is not None and (cal := calibration.to_header()):
        header["calibration"] = cal
    return [pack(header), memoryview(arr).cast("B")]


def encode_start(series_id: int, **extra: Any) -> list[bytes]:
    return [pack({"htype": "start", "series_id": int(series_id), **extra})]


def encode_end(series_id: int) -> list[bytes]:
    return [pack({"htype": "end", "series_id": int(series_id)})]


def decode_detector_message(
    parts: Sequence[Buffer], limits: Limits = DEFAULT_LIMITS
) -> DetectorMessage:
    """Validate and decode one detector message; raise :class:`MalformedMessage` if it is bad.

    The image payload becomes a read-only numpy view on the received buffer (no copy).
    NaN/inf pixels are not checked here: that is a per-pixel cost the engine pays once, vectorised.
    """
    if not 1 <= len(parts) <= 2:
        raise MalformedMessage(f"expected 1 or 2 message parts, got {len(parts)}")
    header = _unpack_header(parts[0], limits)
    htype = header.get("htype")
    if htype in ("start", "end"):
        if len(parts) != 1:
            raise MalformedMessage(f"{htype!r} message must have one part, got {len(parts)}")
        series_id = _int_field(header, "series_id")
        return SeriesStart(series_id, header) if htype == "start" else SeriesEnd(series_id)
    if htype != "image":
        raise MalformedMessage(f"unknown htype {htype!r:.40}")
    if len(parts) != 2:
        raise MalformedMessage("image message must have two parts: header and payload")
    series_id = _int_field(header, "series_id")
    image_id = _int_field(header, "image_id")
    shape = header.get("shape")
    if (
        not isinstance(shape, list | tuple)
        or len(shape) != 2
        or not all(type(s) is int for s in shape)
    ):
        raise MalformedMessage(f"shape must be [height, width] integers, got {shape!r:.60}")
    height, width = shape
    if not (0 < height <= limits.max_side and 0 < width <= limits.max_side) or (
        height * width > limits.max_pixels
    ):
        raise MalformedMessage(f"frame shape {height}x{width} outside the accepted range")
    dtype = header.get("dtype")
    if type(dtype) is not str or dtype not in SUPPORTED_DTYPES:  # a list/map would not even hash
        raise MalformedMessage(f"unsupported dtype {dtype!r:.20}; use one of {sorted(SUPPORTED_DTYPES)}")
    payload = memoryview(parts[1])
    expected = height * width * np.dtype(dtype).itemsize
    if payload.nbytes != expected:
        raise MalformedMessage(
            f"payload is {payload.nbytes} bytes, shape {height}x{width} {dtype} needs {expected}"
        )
    data = np.frombuffer(payload, dtype=dtype).reshape(height, width)
    start_time = header.get("start_time")
    if start_time is not None and type(start_time) is not int:
        raise MalformedMessage("start_time must be an integer (ns)")
    calibration = Calibration.from_header(header.get("calibration"))
    return ImageFrame(series_id, image_id, data, start_time, header.get("user_data"), calibration)


# --------------------------------------------------------------------------- daemon output


def encode_published(topic: bytes, header: dict[str, Any], data: np.ndarray | None = None) -> list[Buffer]:
    """``[topic, header]`` or ``[topic, header, payload]``; header gets shape/dtype from ``data``."""
    if data is None:
        return [topic, pack(header)]
    arr = np.ascontiguousarray(data)
    header = {**header, "shape": list(arr.shape), "dtype": arr.dtype.str}
    return [topic, pack(header), memoryview(arr).cast("B")]


def decode_published(parts: Sequence[Buffer], limits: Limits = DEFAULT_LIMITS) -> Published:
    """Decode a message from the daemon's PUB socket (the inverse of :func:`encode_published`)."""
    if len(parts) not in (2, 3):
        raise MalformedMessage(f"expected 2 or 3 parts, got {len(parts)}")
    topic = bytes(parts[0])
    header = _unpack_header(parts[1], limits)
    if len(parts) == 2:
        return Published(topic, header)
    shape = header.get("shape")
    dtype = header.get("dtype")
    shape_ok = isinstance(shape, list | tuple) and len(shape) == 2 and all(type(s) is int and s > 0 for s in shape)
    if not shape_ok or type(dtype) is not str or dtype not in SUPPORTED_DTYPES:
        raise MalformedMessage(f"published payload with bad shape/dtype {shape} {dtype!r:.20}")
    payload = memoryview(parts[2])
    if payload.nbytes != math.prod(shape) * np.dtype(dtype).itemsize:
        raise MalformedMessage("published payload length does not match its shape")
    return Published(topic, header, np.frombuffer(payload, dtype=dtype).reshape(shape))


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
