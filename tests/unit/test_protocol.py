"""The frame protocol (livedenoise.protocol): round trips, zero-copy, and every kind of bad message."""

from __future__ import annotations

import numpy as np
import pytest

from livedenoise.errors import MalformedMessage
from livedenoise.protocol import (
    SUPPORTED_DTYPES,
    ImageFrame,
    Limits,
    SeriesEnd,
    SeriesStart,
    decode_detector_message,
    decode_published,
    encode_end,
    encode_image,
    encode_published,
    encode_start,
    pack,
)


@pytest.mark.parametrize("dtype", sorted(SUPPORTED_DTYPES))
def test_image_round_trip_every_dtype(dtype):
    data = (np.arange(12 * 7) % 200).reshape(12, 7).astype(dtype)
    msg = decode_detector_message(
        encode_image(data, series_id=3, image_id=9, start_time=123, user_data={"scan": "a"})
    )
    assert isinstance(msg, ImageFrame)
    assert (msg.series_id, msg.image_id, msg.start_time, msg.user_data) == (3, 9, 123, {"scan": "a"})
    assert msg.data.dtype.str == dtype and msg.data.shape == (12, 7)
    np.testing.assert_array_equal(msg.data, data)


def test_decode_is_zero_copy_and_read_only():
    payload = bytearray(np.arange(16, dtype="<u2").tobytes())
    header = pack({"htype": "image", "series_id": 0, "image_id": 0, "shape": [4, 4], "dtype": "<u2"})
    msg = decode_detector_message([header, memoryview(payload).toreadonly()])
    payload[0] = 42  # the decoded frame is a view on the received buffer
    assert msg.data[0, 0] == 42
    assert not msg.data.flags.writeable


def test_start_end_and_unknown_keys():
    start = decode_detector_message(encode_start(5, fps=150.0, detector="sim"))
    assert isinstance(start, SeriesStart) and start.series_id == 5 and start.header["fps"] == 150.0
    assert isinstance(decode_detector_message(encode_end(5)), SeriesEnd)
    header = {"htype": "image", "series_id": 1, "image_id": 2, "shape": [2, 2], "dtype": "|u1", "future": [1]}
    assert decode_detector_message([pack(header), bytes(4)]).image_id == 2


GOOD = {"htype": "image", "series_id": 1, "image_id": 0, "shape": [8, 8], "dtype": "<u2"}


@pytest.mark.parametrize(
    "parts",
    [
        [b"\xc1"],  # reserved msgpack byte
        [b"\x93\x01\x02\x03", bytes(128)],  # a list, not a map
        [pack({**GOOD, "htype": "nonsense"}), bytes(128)],
        [pack({k: v for k, v in GOOD.items() if k != "series_id"}), bytes(128)],
        [pack({**GOOD, "image_id": "0"}), bytes(128)],
        [pack({**GOOD, "image_id": True}), bytes(128)],
        [pack({**GOOD, "shape": [8]}), bytes(128)],
        [pack({**GOOD, "shape": [8, -8]}), bytes(128)],
        [pack({**GOOD, "shape": [10**6, 10**6]}), bytes(128)],
        [pack({**GOOD, "shape": [2**40, 2**40]}), bytes(128)],
        [pack({**GOOD, "dtype": "<f8"}), bytes(512)],
        [pack({**GOOD, "dtype": ">u2"}), bytes(128)],
        [pack(GOOD), bytes(127)],
        [pack(GOOD), bytes(130)],
        [pack(GOOD)],
        [pack(GOOD), bytes(128), b""],
        [],
        [pack({"htype": "start"})],
        [pack({"htype": "end", "series_id": 1}), b"x"],
        [pack({**GOOD, "start_time": 1.5}), bytes(128)],
        [b"\x81" + pack("k") + b"\xc6\xff\xff\xff\xff", bytes(128)],  # a bin claiming 4 GiB
    ],
)
def test_malformed_messages_are_rejected(parts):
    with pytest.raises(MalformedMessage):
        decode_detector_message(parts)


def test_header_size_is_capped_before_unpacking():
    huge = pack({**GOOD, "user_data": "x" * 100_000})
    with pytest.raises(MalformedMessage, match="exceeds"):
        decode_detector_message([huge, bytes(128)])
    small = Limits(max_header_bytes=64 * 1024, max_side=16, max_pixels=100)
    with pytest.raises(MalformedMessage, match="outside"):
        decode_detector_message([pack({**GOOD, "shape": [16, 16]}), bytes(512)], small)


def test_published_round_trip():
    data = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    parts = encode_published(b"denoised", {"series_id": 1, "image_id": 2, "css": None}, data)
    msg = decode_published(parts)
    assert msg.topic == b"denoised" and msg.header["shape"] == [4, 5] and msg.header["dtype"] == "<f4"
    np.testing.assert_array_equal(msg.data, data)
    stats = decode_published(encode_published(b"stats", {"fps_in": 1.0}))
    assert stats.data is None and stats.header["fps_in"] == 1.0


@pytest.mark.parametrize("shape", [5, "4x5", [4], [4, 5, 1], [4.0, 5], [-4, -5], {"h": 4}])
def test_published_frame_with_a_bad_shape_is_malformed(shape):
    header = {"series_id": 1, "image_id": 2, "shape": shape, "dtype": "<f4"}
    with pytest.raises(MalformedMessage):
        decode_published([b"denoised", pack(header), bytes(80)])
