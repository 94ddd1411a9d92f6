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
