# Copyright (C) 2025 the livedenoise authors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The plug-in's own protocol code against livedenoise's reference implementation, and its sockets.

The plug-in never imports livedenoise; its tests do, to hold it to the daemon's decoder.
"""

from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from nionswift_plugin.livedenoise_nionswift._bridge import Receiver, Sender
from nionswift_plugin.livedenoise_nionswift._wire import (
    WireError,
    decode_message,
    encode_image,
    encode_start,
    pixel_size_nm,
    to_nm,
    wire_array,
)

protocol = pytest.importorskip("livedenoise.protocol", reason="the wire tests check against livedenoise's decoder")


def test_docstring_examples():
    import doctest

    from nionswift_plugin.livedenoise_nionswift import _wire

    result = doctest.testmod(_wire)
    assert result.attempted > 0 and result.failed == 0


def _decode(parts):
    return protocol.decode_detector_message([bytes(p) for p in parts])


@pytest.mark.parametrize(
    ("dtype", "wire"),
    [("|u1", "|u1"), ("<u2", "<u2"), ("<i2", "<i2"), ("<u4", "<u4"), ("<f4", "<f4"), (">u2", "<u2"),
     ("<f8", "<f4"), ("<f2", "<f4"), (">f4", "<f4"), ("<i4", "<f4"), ("<u8", "<f4"), ("|b1", "|u1")],
)
def test_every_swift_dtype_becomes_one_serve_accepts(dtype, wire):
    rng = np.random.default_rng(1)
    frame = (rng.random((5, 7)) * 200).astype(dtype)
    msg = _decode(encode_image(frame, series_id=3, image_id=9, start_time=123))
    assert (msg.series_id, msg.image_id, msg.start_time) == (3, 9, 123)
    assert msg.data.dtype.str == wire
    np.testing.assert_array_equal(msg.data, frame.astype(wire))


def test_a_strided_view_is_sent_in_c_order():
    frame = np.arange(64, dtype="<u2").reshape(8, 8)[::2, 1::3]
    np.testing.assert_array_equal(_decode(encode_image(frame, series_id=1, image_id=0)).data, frame)


def test_calibration_reaches_the_daemon_as_the_protocol_field():
    parts = encode_image(np.zeros((4, 4), "<f4"), series_id=1, image_id=0,
                         calibration={"pixel_size_nm": 0.0391, "frame_time_s": 0.0164})
    header = msgpack.unpackb(bytes(parts[0]))
    assert header["calibration"] == {"pixel_size_nm": 0.0391, "frame_time_s": 0.0164}
    msg = _decode(parts)
    if hasattr(msg, "calibration"):  # livedenoise with the calibration field: its own decoding of it
        assert (msg.calibration.pixel_size_nm, msg.calibration.frame_time_s) == (0.0391, 0.0164)


def test_start_message_is_a_series_start():
    msg = _decode(encode_start(4, source="nionswift", channel="HAADF", shape=[8, 8]))
    assert isinstance(msg, protocol.SeriesStart) and msg.series_id == 4
    assert msg.header["channel"] == "HAADF"


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2)), np.zeros((4, 4), complex), np.zeros((0, 4)),
                                 np.zeros((1, 8193), "<u1")])
def test_frames_serve_would_refuse_are_not_sent(bad):
    with pytest.raises(ValueError):
        encode_image(bad, series_id=1, image_id=0)


@pytest.mark.parametrize(
    ("scale", "units", "nm"),
    [(0.5, "nm", 0.5), (2.0, "Å", 0.2), (2.0, "\u212b", 0.2), (0.25, "µm", 250.0), (0.25, "\u03bcm", 250.0),
     (0.25, "um", 250.0), (40.0, "pm", 0.04), (1e-9, "m", 1.0), (1.0, "px", None), (1.0, "", None),
     (1.0, None, None), (0.0, "nm", None), (-1.0, "nm", None), (float("nan"), "nm", None)],
)
def test_units_to_nm(scale, units, nm):
    assert to_nm(scale, units) == (pytest.approx(nm) if nm is not None else None)


def test_pixel_size_only_for_square_length_pixels():
    assert pixel_size_nm([(0.4, "nm"), (4.0, "Å")]) == pytest.approx(0.4)
    assert pixel_size_nm([(0.4, "nm"), (0.5, "nm")]) is None
    assert pixel_size_nm([(1e-6, "s"), (1e-6, "s")]) is None  # a time-calibrated scan (line scans)
    assert pixel_size_nm([(0.4, "nm")]) is None


def test_wire_array_copies_only_when_it_must():
    frame = np.zeros((4, 4), "<f4")
    assert wire_array(frame) is frame or np.shares_memory(wire_array(frame), frame)
    assert not np.shares_memory(wire_array(frame.astype("<f8")), frame)


def test_decodes_what_serve_publishes():
    denoised = np.linspace(0, 1, 12, dtype="<f4").reshape(3, 4)
    parts = protocol.encode_published(
        protocol.TOPIC_DENOISED,
        {"series_id": 2, "image_id": 5, "css": 0.93, "latency_ms": 4.5, "start_time": 77,
         "calibration": {"pixel_size_nm": 0.05}},
        denoised,
    )
    msg = decode_message([bytes(p) for p in parts])
    assert msg.topic == b"denoised" and msg.header["css"] == 0.93 and msg.header["calibration"]["pixel_size_nm"] == 0.05
    np.testing.assert_array_equal(msg.data, denoised)
    stats = decode_message(protocol.encode_published(protocol.TOPIC_STATS, {"received": 3}))
    assert stats.topic == b"stats" and stats.data is None and stats.header["received"] == 3


def test_decodes_serves_atoms_messages():
    positions = np.array([[1.0, 2.0], [3.0, 4.0]], "<f4")
    parts = protocol.encode_atoms({"series_id": 1, "image_id": 2}, positions, np.ones(2, "<f4"), np.ones(2, "<f4"),
                                  threshold=0.4)
    msg = decode_message([bytes(p) for p in parts])
    assert msg.topic == b"atoms" and msg.header["count"] == 2 and msg.header["image_id"] == 2


@pytest.mark.parametrize(
    "parts",
    [
        [b"denoised", b"\xc1", b""],  # not msgpack
        [b"denoised", msgpack.packb([1, 2]), b""],  # not a map
        [b"denoised", msgpack.packb({"shape": [2, 2], "dtype": "<f4"}), b"\0" * 15],  # short payload
        [b"denoised", msgpack.packb({"shape": [2, 2], "dtype": "<f8"}), b"\0" * 32],  # a dtype not on the wire
        [b"denoised", msgpack.packb({"shape": [100000, 100000], "dtype": "<f4"}), b""],  # refused before allocation
        [b"denoised", msgpack.packb({"shape": [2, "2"], "dtype": "<f4"}), b"\0" * 16],
        [b"denoised", b"\x80" + b"\0" * (64 * 1024), b""],  # header over the cap
        [b"denoised"],
    ],
)
def test_malformed_output_is_refused(parts):
    with pytest.raises(WireError):
        decode_message(parts)


def test_sender_never_blocks_and_counts_what_the_daemon_does_not_take():
    """A daemon that subscribes and then reads nothing: the sender drops and counts, the tap goes on."""
    ctx = zmq.Context.instance()
    sender = Sender("tcp://127.0.0.1:*", hwm=2, queue_frames=2)
    stalled = ctx.socket(zmq.SUB)
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 65536)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(sender.endpoint)
    try:
        deadline = time.monotonic() + 5
        while not sender.connected:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        frame = np.zeros((512, 512), "<f4")  # 1 MiB: a few fill every buffer on the way
        n = 200
        for i in range(n):  # returns at once each time: the socket is the sender thread's business
            sender.submit(encode_image(frame, series_id=1, image_id=i))
            time.sleep(0.001)
        time.sleep(0.3)
        counts = sender.counts
        assert counts.queued == n
        assert counts.dropped_hwm + counts.dropped_queue > 0
        assert counts.sent + counts.dropped_hwm + counts.dropped_queue == n
    finally:
        stalled.close()
        sender.close()


def test_sender_reports_no_daemon_and_push_mode():
    sender = Sender("tcp://127.0.0.1:*", socket="pub")
    try:
        assert not sender.connected
        sender.submit(encode_image(np.zeros((2, 2), "<u2"), series_id=1, image_id=0))
        time.sleep(0.2)
        assert sender.counts.unheard == 1 and sender.counts.sent == 0
    finally:
        sender.close()
    with pytest.raises(ValueError):
        Sender("tcp://127.0.0.1:*", socket="router")
    push = Sender("tcp://127.0.0.1:*", socket="push", hwm=1)
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(push.endpoint)
    try:
        deadline = time.monotonic() + 5
        while True:  # PUSH refuses (EAGAIN, counted) until the PULL peer has connected
            push.submit(encode_image(np.arange(4, dtype="<u2").reshape(2, 2), series_id=1, image_id=0))
            if pull.poll(100):
                break
            assert time.monotonic() < deadline
        msg = protocol.decode_detector_message(pull.recv_multipart())
        np.testing.assert_array_equal(msg.data, np.arange(4).reshape(2, 2))
        time.sleep(0.1)
        counts = push.counts
        assert counts.sent >= 1 and counts.sent + counts.dropped_hwm + counts.dropped_queue == counts.queued
    finally:
        pull.close()
        push.close()


def test_receiver_follows_a_daemon_and_skips_malformed_messages():
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    got: list = []
    arrived = threading.Event()

    def on_message(msg, receipt_ns):
        got.append((msg, receipt_ns))
        arrived.set()

    receiver = Receiver("tcp://127.0.0.1:1", on_message)  # nothing there yet
    try:
        receiver.connect(pub.getsockopt_string(zmq.LAST_ENDPOINT))
        frame = np.ones((3, 3), "<f4")
        deadline = time.monotonic() + 5
        while not arrived.is_set():  # PUB drops until the subscription arrives: send until one gets through
            assert time.monotonic() < deadline
            pub.send_multipart([b"denoised", b"\xc1", b""])  # malformed: counted, skipped
            pub.send_multipart(protocol.encode_published(protocol.TOPIC_DENOISED, {"series_id": 1, "image_id": 0}, frame))
            arrived.wait(0.05)
        time.sleep(0.1)
        assert receiver.counts.malformed >= 1 and receiver.counts.denoised >= 1
        msg, receipt_ns = got[0]
        np.testing.assert_array_equal(msg.data, frame)
        assert abs(receipt_ns - time.time_ns()) < 10e9
    finally:
        receiver.close()
        pub.close()
