"""What a Quantum Detectors Merlin sends on its data port, and a sender that serves it on 127.0.0.1.

Written from Quantum Detectors' description of the Merlin's TCP stream (the MIB format on the
network), not from any other implementation:

* every message is framed ``MPX,<length>,<payload>``: ``<length>`` is 10 decimal digits and counts
  the bytes after it, the comma included (:func:`mpx`);
* an acquisition starts with one acquisition header, ``HDR,`` and ``Key:<TAB>value`` lines up to a
  line ``End`` (:func:`acquisition_header`: the keys every Merlin header carries, among them
  ``Frames in Acquisition (Number)`` and, where the scan is known, ``ScanX``/``ScanY``);
* then one message per frame: a frame header ``MQ1,<sequence from 1>,<header bytes>,<chips>,
  <width>,<height>,<pixel type>,<layout>,...`` padded to its stated size (384 bytes for one chip,
  768 for four), with the ``MQ1A`` extension that gives the counter depth, and the pixels right
  after it (:func:`frame_message`).

Pixel formats (``fmt``): ``u8``, ``u16``, ``u32`` (``U08``/``U16``/``U32``: big-endian integers,
row by row, the counter depths 6, 12 and 24 bits) and the raw ``R64`` formats of the 1, 6, 12 and
24-bit counters (``r1``, ``r6``, ``r12``, ``r24``), sent as the chips read out: 8-byte words, each
big-endian and holding its pixels last to first (64 one-bit pixels, 8 six-bit pixels in a byte
each, 4 twelve-bit pixels in 16 bits each); ``r24`` as two 12-bit raw images, the upper 12 bits
first (Quantum Detectors' description; not checked against a detector, and libertem-qd-mpx 0.3.2
does not decode it). Layouts (``layout``): ``single`` (one chip, ``1x1``, any frame size for the
integer formats), ``quad`` (``2x2``, 512 x 512) and ``quad-gap`` (``2x2G``, 514 x 514, two gap
columns and rows between the chips). A raw quad frame is the four chips' rows side by side, chip 4
| 3 | 2 | 1 (1024 x 256 in the header), the bottom two chips turned by 180 degrees.

:class:`MerlinSender` is the data port: a TCP server (127.0.0.1, port 0 by default) that a
receiver connects to and that sends what it is given. :func:`merlin_stream` makes the bytes of an
acquisition of diffraction patterns (a simulated 4D-STEM scan: :func:`~livedenoise.sim.simulate_4dstem`),
:func:`merlin_fault` the broken streams of the bad-input tests.

>>> parse_mpx(mpx(b"HDR,x"))
(b'HDR,x', 20)
>>> frame = np.arange(64, dtype=np.uint16).reshape(8, 8)
>>> message = frame_message(frame, 1, fmt="u16")
>>> header = message[15 : 15 + 384].decode()
>>> header.split(",")[:8]
['MQ1', '000001', '00384', '01', '0008', '0008', 'U16', '   1x1']
>>> np.array_equal(np.frombuffer(message, ">u2", offset=15 + 384).reshape(8, 8), frame)
True
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MPX_PREFIX = 15  # b"MPX," + 10 digits + b","

#: pixel format -> (header pixel type, counter depth, numpy dtype of the values)
FORMATS: dict[str, tuple[str, int, str]] = {
    "u8": ("U08", 6, ">u1"), "u16": ("U16", 12, ">u2"), "u32": ("U32", 24, ">u4"),
    "r1": ("R64", 1, "u1"), "r6": ("R64", 6, "u1"), "r12": ("R64", 12, ">u2"), "r24": ("R64", 24, ">u4"),
}
#: layout -> (chips, header layout, frame shape or None: any, for the integer formats on one chip)
LAYOUTS: dict[str, tuple[int, str, tuple[int, int] | None]] = {
    "single": (1, "1x1", None), "quad": (4, "2x2", (512, 512)), "quad-gap": (4, "2x2G", (514, 514)),
}
CHIP = 256  # pixels a chip has on a side
_PIXELS_PER_WORD = {1: 64, 6: 8, 12: 4}  # raw formats: pixels in one 8-byte word


def mpx(payload: bytes) -> bytes:
    """One message on the data port: ``MPX,`` + 10-digit length (of the comma and the payload) + ``,`` + payload."""
    return b"MPX,%010d," % (len(payload) + 1) + payload


def parse_mpx(data: bytes) -> tuple[bytes, int]:
    """The first message's payload and where the next begins (for tests of the framing)."""
    if data[:4] != b"MPX," or data[14:15] != b",":
        raise ValueError(f"not an MPX message: {bytes(data[:15])!r}")
    end = MPX_PREFIX + int(data[4:14]) - 1
    if len(data) < end:
        raise ValueError(f"MPX message of {end} bytes truncated to {len(data)}")
    return bytes(data[MPX_PREFIX:end]), end


