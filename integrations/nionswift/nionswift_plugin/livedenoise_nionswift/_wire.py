# Copyright (C) 2025 the livedenoise authors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The livedenoise frame protocol, written from its published description (docs/protocol.md).

Only numpy and msgpack: the plug-in never imports livedenoise, so a Swift environment needs neither
onnxruntime nor anything else of the daemon. ``serve`` validates every message anyway; the checks
here keep a stray or hostile publisher from making Swift allocate or crash.

>>> import numpy as np
>>> parts = encode_image(np.zeros((2, 3), "<u2"), series_id=1, image_id=0, start_time=5,
...                      calibration={"pixel_size_nm": 0.02})
>>> header = msgpack.unpackb(parts[0])
>>> header["shape"], header["dtype"], header["calibration"]
([2, 3], '<u2', {'pixel_size_nm': 0.02})
>>> to_nm(2.0, "Å"), to_nm(0.5, "µm"), to_nm(1.0, "px")
(0.2, 500.0, None)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

# the dtypes serve accepts (docs/protocol.md, "Image message")
WIRE_DTYPES = frozenset({"|u1", "<u2", "<i2", "<u4", "<f4"})
MAX_HEADER_BYTES = 64 * 1024
MAX_SIDE = 8192
MAX_PIXELS = 4096 * 4096

TOPIC_DENOISED = b"denoised"
TOPIC_STATS = b"stats"
TOPIC_ATOMS = b"atoms"

# length units Swift calibrations use, in nanometres (both the micro sign and the Greek mu, both
# the letter Å and the angstrom sign, since either can come from a calibration dialog or a file)
_NM_PER_UNIT = {
    "nm": 1.0,
    "pm": 1e-3,
    "fm": 1e-6,
    "Å": 0.1,
    "\u212b": 0.1,
    "angstrom": 0.1,
    "um": 1e3,
    "µm": 1e3,
    "\u03bcm": 1e3,
    "mm": 1e6,
    "cm": 1e7,
    "m": 1e9,
}


class WireError(ValueError):
    """A message from the daemon that breaks the protocol; the receiver counts it and goes on."""


def to_nm(scale: float, units: str | None) -> float | None:
    """``scale`` in ``units`` as nanometres; ``None`` for units that are not lengths (px, s, eV...)."""
    factor = _NM_PER_UNIT.get((units or "").strip())
    if factor is None or not math.isfinite(scale) or scale <= 0:
        return None
    return float(scale) * factor


def pixel_size_nm(calibrations: Sequence[tuple[float, str | None]]) -> float | None:
    """The square pixel size in nm of a 2-D frame from its (scale, units) per axis.

    ``None`` when an axis is not a length or the pixels are not square (to 1e-6): the protocol's
    ``pixel_size_nm`` is one number, and a wrong one is worse than none.
    """
    if len(calibrations) != 2:
        return None
    sizes = [to_nm(scale, units) for scale, units in calibrations]
    if sizes[0] is None or sizes[1] is None:
        return None
    if not math.isclose(sizes[0], sizes[1], rel_tol=1e-6):
        return None
    return sizes[1]


def wire_array(data: np.ndarray) -> np.ndarray:
    """``data`` as a 2-D C-ordered array of a dtype serve accepts (copying only when needed).

    Integers that fit keep their type (a detector's counts stay exact); everything else real
    becomes little-endian float32, which is what the model runs on anyway.
    """
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise ValueError(f"a {arr.ndim}-D frame cannot be sent; the protocol carries 2-D frames")
    if np.iscomplexobj(arr):
        raise ValueError("a complex frame cannot be sent")
    little = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    if little.str in WIRE_DTYPES:
        return np.ascontiguousarray(arr, dtype=little)
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr, dtype="|u1")
    return np.ascontiguousarray(arr, dtype="<f4")


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode_image(
    data: np.ndarray,
    *,
    series_id: int,
    image_id: int,
    start_time: int | None = None,
    calibration: Mapping[str, float] | None = None,
    user_data: Any = None,
) -> list[bytes | memoryview]:
    """The two-part image message ``[header, payload]``; the payload is not copied."""
    arr = wire_array(data)
    height, width = arr.shape
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE) or height * width > MAX_PIXELS:
        raise ValueError(f"a {height}x{width} frame is outside what serve accepts")
    header: dict[str, Any] = {
        "htype": "image",
        "series_id": int(series_id),
        "image_id": int(image_id),
        "shape": [int(height), int(width)],
        "dtype": arr.dtype.str,
    }
    if start_time is not None:
        header["start_time"] = int(start_time)
    if calibration:
        header["calibration"] = {key: float(value) for key, value in calibration.items()}
    if user_data is not None:
        header["user_data"] = user_data
    return [_pack(header), memoryview(arr).cast("B")]


def encode_start(series_id: int, **extra: Any) -> list[bytes]:
    """The one-part ``start`` message: a new series (CSS and multi-frame history restart)."""
    return [_pack({"htype": "start", "series_id": int(series_id), **extra})]


@dataclass(frozen=True, slots=True)
class Message:
    """One message from serve's PUB socket: its topic, header and (for ``denoised``) the frame."""

    topic: bytes
    header: dict[str, Any]
    data: np.ndarray | None = None


def _header(raw: bytes | memoryview) -> dict[str, Any]:
    view = memoryview(raw)
    if view.nbytes > MAX_HEADER_BYTES:
        raise WireError(f"header of {view.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(
            view, raw=False, strict_map_key=True, max_str_len=MAX_HEADER_BYTES, max_bin_len=MAX_HEADER_BYTES,
            max_array_len=MAX_HEADER_BYTES, max_map_len=MAX_HEADER_BYTES, max_ext_len=0,
        )
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types; each means "not a valid header"
        raise WireError(f"header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise WireError(f"header is a {type(header).__name__}, not a map")
    return header


def decode_message(parts: Sequence[bytes | memoryview]) -> Message:
    """Decode ``[topic, header(, payload)]`` from serve's PUB socket, checked before allocation."""
    if len(parts) not in (2, 3):
        raise WireError(f"expected 2 or 3 parts, got {len(parts)}")
    topic = bytes(parts[0])
    header = _header(parts[1])
    if len(parts) == 2:
        return Message(topic, header)
    shape, dtype = header.get("shape"), header.get("dtype")
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(s) is int for s in shape)):
        raise WireError(f"shape must be [height, width], got {shape!r:.60}")
    height, width = shape
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE) or height * width > MAX_PIXELS:
        raise WireError(f"frame shape {height}x{width} outside the accepted range")
    if type(dtype) is not str or dtype not in WIRE_DTYPES:
        raise WireError(f"unsupported dtype {dtype!r:.20}")
    payload = memoryview(parts[2])
    expected = height * width * np.dtype(dtype).itemsize
    if payload.nbytes != expected:
        raise WireError(f"payload is {payload.nbytes} bytes, {height}x{width} {dtype} needs {expected}")
    return Message(topic, header, np.frombuffer(payload, dtype=dtype).reshape(height, width))


def atoms_count(header: Mapping[str, Any]) -> int | None:
    """The ``count`` of an ``atoms`` message, or ``None`` if it has none that is an int."""
    count = header.get("count")
    return count if type(count) is int and count >= 0 else None


def css_value(header: Mapping[str, Any]) -> float | None:
    """The ``css`` of a ``denoised`` header (``nil`` for a series' first frame)."""
    css = header.get("css")
    return float(css) if isinstance(css, int | float) and not isinstance(css, bool) and math.isfinite(css) else None
