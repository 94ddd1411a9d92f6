"""The Merlin sender (livedenoise.detectors.merlin._sender): the MPX framing, the acquisition and frame headers,
the pixel formats and layouts, the broken streams, and the TCP data port. The formats are pinned
twice: by hand on small examples, and against libertem-qd-mpx's own parsers and decoders (the
third-party receiver ``serve --source-format merlin`` uses) over a real socket on 127.0.0.1."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from livedenoise.detectors.merlin._sender import (
    FORMATS,
    LAYOUTS,
    acquisition_header,
    frame_header,
    frame_message,
    frame_pixels,
    mpx,
    parse_mpx,
)
from livedenoise.sim import MERLIN_FAULTS, MerlinSender, merlin_fault, merlin_stream


def split_messages(data: bytes) -> list[bytes]:
    out = []
    while data:
        payload, end = parse_mpx(data)
        out.append(payload)
        data = data[end:]
    return out


# --------------------------------------------------------------------------- framing and headers


def test_mpx_length_counts_the_comma_and_the_payload():
    message = mpx(b"HDR,abc")
    assert message == b"MPX,0000000008,HDR,abc"
    assert parse_mpx(message + b"MPX,") == (b"HDR,abc", len(message))
    with pytest.raises(ValueError, match="truncated"):
        parse_mpx(message[:-1])
    with pytest.raises(ValueError, match="not an MPX message"):
        parse_mpx(b"MPY" + message[3:])


def test_acquisition_header_lines():
    text = acquisition_header(4096, fmt="r12", layout="quad", scan=(32, 128)).decode("latin-1")
    assert text.startswith("HDR,\t\n") and len(text) == 2048 and text.rstrip(" ").endswith("\nEnd\t")
    lines = dict(line.split(":\t", 1) for line in text.splitlines()[1:-1])
    assert lines["Frames in Acquisition (Number)"] == "4096"
    assert lines["Frames per Trigger (Number)"] == "4096"
    assert lines["Counter Depth (number)"] == "12"
    assert lines["Assembly Size (NX1, 2X2)"].strip() == "2x2"
    assert (lines["ScanX"], lines["ScanY"]) == ("128", "32")
    assert "ScanX" not in acquisition_header(10).decode()


@pytest.mark.parametrize(("fmt", "layout", "shape", "size", "header_shape"), [
    ("u16", "single", (48, 40), 384, ("0040", "0048")),
    ("r6", "single", (256, 256), 384, ("0256", "0256")),
    ("u8", "quad", (512, 512), 768, ("0512", "0512")),
    ("r12", "quad", (512, 512), 768, ("1024", "0256")),  # the raw readout: four chips side by side
    ("r1", "quad-gap", (514, 514), 768, ("1024", "0256")),
])
def test_frame_header_fields(fmt, layout, shape, size, header_shape):
    header = frame_header(7, fmt=fmt, layout=layout, shape=shape)
    assert len(header) == size
    fields = header.decode().split(",")
    chips = LAYOUTS[layout][0]
    assert fields[:8] == ["MQ1", "000007", f"{size:05d}", f"{chips:02d}", *header_shape, FORMATS[fmt][0], f"{LAYOUTS[layout][1]:>6}"]
    assert fields.count("3RX") == chips
    mq1a = fields.index("MQ1A")
    assert fields[mq1a + 2] == "1000000ns" and fields[mq1a + 3] == str(FORMATS[fmt][1])
    with pytest.raises(ValueError, match="6 digits"):
        frame_header(1_000_000, fmt=fmt, layout=layout, shape=shape)


def test_a_frame_is_its_header_then_big_endian_pixels():
    frame = np.arange(6 * 10, dtype=np.uint32).reshape(6, 10) * 1000
    payload, end = parse_mpx(frame_message(frame, 3, fmt="u32"))
    assert end == 15 + len(payload)
    assert payload[:3] == b"MQ1" and len(payload) == 384 + frame.size * 4
    np.testing.assert_array_equal(np.frombuffer(payload[384:], ">u4").reshape(6, 10), frame)


# --------------------------------------------------------------------------- raw formats, by hand


def test_raw_words_hold_their_pixels_last_to_first():
    eight = np.arange(8, dtype=np.uint8).reshape(1, 8)
    assert frame_pixels(eight, fmt="r6") == bytes([7, 6, 5, 4, 3, 2, 1, 0])
    four = np.array([[0x123, 0x456, 0x789, 0xABC]], np.uint16)
    assert frame_pixels(four, fmt="r12") == bytes.fromhex("0abc 0789 0456 0123")
    bits = np.zeros((1, 64), np.uint8)
    bits[0, [0, 9, 63]] = 1  # bit i of the big-endian word is pixel i
    assert int.from_bytes(frame_pixels(bits, fmt="r1"), "big") == (1 << 0) | (1 << 9) | (1 << 63)


def test_raw_quad_rows_are_chips_4_3_2_1_with_the_bottom_half_turned():
    frame = np.zeros((512, 512), np.uint8)
    frame[0, 0] = 1  # chip 1, its first pixel
    frame[0, 511] = 2  # chip 2, its last pixel of the first row
    frame[511, 0] = 3  # chip 3 (bottom left), turned: its first row's last pixel
    frame[256, 256] = 4  # chip 4 (bottom right), turned: its last row's last pixel
    raw = np.frombuffer(frame_pixels(frame, fmt="r6", layout="quad"), np.uint8).reshape(256, 4, 256)
    words = raw.reshape(256, 4, 32, 8)[..., ::-1].reshape(256, 4, 256)  # each word's pixels back in order
    assert words[0, 3, 0] == 1 and words[0, 2, 255] == 2
    assert words[0, 1, 255] == 3 and words[255, 0, 255] == 4
    assert np.count_nonzero(words) == 4


def test_counts_beyond_the_counter_and_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="6-bit counter"):
        frame_pixels(np.full((8, 8), 64, np.uint16), fmt="r6")
    with pytest.raises(ValueError, match="12-bit counter"):
        frame_pixels(np.full((8, 8), 4096, np.uint16), fmt="u16")
    with pytest.raises(ValueError, match="a quad frame is 512x512"):
        frame_pixels(np.zeros((256, 256), np.uint8), fmt="u8", layout="quad")
    with pytest.raises(ValueError, match="multiple of 64"):
        frame_pixels(np.zeros((4, 4), np.uint8), fmt="r1")


# --------------------------------------------------------------------------- streams and faults


def test_stream_and_faults():
    patterns = np.arange(10 * 8 * 8, dtype=np.uint16).reshape(10, 8, 8) % 4096
    good = merlin_stream(patterns, scan=(2, 5))
    assert len(good) == 11 and b"ScanX:\t5" in good[0] and all(m[15:18] == b"MQ1" for m in good[1:])
    assert [int(m[19:25]) for m in good[1:]] == list(range(1, 11))
    assert b"Frames in Acquisition (Number):\t0\n" in merlin_stream(patterns, frames=0)[0]
    good = merlin_stream(patterns)
    faults = {kind: merlin_fault(kind, patterns, at=4) for kind in MERLIN_FAULTS}
    assert faults["stops"] == good[:5]
    assert len(faults["truncated"][5]) < len(good[5]) and faults["truncated"][6:] == good[6:]
    assert faults["corrupt"][5].startswith(b"MPY,") and faults["corrupt"][6:] == good[6:]
    assert faults["no-header"] == good[1:]
    assert faults["shape-change"][:5] == good[:5] and b",0008,0007,U16," in faults["shape-change"][5]
    assert b"Frames in Acquisition (Number):\tmany\n" in faults["bad-header"][0] and faults["bad-header"][1:] == good[1:]
    with pytest.raises(ValueError, match="unknown fault"):
        merlin_fault("loud", patterns)


# --------------------------------------------------------------------------- the data port


def test_sender_serves_one_receiver_and_hangs_up():
    with MerlinSender() as sender:
        assert sender.address == f"tcp://127.0.0.1:{sender.port}"
        client = socket.create_connection((sender.host, sender.port))
        sender.accept(timeout=5)
        messages = merlin_stream(np.ones((3, 8, 8), np.uint16))
        assert sender.send(messages)
        sender.hang_up()
        received = b""
        while chunk := client.recv(1 << 16):
            received += chunk
        assert split_messages(received) == [parse_mpx(m)[0] for m in messages]
        client.close()
        client = socket.create_connection((sender.host, sender.port))  # a receiver that connects again
        sender.accept(timeout=5)
        client.close()
        assert not sender.send([b"x" * (1 << 20)] * 64)  # it went away: False, not an exception
    with MerlinSender() as idle, pytest.raises(RuntimeError, match="accept"):
        idle.send(b"x")


# --------------------------------------------------------------------------- against libertem-qd-mpx


@pytest.fixture
def qd_receiver(tmp_path):
    """libertem-qd-mpx connected to a MerlinSender: ``receive(messages) -> (config, frames)``."""
    qd = pytest.importorskip("libertem_qd_mpx")
    sender = MerlinSender()
    handle = str(tmp_path / "shm")
    conn = qd.QdConnection(
        data_host="127.0.0.1", data_port=sender.port, frame_stack_size=8, shm_handle_path=handle,
        num_slots=64, bytes_per_frame=514 * 514 * 4,
    )
    client = qd.CamClient(handle)
    accept = threading.Thread(target=sender.accept)
    accept.start()
    conn.start_passive(timeout=5.0)
    accept.join()

    def receive(messages):
        sending = threading.Thread(target=sender.send, args=(messages,))
        sending.start()
        config = conn.wait_for_arm(timeout=5.0)
        frames = []
        try:
            while (stack := conn.get_next_stack(64)) is not None:
                width, height = stack.get_shape()
                out = np.zeros((len(stack), height, width), stack.get_dtype_string())
                try:
                    client.decode_range_into_buffer(stack, out, 0, len(stack))
                finally:
                    client.done(stack)
                frames.append(out)
        finally:
            sending.join(10)
        return config, np.concatenate(frames)

    yield receive
    conn.close()
    sender.close()


@pytest.mark.parametrize("layout", ["single", "quad", "quad-gap"])
def test_libertem_qd_mpx_decodes_every_format(qd_receiver, layout):
    receive = qd_receiver
    rng = np.random.default_rng(len(layout))
    for fmt in ("u8", "u16", "u32", "r1", "r6", "r12"):
        depth = FORMATS[fmt][1]
        shape = LAYOUTS[layout][2] or ((256, 256) if fmt.startswith("r") else (24, 40))
        patterns = rng.integers(0, 1 << depth, (3, *shape), dtype=np.uint32)
        config, frames = receive(merlin_stream(patterns, fmt=fmt, layout=layout, scan=(1, 3)))
        assert config.frames_in_acquisition() == 3 and config.nav_shape() == (1, 3)
        assert config.detector_shape() == shape
        assert frames.dtype == {"u8": np.uint8, "r1": np.uint8, "r6": np.uint8, "u16": np.uint16, "r12": np.uint16}.get(fmt, np.uint32)
        keep = np.ones(shape, bool)
        if layout == "quad-gap":  # the gap pixels between the chips are not sent in raw formats
            keep[256:258] = keep[:, 256:258] = False
        np.testing.assert_array_equal(frames[:, keep], patterns[:, keep], err_msg=f"{fmt} {layout}")


def test_libertem_qd_mpx_parses_the_acquisition_header():
    qd = pytest.importorskip("libertem_qd_mpx")
    header = qd.QdAcquisitionHeader.new_from_bytes(acquisition_header(1234, frames_per_trigger=64, scan=(2, 617)))
    assert (header.frames_in_acquisition(), header.frames_per_trigger()) == (1234, 64)
    with pytest.raises(ValueError, match="missing key"):
        qd.QdAcquisitionHeader.new_from_bytes(b"HDR,\t\nGain:\tSLGM\nEnd\t")
