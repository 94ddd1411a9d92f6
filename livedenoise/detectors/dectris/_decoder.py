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

**Stream v2** (``format: cbor``): one CBOR map per message (:mod:`._v2`, the decoder's other half).

A part that starts with ``{`` is a v1 header; a CBOR map (or the self-described CBOR tag) is a v2
message; anything else is a v1 blob where one is due, or malformed. Blobs are decompressed by
:mod:`._codecs`; claimed shapes are checked against :class:`~livedenoise.protocol.Limits` before
anything is allocated.

cbor2, lz4 and bitshuffle are the ``dectris`` extra, imported when a decoder is made.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import MalformedMessage
from ...protocol import DEFAULT_LIMITS, Buffer, DetectorMessage, ImageFrame, Limits, SeriesEnd, SeriesStart
from .._base import Skip, check_shape
from .._virtual import VirtualDetector
from ._codecs import _bshuf_c, _bslz4_into, decompress_lz4_block, load_codecs, single_thread_bitshuffle
from ._v2 import _StreamV2

log = logging.getLogger("livedenoise.detectors")

_V1_ENCODING = re.compile(r"^(?:bs(8|16|32)-lz4|(lz4))?([<>])$")
_DIMAGE_SERIES = re.compile(rb'"series"\s*:\s*(\d{1,18})\s*[,}]')
_DIMAGE_FRAME = re.compile(rb'"frame"\s*:\s*(\d{1,18})\s*[,}]')
_V1_TYPES = {"uint8": "u1", "uint16": "u2", "uint32": "u4"}
_SKIPPED_BLOBS = ("dflatfield-1.0", "dcountrate_table-1.0")  # header_detail "all": header + blob


def _little_endian(arr: np.ndarray) -> np.ndarray:
    """The protocol's dtypes are little-endian (or single bytes)."""
    if arr.dtype.byteorder == ">":
        return arr.astype(arr.dtype.newbyteorder("<"))
    return arr


# --------------------------------------------------------------------------- the decoder

_IDLE, _DIMAGED, _BLOB, _DCONFIG, _SKIP_BLOB, _CONFIG, _MASK_BLOB = range(7)


class DectrisDecoder(_StreamV2):
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
            height, width = check_shape(shape[1], shape[0], self.limits)
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
        height, width = check_shape(height, width, self.limits)
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