# --------------------------------------------------------------------------- headers


def acquisition_header(
    frames: int, *, fmt: str = "u16", layout: str = "single", scan: tuple[int, int] | None = None,
    frames_per_trigger: int | None = None, size: int = 2048,
) -> bytes:
    """The acquisition header's payload (``HDR,`` ...): ``frames`` in the acquisition (0: until
    stopped), the counter depth and layout of ``fmt`` and ``layout``, ``ScanX``/``ScanY`` from
    ``scan`` (rows, cols) where given; padded with spaces to ``size`` bytes, as the detector does."""
    _, depth, _ = FORMATS[fmt]
    chips, assembly, _ = LAYOUTS[layout]
    lines = [
        ("Time and Date Stamp (day, mnth, yr, hr, min, s)", "01/01/2026 12:00:00"),
        ("Chip ID", ",".join([f"SIM_{i}" for i in range(chips)] + ["-"] * (4 - chips))),
        ("Chip Type (Medipix 3.0, Medipix 3.1, Medipix 3RX)", "Medipix 3RX"),
        ("Assembly Size (NX1, 2X2)", f"{assembly:>6}"),
        ("Chip Mode  (SPM, CSM, CM, CSCM)", "SPM"),
        ("Counter Depth (number)", str(depth)),
        ("Gain", "SLGM"),
        ("Active Counters", "Alternating"),
        ("Thresholds (keV)", ",".join(["1.000000E+1", "5.110000E+2"] + ["0.000000E+0"] * 6)),
        ("DACs", "; ".join([",".join(["100"] * 27)] * chips)),
        ("bpc File", ",".join(["sim.bpc"] * chips)),
        ("DAC File", ",".join(["sim.dacs"] * chips)),
        ("Gap Fill Mode", "None"),
        ("Flat Field File", "None"),
        ("Dead Time File", "Dummy"),
        ("Acquisition Type (Normal, Th_scan, Config)", "Normal"),
        ("Frames in Acquisition (Number)", str(frames)),
        ("Frames per Trigger (Number)", str(frames if frames_per_trigger is None else frames_per_trigger)),
        ("Trigger Start (Positive, Negative, Internal)", "Rising Edge"),
        ("Trigger Stop (Positive, Negative, Internal)", "Internal"),
        ("Sensor Bias (V)", "120 V"),
        ("Sensor Polarity (Positive, Negative)", "Positive"),
        ("Temperature (C)", "Board Temp 40.0 Deg C"),
        ("Humidity (%)", "Board Humidity 1.0"),
        ("Medipix Clock (MHz)", "120MHz"),
        ("Readout System", "Merlin Quad" if chips == 4 else "Merlin"),
        ("Software Version", "livedenoise sim"),
    ]
    if scan is not None:
        lines += [("ScanX", str(scan[1])), ("ScanY", str(scan[0]))]
    text = "HDR,\t\n" + "".join(f"{k}:\t{v}\n" for k, v in lines) + "End\t"
    return text.encode("latin-1").ljust(size, b" ")


def frame_header(sequence: int, *, fmt: str, layout: str, shape: tuple[int, int]) -> bytes:
    """A frame header (``MQ1,...``, padded to 384 bytes for one chip, 768 for four); ``shape`` is
    the frame's (rows, cols), the header gives the raw readout's for the raw quad formats."""
    kind, depth, _ = FORMATS[fmt]
    chips, assembly, _ = LAYOUTS[layout]
    if not 0 < sequence <= 999_999:
        raise ValueError(f"frame sequence {sequence}: the header has 6 digits for it, from 1")
    offset = 384 if chips == 1 else 768
    height, width = (CHIP, 4 * CHIP) if kind == "R64" and chips == 4 else shape
    fields = [
        "MQ1", f"{sequence:06d}", f"{offset:05d}", f"{chips:02d}", f"{width:04d}", f"{height:04d}", kind,
        f"{assembly:>6}", f"{(1 << chips) - 1:02X}", "2026-01-01 12:00:00.000000", "0.001000", "0", "0", "0",
        "1.000000E+1", "5.110000E+2", *["0.000000E+0"] * 6,
    ]
    for _ in range(chips):
        fields += ["3RX", *["100"] * 27]
    fields += ["MQ1A", "2026-01-01T12:00:00.000000000Z", "1000000ns", str(depth), ""]
    text = ",".join(fields).encode()
    if len(text) > offset:
        raise AssertionError(f"frame header of {len(text)} bytes over its {offset}")
    return text.ljust(offset, b" ")


