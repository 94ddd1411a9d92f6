"""Malformed detector messages, for testing a daemon (or any reader of the protocol) against bad input.

:func:`malformed_message` makes one message that breaks the frame protocol in one of
:data:`KINDS` ways; every one of them must be rejected and counted as ``malformed`` by ``serve``
(the NaN/inf frames are decoded, then rejected by the engine, also as ``malformed``).
Used by ``tests/test_fuzz.py`` and ``benchmarks/fuzz.py``. Pure numpy + msgpack, seeded.

Examples
--------
>>> import numpy as np
>>> kind, parts = malformed_message(np.random.default_rng(0))
>>> kind in KINDS and 1 <= len(parts)
True
"""

from __future__ import annotations

import numpy as np

from ..protocol import DEFAULT_LIMITS, Limits, pack

KINDS = (
    "random bytes",
    "random two parts",
    "wrong part count",
    "wrong field type",
    "missing field",
    "negative shape",
    "enormous shape",
    "payload mismatch",
    "unsupported dtype",
    "deep msgpack",
    "huge msgpack",
    "unknown htype",
    "header not a map",
    "nan frame",
    "inf frame",
)


def _good_header(rng: np.random.Generator, h: int, w: int, dtype: str = "<u2") -> dict:
    return {"htype": "image", "series_id": int(rng.integers(0, 100)), "image_id": int(rng.integers(0, 10**6)),
            "shape": [h, w], "dtype": dtype}


def _deep(depth: int) -> bytes:
    # a msgpack array nested ``depth`` times: 0x91 = fixarray of one element
    return b"\x91" * depth + b"\x00"


def malformed_message(
    rng: np.random.Generator, kind: str | None = None, limits: Limits = DEFAULT_LIMITS, side: int = 16
) -> tuple[str, list[bytes]]:
    """``(kind, parts)``: one message that is malformed in the way ``kind`` (random if None) says."""
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    h = w = side
    header = _good_header(rng, h, w)
    payload = rng.integers(0, 1000, (h, w)).astype("<u2").tobytes()
    if kind == "random bytes":
        # never a valid one-part message by chance: 0xc1 is the one byte msgpack never uses
        return kind, [b"\xc1" + rng.bytes(int(rng.integers(0, 200)))]
    if kind == "random two parts":
        return kind, [b"\xc1" + rng.bytes(int(rng.integers(0, 100))), rng.bytes(int(rng.integers(0, 600)))]
    if kind == "wrong part count":
        n = int(rng.choice([3, 4, 7]))
        return kind, [pack(header), payload] + [b"x"] * (n - 2)
    if kind == "wrong field type":
        key = str(rng.choice(["series_id", "image_id", "shape", "dtype", "start_time"]))
        value = [1.5, "7", None, [1], {"a": 1}, True, b"\x00"][int(rng.integers(7))]
        if value is None and key in ("dtype", "start_time"):  # None is a valid (absent) start_time
            value = 2.5
        return kind, [pack({**header, key: value}), payload]
    if kind == "missing field":
        key = str(rng.choice(["series_id", "image_id", "shape", "dtype", "htype"]))
        return kind, [pack({k: v for k, v in header.items() if k != key}), payload]
    if kind == "negative shape":
        shape = [int(rng.integers(-10**6, 1)), w] if rng.random() < 0.5 else [h, int(rng.integers(-10**6, 1))]
        return kind, [pack({**header, "shape": shape}), payload]
    if kind == "enormous shape":
        big = int(rng.choice([limits.max_side + 1, 10**6, 2**40, 2**63 - 1]))
        shape = [big, big] if rng.random() < 0.5 else [limits.max_side, limits.max_side]
        if shape[0] * shape[1] <= limits.max_pixels:  # keep it over the pixel cap
            shape = [big, big]
        return kind, [pack({**header, "shape": shape}), payload]
    if kind == "payload mismatch":
        delta = int(rng.choice([-1, 1, -len(payload), 17, len(payload)]))
        size = max(0, len(payload) + delta)
        body = payload[:size] if size <= len(payload) else payload + b"\x00" * (size - len(payload))
        return kind, [pack(header), body]
    if kind == "unsupported dtype":
        dtype = str(rng.choice([">u2", "<f8", "<i8", "|b1", "O", "<c8", "V16", "", "<U4"]))
        return kind, [pack({**header, "dtype": dtype}), payload]
    if kind == "deep msgpack":
        return kind, [_deep(int(rng.integers(200, 5000))), payload]
    if kind == "huge msgpack":
        # over the header cap (libzmq still delivers it: it is far below MAXMSGSIZE)
        blob = b"\x00" * (limits.max_header_bytes + int(rng.integers(1, 1000)))
        return kind, [pack({**header, "user_data": blob}), payload]
    if kind == "unknown htype":
        htype = str(rng.choice(["bogus", "IMAGE", "", "dimage-1.0"]))
        return kind, [pack({**header, "htype": htype}), payload]
    if kind == "header not a map":
        return kind, [pack([rng.integers(0, 9).item(), "image"]), payload]
    if kind in ("nan frame", "inf frame"):
        frame = np.ones((h, w), "<f4")
        frame[int(rng.integers(h)), int(rng.integers(w))] = np.nan if kind == "nan frame" else -np.inf
        return kind, [pack({**header, "dtype": "<f4"}), frame.tobytes()]
    raise ValueError(f"unknown kind {kind!r}")
