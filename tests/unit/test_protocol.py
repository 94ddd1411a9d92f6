"""The frame protocol (livedenoise.protocol): round trips, zero-copy, and every kind of bad message."""

from __future__ import annotations

import numpy as np
import pytest

from livedenoise.errors import MalformedMessage
from livedenoise.protocol import (
    MAX_ATOMS_ANNOTATED,
    MAX_HOPS,
    SUPPORTED_DTYPES,
    TOPIC_ATOMS,
    TOPIC_HOPS,
    TOPICS,
    ImageFrame,
    Limits,
    SeriesEnd,
    SeriesStart,
    decode_atoms,
    decode_detector_message,
    decode_hops,
    decode_published,
    encode_atoms,
    encode_end,
    encode_hops,
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


# --------------------------------------------------------------------------- atoms: evidence and tracks


def test_atoms_with_evidence_and_track_ids_round_trip_and_cap():
    rng = np.random.default_rng(1)
    k = MAX_ATOMS_ANNOTATED + 7
    pos, inten, heights = rng.random((k, 2)) * 500, rng.random(k), np.sort(rng.random(k))[::-1]
    z = rng.normal(4, 3, k)
    z[5] = np.nan  # evidence that could not be computed travels as NaN
    ids = rng.integers(-1, 2**31 - 1, k)
    parts = encode_atoms({"series_id": 4, "image_id": 2}, pos, inten, heights, threshold=0.4, evidence=z,
                         track_ids=ids, weak=17, weak_z=2.5)
    assert len(parts[1]) < 64 * 1024  # the annotated cap keeps the header under the limit
    msg = decode_atoms(parts)
    assert (msg.count, len(msg), msg.weak, msg.weak_z) == (k, MAX_ATOMS_ANNOTATED, 17, 2.5)
    assert msg.evidence.dtype == np.dtype("<f4") and msg.track_ids.dtype == np.dtype("<i4")
    np.testing.assert_array_equal(msg.evidence, z[:MAX_ATOMS_ANNOTATED].astype(np.float32))
    np.testing.assert_array_equal(msg.track_ids, ids[:MAX_ATOMS_ANNOTATED])
    np.testing.assert_array_equal(msg.positions, pos[:MAX_ATOMS_ANNOTATED].astype(np.float32))
    # one of the two alone, and none (the message as before: the fields are absent)
    only = decode_atoms(encode_atoms({"series_id": 1, "image_id": 0}, pos[:3], inten[:3], heights[:3],
                                     threshold=0.4, track_ids=[0, -1, 5]))
    assert only.track_ids.tolist() == [0, -1, 5] and only.evidence is None and only.weak is None
    plain = encode_atoms({"series_id": 1, "image_id": 0}, pos[:3], inten[:3], heights[:3], threshold=0.4)
    assert decode_atoms(plain).evidence is None
    assert not {"evidence", "track_ids", "weak", "weak_z"} & set(decode_published(plain).header)
    for bad in ({"evidence": z[:3]}, {"track_ids": np.zeros((2, 2))}, {"track_ids": [0, -2]}):
        with pytest.raises(ValueError):
            encode_atoms({}, pos[:2], inten[:2], heights[:2], threshold=0.4, **bad)


def _annotated_header(**changes) -> dict:
    header = {"series_id": 1, "image_id": 4, "count": 3, "threshold": 0.3,
              "positions": np.zeros(6, "<f4").tobytes(), "intensities": np.zeros(3, "<f4").tobytes(),
              "heights": np.zeros(3, "<f4").tobytes(), "evidence": np.ones(3, "<f4").tobytes(),
              "track_ids": np.arange(3, dtype="<i4").tobytes(), "weak": 0, "weak_z": 3.0}
    return {k: v for k, v in {**header, **changes}.items() if v is not None}


def test_annotated_header_is_valid():
    msg = decode_atoms([TOPIC_ATOMS, pack(_annotated_header())])
    assert msg.track_ids.tolist() == [0, 1, 2] and msg.evidence.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "changes",
    [
        {"evidence": np.ones(2, "<f4").tobytes()},
        {"evidence": np.ones(3, "<f8").tobytes()},
        {"evidence": [1.0, 2.0, 3.0]},
        {"track_ids": np.arange(4, dtype="<i4").tobytes()},
        {"track_ids": b"\x00" * 11},
        {"track_ids": np.array([0, -5, 1], "<i4").tobytes()},
        {"weak": -1},
        {"weak": 4},
        {"weak": 1.0},
        {"weak": True},
        {"weak_z": "3"},
        {"weak_z": float("nan")},
    ],
    ids=["evidence-short", "evidence-f8", "evidence-list", "ids-long", "ids-odd", "ids-negative", "weak-negative",
         "weak-over-count", "weak-float", "weak-bool", "weak-z-str", "weak-z-nan"],
)
def test_bad_evidence_and_track_fields_are_rejected(changes):
    with pytest.raises(MalformedMessage):
        decode_atoms([TOPIC_ATOMS, pack(_annotated_header(**changes))])