# --------------------------------------------------------------------------- pixels


def _raw_words(values: np.ndarray, depth: int) -> bytes:
    """Pixels (a multiple of a word's) in the chips' raw readout: 8-byte big-endian words, each
    holding its pixels last to first."""
    flat = values.reshape(-1, _PIXELS_PER_WORD[depth])
    if depth == 1:  # bit i of the word (as a big-endian u64) is pixel i
        little = np.packbits(flat.astype(np.uint8), axis=1, bitorder="little")  # byte k: pixels 8k..8k+7
        return little[:, ::-1].tobytes()
    if depth == 6:
        return flat[:, ::-1].astype(np.uint8).tobytes()
    return flat[:, ::-1].astype(">u2").tobytes()


def _raw_quad(frame: np.ndarray, depth: int, gap: int) -> bytes:
    """A quad frame's raw readout: per chip row, chips 4 | 3 | 2 | 1; chips 3 and 4 (the bottom
    half) turned by 180 degrees."""
    top, bottom = frame[:CHIP], frame[CHIP + gap :]
    chips = [
        bottom[::-1, CHIP + gap :][:, ::-1],  # 4
        bottom[::-1, :CHIP][:, ::-1],  # 3
        top[:, CHIP + gap :],  # 2
        top[:, :CHIP],  # 1
    ]
    per_row = [np.frombuffer(_raw_words(np.ascontiguousarray(c), depth), np.uint8).reshape(CHIP, -1) for c in chips]
    return np.concatenate(per_row, axis=1).tobytes()


def frame_pixels(frame: np.ndarray, *, fmt: str = "u16", layout: str = "single") -> bytes:
    """A frame's pixels as the detector sends them (see the module docstring). Counts that do
    not fit the format's counter depth are refused (a counter cannot hold them)."""
    kind, depth, dtype = FORMATS[fmt]
    chips, _, shape = LAYOUTS[layout]
    frame = np.asarray(frame)
    if frame.ndim != 2 or frame.dtype.kind not in "ui":
        raise ValueError(f"a frame is a 2-D array of counts, got {frame.shape} {frame.dtype}")
    if shape is not None and frame.shape != shape:
        raise ValueError(f"a {layout} frame is {shape[0]}x{shape[1]}, got {frame.shape[0]}x{frame.shape[1]}")
    if frame.size and (frame.min() < 0 or frame.max() >= 1 << depth):
        raise ValueError(f"counts {frame.min()}..{frame.max()} do not fit a {depth}-bit counter ({fmt})")
    if kind != "R64":
        return np.ascontiguousarray(frame, dtype).tobytes()
    if depth == 24:  # two 12-bit raw images: the upper bits, then the lower
        high, low = (frame >> 12) & 0xFFF, frame & 0xFFF
        return frame_pixels(high, fmt="r12", layout=layout) + frame_pixels(low, fmt="r12", layout=layout)
    if chips == 4:
        return _raw_quad(frame, depth, 2 if layout == "quad-gap" else 0)
    if frame.size % _PIXELS_PER_WORD[depth]:
        raise ValueError(f"a raw {depth}-bit frame holds a multiple of {_PIXELS_PER_WORD[depth]} pixels")
    return _raw_words(frame, depth)


def frame_message(frame: np.ndarray, sequence: int, *, fmt: str = "u16", layout: str = "single") -> bytes:
    """One frame on the data port: ``MPX`` framing, the frame header, the pixels."""
    pixels = frame_pixels(frame, fmt=fmt, layout=layout)
    header = frame_header(sequence, fmt=fmt, layout=layout, shape=frame.shape)
    return mpx(header + pixels)


# --------------------------------------------------------------------------- streams


