"""Bad input, fuzzed: the protocol decoder raises only MalformedMessage, whatever it is fed, and
a real daemon counts a flood of malformed messages while denoising every valid frame in between."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livedenoise.daemon import QueueConfig
from livedenoise.engine import EngineConfig
from livedenoise.errors import MalformedMessage
from livedenoise.protocol import (
    SUPPORTED_DTYPES,
    ImageFrame,
    Limits,
    SeriesEnd,
    SeriesStart,
    decode_detector_message,
    encode_image,
    pack,
)
from livedenoise.sim import KINDS, malformed_message
from livedenoise.testing import reference_denoise

FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALL = Limits(max_header_bytes=4096, max_side=64, max_pixels=64 * 64)


def decode_or_reject(parts, limits=SMALL):
    """Decode; the only exception allowed is MalformedMessage. A decoded image is self-consistent."""
    try:
        msg = decode_detector_message(parts, limits)
    except MalformedMessage:
        return None
    assert isinstance(msg, ImageFrame | SeriesStart | SeriesEnd)
    if isinstance(msg, ImageFrame):
        assert msg.data.ndim == 2 and msg.data.size <= limits.max_pixels
        assert msg.data.dtype.str in SUPPORTED_DTYPES
        assert msg.data.nbytes == len(parts[1])
    return msg


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
field_values = st.one_of(
    msgpack_values,
    st.lists(st.integers(-(2**63), 2**64 - 1), min_size=0, max_size=4),
    st.sampled_from([*sorted(SUPPORTED_DTYPES), "<f8", ">u2", "image", "start", "end"]),
)
KEYS = ["htype", "series_id", "image_id", "shape", "dtype", "start_time", "user_data"]


def packb(obj) -> bytes:
    import msgpack

    return msgpack.packb(obj, use_bin_type=True)


@FUZZ
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=5))
def test_random_bytes_in_any_number_of_parts(parts):
    decode_or_reject(parts)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(KEYS), field_values, max_size=7),
    st.sampled_from(["image", "start", "end", "bogus", None]),
    st.lists(st.binary(max_size=600), max_size=3),
)
def test_headers_with_any_keys_types_and_values(header, htype, rest):
    if htype is not None:
        header = {**header, "htype": htype}
    decode_or_reject([packb(header), *rest])


@FUZZ
@given(
    st.integers(-(2**63), 2**64 - 1), st.integers(-(2**63), 2**64 - 1),
    st.sampled_from(sorted(SUPPORTED_DTYPES)), st.integers(-3, 3),
)
def test_shapes_and_payload_lengths(h, w, dtype, delta):
    header = {"htype": "image", "series_id": 1, "image_id": 0, "shape": [h, w], "dtype": dtype}
    size = h * w * np.dtype(dtype).itemsize if 0 < h <= 64 and 0 < w <= 64 else 16
    payload = b"\x01" * max(0, size + delta)
    msg = decode_or_reject([packb(header), payload])
    assert (msg is not None) == (0 < h <= 64 and 0 < w <= 64 and delta == 0)


@FUZZ
@given(st.integers(1, 100_000), st.integers(SMALL.max_header_bytes - 50, 3 * SMALL.max_header_bytes))
def test_deep_and_huge_msgpack(depth, size):
    assert decode_or_reject([b"\x91" * depth + b"\x00", b""]) is None
    assert decode_or_reject([b"\xdd" + (1 << 31).to_bytes(4, "big"), b""]) is None  # claims 2**31 items
    header = packb({"htype": "image", "series_id": 1, "image_id": 0, "shape": [1, 1], "dtype": "|u1",
                    "user_data": b"\x00" * size})
    msg = decode_or_reject([header, b"\x00"])
    assert (msg is not None) == (len(header) <= SMALL.max_header_bytes)


@pytest.mark.parametrize("kind", KINDS)
def test_every_generated_kind_is_rejected(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    for _ in range(50):
        _, parts = malformed_message(rng, kind, limits=SMALL)
        msg = decode_or_reject(parts)
        if kind in ("nan frame", "inf frame"):  # valid protocol; the engine rejects the pixels
            assert isinstance(msg, ImageFrame) and not np.isfinite(msg.data).all()
        else:
            assert msg is None, (kind, parts[0][:80])


def test_daemon_counts_2000_malformed_and_denoises_every_valid_frame(conv_model, detector, daemon_factory, subscriber):
    push, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, queue=QueueConfig(lossless=True), engine=EngineConfig(max_batch=8, provider="cpu", shapes=()))
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    rng = np.random.default_rng(7)
    valid = rng.integers(0, 500, (8, 16, 16)).astype("<u2")
    n_bad, n_good, kinds = 2000, 0, {}
    for i in range(n_bad):
        kind, parts = malformed_message(rng)
        kinds[kind] = kinds.get(kind, 0) + 1
        push.send_multipart(parts)
        if i % 20 == 0:
            push.send_multipart(encode_image(valid[n_good % 8], series_id=1000, image_id=n_good))
            n_good += 1
    push.send_multipart([pack({"htype": "end", "series_id": 1000})])
    denoised, _ = sub.collect(n_good, timeout=60)
    push.close()
    assert set(kinds) == set(KINDS)
    assert [d.header["image_id"] for d in denoised if d.header["series_id"] == 1000] == list(range(n_good))

    np.testing.assert_allclose(denoised[-1].data, reference_denoise(conv_model, valid[(n_good - 1) % 8]), atol=2e-6)
    stats = sub.stats_until(lambda s: s["malformed"] == n_bad and s["queue_depth"] == 0, timeout=20)
    assert stats["denoised"] == n_good and stats["failed"] == stats["dropped"] == 0
