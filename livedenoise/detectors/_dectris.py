"""DECTRIS detectors: the SIMPLON stream interface, Stream v1 and v2, told apart part by part.

**Stream v1** (``format: legacy``): JSON headers and binary blobs over ZeroMQ PUSH. Per series a
``dheader-1.0`` (then, by ``header_detail``, the detector config and flatfield, pixel mask and
count-rate tables, each a JSON header and a blob), per image ``dimage-1.0`` (``series``,
``frame``), ``dimage_d-1.0`` (``shape`` as ``[x, y]``, ``type``, ``encoding``), the blob,
``dconfig-1.0`` (times); at the end ``dseries_end-1.0``. With ``header_detail: all`` the series
header also carries ``dpixelmask-1.0`` (its blob: the pixel mask, u32, non-zero = a bad pixel: left
out of the virtual detector) and the flatfield and count-rate tables (skipped). Senders differ in how they group these
parts into ZeroMQ messages (the detector sends the header and each image as multipart messages,
LiberTEM's ``DectrisSim`` sends the header's parts one by one), so the decoder is a state machine
over parts and never looks at message boundaries.

**Stream v2** (``format: cbor``): one CBOR map per message, ``type`` ``start``, ``image`` or
``end``; the start message's ``pixel_mask`` (a channel -> array map, like an image's ``data``)
is left out of the virtual detector; an image's ``data`` maps channel names to a multi-dimensional array (tag 40, ``[[rows,
cols], typed array]``) around a typed array (RFC 8746 tags 64-87) whose byte string may be
compressed (tag 56500, ``[algorithm, element size, bytes]``). One channel is read: the one asked
for, else the first of the start message's ``channels`` (else the first in ``data``). cbor2 is
used without a ``tag_hook`` (its signature changed between major versions): the tags come back
as ``CBORTag`` objects and are read here.

A part that starts with ``{`` is a v1 header; a CBOR map (or the self-described CBOR tag) is a v2
message; anything else is a v1 blob where one is due, or malformed.

Blobs: ``bsN-lz4`` / ``bslz4`` is bitshuffle + LZ4 with a 12-byte header (u64 big-endian size, u32
big-endian block size in bytes; LiberTEM's mocked simulator writes zeros there: the default block
size then). The block framing is checked before bitshuffle sees it: its C code trusts each block's
length and reads past a truncated buffer. ``lz4`` is one LZ4 block in v1, the HDF5 LZ4 filter's
framing in v2; ``<`` / ``>`` raw pixels. Claimed shapes are checked against
:class:`~livedenoise.protocol.Limits` before anything is allocated.

cbor2, lz4 and bitshuffle are the ``dectris`` extra, imported when a decoder is made.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import re
import struct
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import LivedenoiseError, MalformedMessage
from ..protocol import DEFAULT_LIMITS, Buffer, DetectorMessage, ImageFrame, Limits, SeriesEnd, SeriesStart
from ._base import Skip
from ._virtual import VirtualDetector

log = logging.getLogger("livedenoise.detectors")

BSLZ4_HEADER = struct.Struct(">QI")  # uncompressed size, block size (bytes): 12 bytes before the blocks
_U32BE = struct.Struct(">I")
_V1_ENCODING = re.compile(r"^(?:bs(8|16|32)-lz4|(lz4))?([<>])$")
_DIMAGE_SERIES = re.compile(rb'"series"\s*:\s*(\d{1,18})\s*[,}]')
_DIMAGE_FRAME = re.compile(rb'"frame"\s*:\s*(\d{1,18})\s*[,}]')
_V1_TYPES = {"uint8": "u1", "uint16": "u2", "uint32": "u4"}
#: RFC 8746 typed arrays a detector sends, as numpy dtypes
TYPED_ARRAY_TAGS: dict[int, str] = {
    64: "|u1", 68: "|u1", 65: ">u2", 66: ">u4", 69: "<u2", 70: "<u4", 72: "|i1", 73: ">i2", 77: "<i2",
    78: "<i4", 74: ">i4", 81: ">f4", 85: "<f4",
}
TAG_MULTI_DIM, TAG_MULTI_DIM_COLUMN_MAJOR, TAG_COMPRESSED = 40, 1040, 56500
_DTYPES = {tag: np.dtype(code) for tag, code in TYPED_ARRAY_TAGS.items()}
_SEQ = (list, tuple)  # isinstance with a tuple: 0.13 us against 0.4 with a union (list | tuple), measured
_BYTES = (bytes, bytearray)
_SKIPPED_BLOBS = ("dflatfield-1.0", "dcountrate_table-1.0")  # header_detail "all": header + blob


def load_codecs() -> tuple[Any, Any, Any]:
    """``(cbor2, lz4.block, bitshuffle)``, or one clear error naming the extra."""
    try:
        import bitshuffle
        import cbor2
        import lz4.block
    except ImportError as exc:
        raise LivedenoiseError(
            f"--source-format dectris needs {exc.name or 'cbor2, lz4 and bitshuffle'}: install livedenoise[dectris]"
        ) from None
    return cbor2, lz4.block, bitshuffle


# --------------------------------------------------------------------------- decompression


def _default_block(elem_size: int) -> int:
    """bitshuffle's default block (elements), as its C code (``bshuf_default_block_size``) picks it."""
    return max(8192 // elem_size // 8 * 8, 128)


def _bslz4_layout(view: memoryview, nbytes: int, elem: int) -> tuple[int, int]:
    """Check a bslz4 blob's header and walk its block framing (u32 big-endian length, then LZ4) as
    bitshuffle will, within the buffer: ``(n_elems, block_elems)``, or :class:`MalformedMessage`.
    bitshuffle's C code trusts each block's length and reads past a truncated buffer (a segfault),
    so this check stays in front of it; 0.3-1 us for 3-9 blocks."""
    if view.nbytes < 12:
        raise MalformedMessage(f"bslz4 blob of {view.nbytes} bytes, shorter than its header")
    size, block = BSLZ4_HEADER.unpack_from(view)
    if size not in (0, nbytes) or elem not in (1, 2, 4, 8) or nbytes % elem or block % elem:
        raise MalformedMessage(f"bslz4 header says {size} bytes in blocks of {block}, the frame needs {nbytes} ({elem}-byte elements)")
    n_elems = nbytes // elem
    block_elems = block // elem or _default_block(elem)
    if block_elems % 8:
        raise MalformedMessage(f"bslz4 block of {block_elems} elements, not a multiple of 8")
    full, rest = divmod(n_elems, block_elems)
    pos, end = 12, view.nbytes
    unpack = _U32BE.unpack_from
    for _ in range(full + (rest >= 8)):
        if pos + 4 > end:
            raise MalformedMessage("bslz4 blob truncated")
        pos += 4 + unpack(view, pos)[0]
    if pos + (n_elems % 8) * elem != end:
        raise MalformedMessage(f"bslz4 blocks end at byte {pos} of {end}")
    return n_elems, block_elems


@functools.cache
def _bshuf_c(bitshuffle: Any) -> Any:
    """bitshuffle's C function ``int64 bshuf_decompress_lz4(in, out, size, elem_size, block_size)``
    (its public C API, exported by the extension module), through ctypes, or None where this build
    does not export it. It decompresses into memory we own (a row of the virtual detector's batch)
    and skips the Python wrapper's allocation and argument handling: ~5 of bitshuffle's 14 us a
    96x96 pattern. Also sets up :func:`single_thread_bitshuffle`."""
    ext = sys.modules.get(f"{bitshuffle.__name__}.ext")
    try:
        lib = ctypes.CDLL(ext.__file__)  # type: ignore[union-attr]
        fn = lib.bshuf_decompress_lz4
    except (AttributeError, OSError, TypeError):
        return None
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
    return fn


def single_thread_bitshuffle() -> bool:
    """Make bitshuffle run on the calling thread alone (OpenMP: ``omp_set_num_threads(1)``, which
    holds for this thread only). Its OpenMP loop over a pattern's 3-9 blocks costs more than it
    gains, and on a loaded machine its spinning helper threads took 0.08-1 ms a pattern instead
    of 14 us (measured, 2 busy cores); the receiver thread decodes one pattern after another and
    the engine's threads want the other cores. True where the OpenMP runtime was found."""
    bitshuffle = load_codecs()[2]
    ext = sys.modules.get(f"{bitshuffle.__name__}.ext")
    try:
        ctypes.CDLL(ext.__file__).omp_set_num_threads(1)  # type: ignore[union-attr]  # its own libgomp
    except (AttributeError, OSError, TypeError):
        return False
    return True


def decompress_bslz4(
    blob: Buffer, n_items: int, dtype: np.dtype, elem_size: int | None = None, *, bitshuffle=None, out: np.ndarray | None = None,
) -> np.ndarray:
    """Bitshuffle + LZ4 with its 12-byte header, into ``n_items`` of ``dtype`` (1-D): into ``out``
    (C-contiguous, that many items of that dtype) where given, else a fresh array.

    ``elem_size``: the shuffle's element size in bytes (``bs16`` -> 2), by default the pixel's.
    Raises :class:`MalformedMessage` for anything that does not add up, before bitshuffle reads it.
    """
    if bitshuffle is None:
        bitshuffle = load_codecs()[2]
    if out is None:
        out = np.empty(n_items, dtype)
    _bslz4_into(memoryview(blob).cast("B"), n_items * dtype.itemsize, elem_size or dtype.itemsize, out, None, bitshuffle)
    return out.reshape(-1)


def _bslz4_into(
    view: memoryview, nbytes: int, elem: int, out: np.ndarray, address: int | None, bitshuffle: Any, native: Any = False
) -> None:
    """Decompress a checked bslz4 blob into ``out`` (``address``: its data pointer, if known;
    ``native``: :func:`_bshuf_c`'s answer, if the caller has it)."""
    n_elems, block_elems = _bslz4_layout(view, nbytes, elem)
    if native is False:
        native = _bshuf_c(bitshuffle)
    if native is not None:
        done = native(bytes(view[12:]), out.ctypes.data if address is None else address, n_elems, elem, block_elems)
        if done != view.nbytes - 12:
            raise MalformedMessage(f"bslz4 blob does not decompress (bitshuffle error {done})" if done < 0 else "bslz4 blob does not decompress")
        return
    data = np.frombuffer(view, np.uint8, offset=12)
    try:
        arr = bitshuffle.decompress_lz4(data, (n_elems,), np.dtype(f"u{elem}"), block_elems)
    except (RuntimeError, ValueError) as exc:
        raise MalformedMessage(f"bslz4 blob does not decompress ({exc.args[0] if exc.args else exc})") from None
    out.reshape(-1).view(np.uint8)[:] = arr.view(np.uint8)


def decompress_lz4_block(blob: Buffer, nbytes: int, *, lz4_block=None) -> bytes:
    """One raw LZ4 block (Stream v1's ``lz4`` encoding) of exactly ``nbytes``."""
    if lz4_block is None:
        lz4_block = load_codecs()[1]
    try:
        out = lz4_block.decompress(blob, uncompressed_size=nbytes)
    except Exception as exc:  # noqa: BLE001 - LZ4BlockError and friends: all mean a corrupt blob
        raise MalformedMessage(f"lz4 blob does not decompress ({type(exc).__name__})") from None
    if len(out) != nbytes:
        raise MalformedMessage(f"lz4 blob holds {len(out)} bytes, the frame needs {nbytes}")
    return out


def decompress_lz4_h5(blob: Buffer, nbytes: int, *, lz4_block=None) -> bytearray:
    """LZ4 in the HDF5 filter's framing (Stream v2's ``lz4``): u64 BE size, u32 BE block size,
    then per block a u32 BE length and the LZ4 block (stored as is where that length is the block's)."""
    if lz4_block is None:
        lz4_block = load_codecs()[1]
    view = memoryview(blob).cast("B")
    if view.nbytes < BSLZ4_HEADER.size:
        raise MalformedMessage("lz4 blob shorter than its header")
    size, block = BSLZ4_HEADER.unpack_from(view)
    if size != nbytes or block <= 0:
        raise MalformedMessage(f"lz4 header says {size} bytes in blocks of {block}, the frame needs {nbytes}")
    out = bytearray(nbytes)
    dst = memoryview(out)
    pos, done, end = BSLZ4_HEADER.size, 0, view.nbytes
    while done < nbytes:
        want = min(block, nbytes - done)
        if pos + 4 > end:
            raise MalformedMessage("lz4 blob truncated")
        n = _U32BE.unpack_from(view, pos)[0]
        pos += 4
        if pos + n > end:
            raise MalformedMessage("lz4 blob truncated")
        if n == want:
            dst[done : done + want] = view[pos : pos + n]
        else:
            dst[done : done + want] = decompress_lz4_block(view[pos : pos + n], want, lz4_block=lz4_block)
        pos += n
        done += want
    if pos != end:
        raise MalformedMessage(f"lz4 blocks end at byte {pos} of {end}")
    return out


def _check_shape(height: Any, width: Any, limits: Limits) -> tuple[int, int]:
    if type(height) is not int or type(width) is not int:
        raise MalformedMessage(f"frame shape must be integers, got {height!r:.20} x {width!r:.20}")
    if not (0 < height <= limits.max_side and 0 < width <= limits.max_side) or height * width > limits.max_pixels:
        raise MalformedMessage(f"frame shape {height}x{width} outside the accepted range")
    return height, width


def _little_endian(arr: np.ndarray) -> np.ndarray:
    """The protocol's dtypes are little-endian (or single bytes)."""
    if arr.dtype.byteorder == ">":
        return arr.astype(arr.dtype.newbyteorder("<"))
    return arr


# --------------------------------------------------------------------------- the decoder

_IDLE, _DIMAGED, _BLOB, _DCONFIG, _SKIP_BLOB, _CONFIG, _MASK_BLOB = range(7)


class DectrisDecoder:
    """The receiver's decoding step for a DECTRIS stream: ``feed(parts)`` takes the parts of one
    ZeroMQ message (however the sender grouped them) and returns the messages they complete, in
    order, with :class:`Skip` entries for what was passed over.

    With ``virtual`` (a :class:`VirtualDetector`), diffraction patterns become virtual images;
    without it, each detector frame is a frame of the pipeline. Images of a series whose start
    (``dheader-1.0``, ``start``) was not seen are counted (one ``malformed`` per series) and picked
    up: the virtual detector begins at the series' next scan frame.
    """

    def __init__(
        self,
        *,
        virtual: VirtualDetector | None = None,
        channel: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ):
        self._cbor2, self._lz4, self._bitshuffle = load_codecs()
        self._native = _bshuf_c(self._bitshuffle)
        self._maps = (dict, getattr(self._cbor2, "frozendict", dict))  # what cbor2 returns for a map
        self.virtual = virtual
        self.channel = channel
        self.limits = limits
        self.frames = 0  # detector frames decoded
        self.versions: set[int] = set()  # stream versions seen (1, 2)
        self._state = _IDLE
        self._series: int | None = None
        self._started: int | None = None  # the series whose start (header) was seen last
        self._headerless: int | None = None  # the last series counted as without its start
        self._mask_meta: tuple[int, int, np.dtype] | None = None  # a v1 pixel mask's shape and type
        self._image: tuple[int, int] | None = None  # v1: (series, frame) of the image in progress
        self._meta: tuple[int, int, np.dtype, int | None, str] | None = None  # v1 dimage_d: h, w, dtype, bs elem, codec
        self._meta_raw = b""
        self._channels: list[str] = []  # v2: the start message's channel names
        self._first_channel: str | None = None  # the first of them, read unless --channel says otherwise
        self._dims: list | None = None  # v2: the last image's [rows, cols], within the limits
        self._warned_channel: set[str] = set()
        self._thread: int | None = None  # the thread bitshuffle was made single-threaded in

    def counters(self) -> dict[str, int]:
        return {"detector_frames": self.frames}

    def feed(self, parts: Sequence[Buffer]) -> list[DetectorMessage | Skip]:
        out: list[DetectorMessage | Skip] = []
        if threading.get_ident() != self._thread:  # the receiver's thread, after construction elsewhere
            self._thread = threading.get_ident()
            single_thread_bitshuffle()
        for part in parts:
            try:
                self._part(part, out)
            except MalformedMessage as exc:
                out.append(Skip("malformed", str(exc)))
        return out

    # ------------------------------------------------------------------ one part

    def _part(self, part: Buffer, out: list) -> None:
        view = memoryview(part)
        if view.nbytes == 0:
            raise MalformedMessage("empty message part")
        first = view[0] if view.format == "B" else view.cast("B")[0]
        state = self._state
        if state in (_BLOB, _SKIP_BLOB, _MASK_BLOB) and not (first == 0x7B and self._is_header(view)):
            self._state = _DCONFIG if state == _BLOB else _IDLE
            if state == _BLOB:
                self._v1_blob(view, out)
            elif state == _MASK_BLOB:
                self._v1_pixel_mask(view, out)
            return
        if first == 0x7B:
            self._v1_header(view, out)
        elif 0xA0 <= first <= 0xBF or first == 0xD9:
            self._state = _IDLE
            self._v2(view, out)
        else:
            self._state = _IDLE
            raise MalformedMessage(f"a binary part of {view.nbytes} bytes where a header was due")

    def _is_header(self, view: memoryview) -> bool:
        """A part that starts with ``{`` where a blob was due: a v1 header (the blob was lost), or
        a blob that happens to start with that byte (raw or plain LZ4 pixels)?"""
        if view.nbytes > self.limits.max_header_bytes:
            return False
        try:
            obj = json.loads(bytes(view))
        except ValueError:
            return False
        return isinstance(obj, dict) and isinstance(obj.get("htype"), str)

    # ------------------------------------------------------------------ Stream v1

    def _v1_header(self, view: memoryview, out: list) -> None:
        self.versions.add(1)
        if view.nbytes > self.limits.max_header_bytes:
            raise MalformedMessage(f"header of {view.nbytes} bytes exceeds {self.limits.max_header_bytes}")
        raw = bytes(view)
        state = self._state
        # the per-image headers, fast: a dimage_d like the last one is not parsed again, the times of
        # dconfig are not used, and dimage's two integers are read without the JSON parser (~3 us each)
        if state == _DIMAGED and raw == self._meta_raw:
            self._state = _BLOB
            return
        if state == _DCONFIG and b'"dconfig-1.0"' in raw:
            self._state = _IDLE
            return
        if state in (_IDLE, _DCONFIG, _CONFIG) and b'"dimage-1.0"' in raw:
            series, frame = _DIMAGE_SERIES.search(raw), _DIMAGE_FRAME.search(raw)
            if series is not None and frame is not None:
                self._image = (int(series[1]), int(frame[1]))
                self._state = _DIMAGED
                return
        try:
            obj = json.loads(raw)
        except ValueError:
            self._state = _IDLE
            raise MalformedMessage("header is not valid JSON") from None
        if not isinstance(obj, dict):
            self._state = _IDLE
            raise MalformedMessage("header is not a JSON object")
        htype = obj.get("htype")
        if state in (_DIMAGED, _BLOB) and htype != "dimage_d-1.0":
            self._state = _IDLE
            lost = self._image
            self._header(htype, obj, raw, out)
            raise MalformedMessage(f"image {lost} lost its {'blob' if state == _BLOB else 'dimage_d part'}")
        self._header(htype, obj, raw, out)

    def _header(self, htype: Any, obj: dict, raw: bytes, out: list) -> None:
        if htype == "dimage-1.0":
            series, frame = obj.get("series"), obj.get("frame")
            if type(series) is not int or type(frame) is not int or frame < 0:
                self._state = _IDLE
                raise MalformedMessage(f"dimage-1.0 needs integer series and frame, got {series!r:.20}, {frame!r:.20}")
            self._image = (series, frame)
            self._state = _DIMAGED
        elif htype == "dimage_d-1.0":
            if self._state != _DIMAGED:
                self._state = _IDLE
                raise MalformedMessage("dimage_d-1.0 without its dimage-1.0")
            self._state = _SKIP_BLOB  # a dimage_d that does not parse: its blob goes with it
            self._meta = self._parse_dimaged(obj)
            self._meta_raw = raw
            self._state = _BLOB
        elif htype == "dconfig-1.0":
            self._state = _IDLE
        elif htype == "dheader-1.0":
            series = obj.get("series")
            if type(series) is not int:
                self._state = _IDLE
                raise MalformedMessage(f"dheader-1.0 needs an integer series, got {series!r:.20}")
            self._state = _CONFIG
            self._start(series, {"stream": "dectris v1", "header_detail": obj.get("header_detail")}, out)
        elif htype == "dseries_end-1.0":
            self._state = _IDLE
            series = obj.get("series")
            self._end(series if type(series) is int else self._series, out)
        elif htype == "dpixelmask-1.0":
            self._state = _SKIP_BLOB  # a header that does not parse: its blob goes with it
            shape, type_ = obj.get("shape"), obj.get("type")
            if not isinstance(shape, list) or len(shape) != 2 or type_ not in _V1_TYPES:
                raise MalformedMessage(f"dpixelmask-1.0 needs shape [x, y] and an unsigned type, got {shape!r:.40}, {type_!r:.20}")
            height, width = _check_shape(shape[1], shape[0], self.limits)
            self._mask_meta = (height, width, np.dtype("<" + _V1_TYPES[type_]))
            self._state = _MASK_BLOB
        elif htype in _SKIPPED_BLOBS:
            self._state = _SKIP_BLOB
        elif htype is None and self._state == _CONFIG:  # the detector config, after dheader
            self._state = _IDLE
            self._config(obj)
        else:
            self._state = _IDLE
            raise MalformedMessage(f"unknown header htype {htype!r:.40}")

    def _parse_dimaged(self, obj: dict) -> tuple[int, int, np.dtype, int | None, str]:
        shape, type_, encoding = obj.get("shape"), obj.get("type"), obj.get("encoding")
        if not isinstance(shape, list) or len(shape) != 2:
            raise MalformedMessage(f"dimage_d-1.0 shape must be [x, y], got {shape!r:.40}")
        width, height = shape  # [x, y]
        height, width = _check_shape(height, width, self.limits)
        match = _V1_ENCODING.match(encoding) if isinstance(encoding, str) else None
        if type_ not in _V1_TYPES or match is None:
            raise MalformedMessage(f"dimage_d-1.0: unsupported type {type_!r:.20} or encoding {encoding!r:.20}")
        bits, lz4, order = match.groups()
        dtype = np.dtype(order + _V1_TYPES[type_]) if type_ != "uint8" else np.dtype("|u1")
        codec = "bslz4" if bits else ("lz4" if lz4 else "raw")
        return height, width, dtype, (int(bits) // 8 if bits else None), codec

    def _v1_blob(self, view: memoryview, out: list) -> None:
        assert self._image is not None and self._meta is not None
        height, width, dtype, elem, codec = self._meta
        n = height * width
        if codec == "bslz4":
            series, frame = self._image
            data, address = self._destination(series, height, width, dtype)
            _bslz4_into(view if view.format == "B" else view.cast("B"), n * dtype.itemsize, elem or dtype.itemsize, data, address, self._bitshuffle, self._native)
            self._frame(series, frame, data, out)
            return
        if codec == "lz4":
            data = np.frombuffer(decompress_lz4_block(view, n * dtype.itemsize, lz4_block=self._lz4), dtype)
        else:
            if view.nbytes != n * dtype.itemsize:
                raise MalformedMessage(f"raw blob of {view.nbytes} bytes, the {height}x{width} frame needs {n * dtype.itemsize}")
            data = np.frombuffer(view, dtype)
        series, frame = self._image
        self._frame(series, frame, data.reshape(height, width), out)

    def _v1_pixel_mask(self, view: memoryview, out: list) -> None:
        assert self._mask_meta is not None
        height, width, dtype = self._mask_meta
        if view.nbytes != height * width * dtype.itemsize:
            raise MalformedMessage(f"pixel mask blob of {view.nbytes} bytes, {width}x{height} {dtype} needs {height * width * dtype.itemsize}")
        mask = np.frombuffer(view, dtype).reshape(height, width)
        log.info("series %s: pixel mask from the stream, %d bad pixels", self._series, int(np.count_nonzero(mask)))
        if self.virtual is not None:
            out += self.virtual.set_pixel_mask(mask)

    def _config(self, config: dict) -> None:
        nimages, ntrigger = config.get("nimages"), config.get("ntrigger")
        if type(nimages) is int and type(ntrigger) is int:
            self._check_count(nimages * ntrigger)

    # ------------------------------------------------------------------ Stream v2

    def _v2(self, view: memoryview, out: list) -> None:
        self.versions.add(2)
        try:
            msg = self._cbor2.loads(view)
        except Exception as exc:  # noqa: BLE001 - cbor2 raises several types; all mean "not valid CBOR"
            raise MalformedMessage(f"message is not valid CBOR ({type(exc).__name__})") from None
        if type(msg) not in self._maps and not isinstance(msg, Mapping):  # the ABC's check costs 0.8 us
            raise MalformedMessage(f"CBOR message is a {type(msg).__name__}, not a map")
        kind = msg.get("type")
        if kind == "image" and self._v2_image(msg, out):
            return
        series = msg.get("series_id")
        if kind in ("start", "image", "end") and type(series) is not int:
            raise MalformedMessage(f"{kind} message needs an integer series_id, got {series!r:.20}")
        if kind == "image":
            image_id = msg.get("image_id")
            if type(image_id) is not int or image_id < 0:
                raise MalformedMessage(f"image message needs an integer image_id, got {image_id!r:.20}")
            data = self._v2_channel(msg.get("data"), series)
            self._frame(series, image_id, data, out)
        elif kind == "start":
            channels = msg.get("channels")
            self._channels = [c for c in channels if isinstance(c, str)] if isinstance(channels, _SEQ) else []
            self._first_channel = self._channels[0] if self._channels else None
            header = {"stream": "dectris v2", "channels": list(self._channels)}
            for key in ("number_of_images", "image_size_x", "image_size_y"):
                if type(msg.get(key)) is int:
                    header[key] = msg[key]
            self._start(series, header, out, self._v2_pixel_mask(msg.get("pixel_mask"), series, out))
            if type(msg.get("number_of_images")) is int:
                self._check_count(msg["number_of_images"])
        elif kind == "end":
            self._end(series, out)
        else:
            raise MalformedMessage(f"unknown message type {kind!r:.40}")

    def _v2_image(self, msg: Mapping, out: list) -> bool:
        """The common image, ``bslz4`` in a row-major array of the channel read, decoded with the
        same checks inline (one function, exact types, the last image's dimensions not checked
        again): 16.1 -> 11.x us a 96² pattern, measured, of which 7 are bitshuffle's and 2 cbor2's.
        False for anything else: the general path then decodes it or says what is wrong."""
        series, image_id, data = msg.get("series_id"), msg.get("image_id"), msg.get("data")
        if type(series) is not int or type(image_id) is not int or image_id < 0 or type(data) not in self._maps:
            return False
        name = self.channel or self._first_channel
        item = data.get(name) if name is not None else None
        tag = self._cbor2.CBORTag
        if type(item) is not tag or item.tag != TAG_MULTI_DIM or type(item.value) not in _SEQ or len(item.value) != 2:
            return False
        dims, typed = item.value
        if dims != self._dims:
            if type(dims) not in _SEQ or len(dims) != 2:
                return False
            try:
                _check_shape(dims[0], dims[1], self.limits)
            except MalformedMessage:
                return False
            self._dims = list(dims)
        if type(typed) is not tag or (dtype := _DTYPES.get(typed.tag)) is None:
            return False
        payload = typed.value
        if type(payload) is not tag or payload.tag != TAG_COMPRESSED:
            return False
        comp = payload.value
        if type(comp) not in _SEQ or len(comp) != 3 or comp[0] != "bslz4" or type(comp[1]) is not int or type(comp[2]) is not bytes:
            return False
        height, width = dims
        arr, address = self._destination(series, height, width, dtype)
        _bslz4_into(memoryview(comp[2]), height * width * dtype.itemsize, comp[1] or dtype.itemsize, arr, address, self._bitshuffle, self._native)
        self._frame(series, image_id, arr, out)
        return True

    def _v2_pixel_mask(self, masks: Any, series: int, out: list) -> np.ndarray | None:
        """The start message's pixel mask of the channel read (a map like an image's ``data``), or
        None; one that does not decode is counted and not applied."""
        if masks is None or (isinstance(masks, Mapping) and not masks):
            return None
        try:
            mask = self._v2_array(*self._v2_pick(masks, "pixel_mask"), series, batch=False)
        except MalformedMessage as exc:
            out.append(Skip("malformed", f"series {series}: pixel mask not applied: {exc}"))
            return None
        log.info("series %d: pixel mask from the start message, %d bad pixels", series, int(np.count_nonzero(mask)))
        return mask

    def _v2_pick(self, data: Any, what: str) -> tuple[str, Any]:
        """The channel read, ``(name, item)``, of a channel -> array map."""
        if not isinstance(data, Mapping) or not data:
            raise MalformedMessage(f"{what} is not a channel map")
        name = self.channel
        if name is None:
            name = self._first_channel
            if name is None or name not in data:
                name = next((c for c in self._channels if c in data), None) or next(iter(data))
        elif name not in data:
            raise MalformedMessage(f"no channel {name!r} in {what} (it has {', '.join(map(str, data))})")
        return name, data[name]

    def _v2_channel(self, data: Any, series: int) -> np.ndarray:
        if not isinstance(data, Mapping) or not data:
            raise MalformedMessage("image message without a data map")
        return self._v2_array(*self._v2_pick(data, "this image"), series)

    def _v2_array(self, name: Any, item: Any, series: int, *, batch: bool = True) -> np.ndarray:
        """A multi-dimensional array (tag 40 or 1040) as a ``(rows, cols)`` array; a bslz4 one
        decompressed into the virtual detector's batch where ``batch``."""
        cbor_tag = self._cbor2.CBORTag
        if not isinstance(item, cbor_tag) or item.tag not in (TAG_MULTI_DIM, TAG_MULTI_DIM_COLUMN_MAJOR):
            raise MalformedMessage(f"channel {name!r:.40} is not a multi-dimensional array (tag 40)")
        value = item.value
        if not isinstance(value, _SEQ) or len(value) != 2:
            raise MalformedMessage("multi-dimensional array must be [dimensions, array]")
        dims, typed = value
        if not isinstance(dims, _SEQ) or len(dims) != 2:
            raise MalformedMessage(f"image dimensions must be [rows, cols], got {dims!r:.40}")
        height, width = _check_shape(dims[0], dims[1], self.limits)
        if not isinstance(typed, cbor_tag) or typed.tag not in TYPED_ARRAY_TAGS:
            raise MalformedMessage(f"channel {name!r:.40}: not a supported typed array")
        dtype = _DTYPES[typed.tag]
        n = height * width
        payload = typed.value
        if isinstance(payload, cbor_tag) and payload.tag == TAG_COMPRESSED:
            comp = payload.value
            if not isinstance(comp, _SEQ) or len(comp) != 3 or not isinstance(comp[2], _BYTES):
                raise MalformedMessage("compressed byte string must be [algorithm, modifier, bytes]")
            algorithm, elem, blob = comp
            if algorithm == "bslz4":
                if type(elem) is not int:
                    raise MalformedMessage(f"bslz4 element size must be an integer, got {elem!r:.20}")
                if item.tag == TAG_MULTI_DIM and batch:
                    arr, address = self._destination(series, height, width, dtype)
                else:
                    arr, address = np.empty((width, height), dtype), None
                _bslz4_into(memoryview(blob), n * dtype.itemsize, elem or dtype.itemsize, arr, address, self._bitshuffle, self._native)
                return arr if item.tag == TAG_MULTI_DIM else np.ascontiguousarray(arr.T)
            elif algorithm == "lz4":
                arr = np.frombuffer(decompress_lz4_h5(blob, n * dtype.itemsize, lz4_block=self._lz4), dtype)
            else:
                raise MalformedMessage(f"unknown compression {algorithm!r:.20}")
        elif isinstance(payload, _BYTES):
            if len(payload) != n * dtype.itemsize:
                raise MalformedMessage(f"typed array of {len(payload)} bytes, {height}x{width} {dtype} needs {n * dtype.itemsize}")
            arr = np.frombuffer(payload, dtype)
        else:
            raise MalformedMessage("typed array without a byte string")
        if item.tag == TAG_MULTI_DIM_COLUMN_MAJOR:
            return np.ascontiguousarray(arr.reshape(width, height).T)
        return arr.reshape(height, width)

    # ------------------------------------------------------------------ series and frames

    def _start(self, series: int, header: dict, out: list, pixel_mask: np.ndarray | None = None) -> None:
        if self.virtual is not None:
            out += self.virtual.start(series, pixel_mask=pixel_mask)
        self._series = self._started = series
        out.append(SeriesStart(series, header))

    def _end(self, series: int | None, out: list) -> None:
        if self.virtual is not None:
            out += self.virtual.end(series)
        if series is not None:
            out.append(SeriesEnd(series))
        if series == self._series:
            self._series = None
        if series == self._started:
            self._started = None

    def _check_count(self, images: int) -> None:
        vd = self.virtual
        if vd is not None and images > 0 and images % vd.positions:
            log.warning(
                "series of %d images: not a whole number of %dx%d scans; the last scan frame will be incomplete",
                images, *vd.scan,
            )

    def _destination(self, series: int, height: int, width: int, dtype: np.dtype) -> tuple[np.ndarray, int | None]:
        """Where to decompress a pattern: the virtual detector's next batch row (no copy, no
        allocation), else a fresh ``(height, width)`` array (a frame of its own)."""
        if self.virtual is not None:
            lent = self.virtual.lend(series, (height, width), dtype)
            if lent is not None:
                return lent
        return np.empty((height, width), dtype), None

    def _frame(self, series: int, image_id: int, data: np.ndarray, out: list) -> None:
        self.frames += 1
        self._series = series
        if series != self._started and series != self._headerless:
            self._headerless = series
            then = "picked up at its next scan frame" if self.virtual is not None else "passed through"
            out.append(Skip("malformed", f"series {series}: images without the series' start (header lost, or serve started mid-series): {then}"))
        if self.virtual is not None:
            out += self.virtual.add(series, image_id, data)
        else:
            out.append(ImageFrame(series_id=series, image_id=image_id, data=_little_endian(data)))