# --------------------------------------------------------------------------- hops


def test_hops_round_trip_cap_and_topic():
    assert TOPIC_HOPS in TOPICS
    m = MAX_HOPS + 3
    rng = np.random.default_rng(2)
    ids, before, after = np.arange(m), rng.random((m, 2)) * 100, rng.random((m, 2)) * 100
    frames = np.full(m, 11)
    parts = encode_hops({"series_id": 3, "image_id": 12, "start_time": 99}, ids, before, after, frames)
    assert parts[0] == TOPIC_HOPS and len(parts) == 2
    msg = decode_hops(parts)
    assert (msg.series_id, msg.image_id, msg.count, len(msg)) == (3, 12, m, MAX_HOPS)
    assert msg.header["start_time"] == 99
    np.testing.assert_array_equal(msg.track_ids, ids[:MAX_HOPS])
    np.testing.assert_array_equal(msg.before, before[:MAX_HOPS].astype(np.float32))
    np.testing.assert_array_equal(msg.after, after[:MAX_HOPS].astype(np.float32))
    np.testing.assert_array_equal(msg.before_image_ids, frames[:MAX_HOPS])
    assert msg.before.shape == (MAX_HOPS, 2) and msg.track_ids.dtype == np.dtype("<i4")
    assert decode_hops(decode_published(parts)).count == m  # a Published decodes too
    one = decode_hops(encode_hops({"series_id": 1, "image_id": 5}, [2], [[1.0, 2.0]], [[5.0, 2.0]], [3], count=4))
    assert one.count == 4 and one.after.tolist() == [[5.0, 2.0]]
    for bad in (
        {"count": 0},  # fewer than listed
        {"before": np.zeros((1, 3))},
        {"after": np.zeros((2, 2))},
        {"track_ids": [-1]},
        {"before_image_ids": [2**31]},
    ):
        args = {"track_ids": [2], "before": [[1.0, 2.0]], "after": [[5.0, 2.0]], "before_image_ids": [3]} | bad
        count = args.pop("count", None)
        with pytest.raises(ValueError):
            encode_hops({"series_id": 1, "image_id": 5}, count=count, **args)


def _hops_header(**changes) -> dict:
    header = {"series_id": 1, "image_id": 4, "count": 2, "track_ids": np.arange(2, dtype="<i4").tobytes(),
              "before": np.zeros(4, "<f4").tobytes(), "after": np.ones(4, "<f4").tobytes(),
              "before_image_ids": np.full(2, 3, "<i4").tobytes()}
    return {k: v for k, v in {**header, **changes}.items() if v is not None}


@pytest.mark.parametrize(
    "parts",
    [
        [TOPIC_ATOMS, pack(_hops_header())],
        [TOPIC_HOPS, pack(_hops_header()), np.zeros((2, 2), "<f4").tobytes()],
        [TOPIC_HOPS, b"\xc1"],
        [TOPIC_HOPS, pack(_hops_header(image_id="4"))],
        [TOPIC_HOPS, pack(_hops_header(count=None))],
        [TOPIC_HOPS, pack(_hops_header(count=1))],
        [TOPIC_HOPS, pack(_hops_header(track_ids=[0, 1]))],
        [TOPIC_HOPS, pack(_hops_header(before=np.zeros(5, "<f4").tobytes()))],
        [TOPIC_HOPS, pack(_hops_header(after=np.zeros(2, "<f4").tobytes()))],
        [TOPIC_HOPS, pack(_hops_header(before_image_ids=None))],
        [TOPIC_HOPS, pack(_hops_header(track_ids=np.array([0, -1], "<i4").tobytes()))],
        [TOPIC_HOPS, pack(_hops_header(count=MAX_HOPS + 1, track_ids=np.zeros(MAX_HOPS + 1, "<i4").tobytes(),
                                       before=np.zeros(2 * MAX_HOPS + 2, "<f4").tobytes(),
                                       after=np.zeros(2 * MAX_HOPS + 2, "<f4").tobytes(),
                                       before_image_ids=np.zeros(MAX_HOPS + 1, "<i4").tobytes()))],
    ],
    ids=["topic", "payload", "not-msgpack", "str-id", "no-count", "count-too-small", "ids-list", "before-odd",
         "after-short", "no-before-ids", "negative-id", "too-many"],
)
def test_bad_hops_messages_are_rejected(parts):
    with pytest.raises(MalformedMessage):
        decode_hops(parts)