def merlin_stream(
    patterns: np.ndarray, *, fmt: str = "u16", layout: str = "single", scan: tuple[int, int] | None = None,
    frames: int | None = None, first: int = 1, header: bool = True,
) -> list[bytes]:
    """One acquisition of ``patterns`` ``(N, H, W)``: the acquisition header (unless ``header`` is
    False), then one message per pattern, sequence numbers from ``first``. ``frames``: the count
    the header announces (default N; 0: an acquisition that runs until stopped)."""
    out = [mpx(acquisition_header(len(patterns) if frames is None else frames, fmt=fmt, layout=layout, scan=scan))] if header else []
    out += [frame_message(p, first + i, fmt=fmt, layout=layout) for i, p in enumerate(patterns)]
    return out


#: the broken streams of :func:`merlin_fault`
FAULTS = ("stops", "truncated", "corrupt", "no-header", "shape-change", "bad-header")


def merlin_fault(kind: str, patterns: np.ndarray, *, at: int | None = None, fmt: str = "u16", layout: str = "single") -> list[bytes]:
    """An acquisition of ``patterns`` broken at pattern ``at`` (default: the middle):

    * ``stops``: the stream ends after pattern ``at - 1`` (the header announced them all);
    * ``truncated``: pattern ``at`` is cut short, the rest follows (it no longer lines up);
    * ``corrupt``: pattern ``at``'s framing is overwritten (``MPX,`` -> ``MPY,``);
    * ``no-header``: the patterns without their acquisition header;
    * ``shape-change``: from pattern ``at`` on, the frames are one row shorter;
    * ``bad-header``: the acquisition header's frame count is not a number.
    """
    at = len(patterns) // 2 if at is None else at
    messages = merlin_stream(patterns, fmt=fmt, layout=layout)
    if kind == "stops":
        return messages[: 1 + at]
    if kind == "truncated":
        messages[1 + at] = messages[1 + at][: len(messages[1 + at]) // 2]
        return messages
    if kind == "corrupt":
        messages[1 + at] = b"MPY" + messages[1 + at][3:]
        return messages
    if kind == "no-header":
        return messages[1:]
    if kind == "shape-change":
        rest = merlin_stream(patterns[at:, 1:], fmt=fmt, layout=layout, first=1 + at, header=False)
        return messages[: 1 + at] + rest
    if kind == "bad-header":
        text = acquisition_header(len(patterns), fmt=fmt, layout=layout)
        key = b"Frames in Acquisition (Number):\t"
        start = text.index(key) + len(key)
        end = text.index(b"\n", start)
        return [mpx(text[:start] + b"many" + text[end:]), *messages[1:]]
    raise ValueError(f"unknown fault {kind!r}: one of {', '.join(FAULTS)}")


@dataclass(slots=True)
class _Connection:
    sock: socket.socket
    peer: tuple


class MerlinSender:
    """The Merlin's data port on this machine: a TCP server (``127.0.0.1``, port 0 by default:
    :attr:`port` is the real one) that the receiver connects to. :meth:`accept` waits for it,
    :meth:`send` sends bytes to it, :meth:`hang_up` closes that connection (a stream that stops);
    a receiver that gives a connection up (after bad input) connects again: :meth:`accept` again.
    One receiver at a time, as the detector's software serves one."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._listener = socket.create_server((host, port))
        self.host, self.port = self._listener.getsockname()[:2]
        self._conn: _Connection | None = None
        self._lock = threading.Lock()
        self.sent = 0  # bytes sent, all connections

    @property
    def address(self) -> str:
        """``tcp://HOST:PORT``, what ``serve --source`` takes."""
        return f"tcp://{self.host}:{self.port}"

    def accept(self, timeout: float | None = 10.0) -> None:
        """Wait for the receiver to connect (closing a connection still open)."""
        self.hang_up()
        self._listener.settimeout(timeout)
        sock, peer = self._listener.accept()
        sock.settimeout(None)
        with self._lock:
            self._conn = _Connection(sock, peer)

    def send(self, data: bytes | Iterable[bytes]) -> bool:
        """Send ``data`` (bytes, or a sequence of messages) to the receiver, blocking while it is
        not reading; False where it went away (or gave the connection up) before all of it left."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("no receiver connected: accept() first")
        parts: Sequence[bytes] = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
        try:
            for part in parts:
                conn.sock.sendall(part)
                self.sent += len(part)
        except OSError:  # BrokenPipeError, ConnectionResetError: the receiver hung up
            return False
        return True

    def hang_up(self) -> None:
        """Close the receiver's connection (it sees the stream end)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            conn.sock.close()

    def close(self) -> None:
        self.hang_up()
        self._listener.close()

    def __enter__(self) -> MerlinSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
