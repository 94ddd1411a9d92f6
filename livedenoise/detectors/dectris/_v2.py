"""The decoder's Stream v2 half (``format: cbor``): one CBOR map per message.

``type`` ``start``, ``image`` or ``end``; the start message's ``pixel_mask`` (a channel -> array
map, like an image's ``data``) is left out of the virtual detector; an image's ``data`` maps
channel names to a multi-dimensional array (tag 40, ``[[rows, cols], typed array]``) around a
typed array (RFC 8746 tags 64-87) whose byte string may be compressed (tag 56500, ``[algorithm,
element size, bytes]``). One channel is read: the one asked for, else the first of the start
message's ``channels`` (else the first in ``data``). cbor2 is used without a ``tag_hook`` (its
signature changed between major versions): the tags come back as ``CBORTag`` objects and are read
here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import MalformedMessage
from .._base import Skip, check_shape
from ._codecs import _bslz4_into, decompress_lz4_h5

log = logging.getLogger("livedenoise.detectors")

#: RFC 8746 typed arrays a detector sends, as numpy dtypes
TYPED_ARRAY_TAGS: dict[int, str] = {
    64: "|u1", 68: "|u1", 65: ">u2", 66: ">u4", 69: "<u2", 70: "<u4", 72: "|i1", 73: ">i2", 77: "<i2",
    78: "<i4", 74: ">i4", 81: ">f4", 85: "<f4",
}
TAG_MULTI_DIM, TAG_MULTI_DIM_COLUMN_MAJOR, TAG_COMPRESSED = 40, 1040, 56500
_DTYPES = {tag: np.dtype(code) for tag, code in TYPED_ARRAY_TAGS.items()}
_SEQ = (list, tuple)  # isinstance with a tuple: 0.13 us against 0.4 with a union (list | tuple), measured
_BYTES = (bytes, bytearray)


class _StreamV2:
    """Stream v2's messages, methods of :class:`~livedenoise.detectors.DectrisDecoder` (which holds
    the state and the series and frames they complete): a module of their own for its length."""

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
                check_shape(dims[0], dims[1], self.limits)
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
        height, width = check_shape(dims[0], dims[1], self.limits)
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
