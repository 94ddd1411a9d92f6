"""What a DECTRIS detector sends, written from DECTRIS' documentation of the SIMPLON stream
interface: the detector of the tests and benchmarks (its patterns, e.g. a simulated scan:
:func:`livedenoise.sim.simulate_4dstem`). Beside the decoder, which reads what this writes.

* Stream v1: :func:`dectris_v1_messages` (``dheader-1.0`` + config, with a pixel mask the
  ``header_detail: all`` parts too, per image ``dimage-1.0``, ``dimage_d-1.0``, the blob,
  ``dconfig-1.0``; ``dseries_end-1.0``) in the encodings ``bs16-lz4<`` (bitshuffle + LZ4 with its
  12-byte header), ``lz4<`` and ``<``; :func:`write_dectris_dump` writes them as the records (i64
  little-endian length + one ZeroMQ part) that LiberTEM's ``DectrisSim`` replays.
* Stream v2: :func:`dectris_v2_messages` (CBOR ``start`` with an optional ``pixel_mask``,
  ``image``, ``end``; compression tag 56500 ``bslz4`` or ``lz4`` in the HDF5 filters' framing, or
  none), sent by :class:`DectrisV2Sender`.

Needs the ``dectris`` extra (cbor2, lz4, bitshuffle) to encode.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import zmq

from ._codecs import BSLZ4_HEADER, _default_block, load_codecs

TYPED_ARRAY_TAG = {"|u1": 64, "<u2": 69, "<u4": 70}


# --------------------------------------------------------------------------- encodings


def encode_bslz4(frame: np.ndarray, block_elems: int = 0) -> bytes:
    """Bitshuffle + LZ4 with the 12-byte header (u64 BE size, u32 BE block size in bytes)."""
    bitshuffle = load_codecs()[2]
    arr = np.ascontiguousarray(frame).reshape(-1)
    elem = arr.dtype.itemsize
    block = block_elems or _default_block(elem)
    return BSLZ4_HEADER.pack(arr.nbytes, block * elem) + bitshuffle.compress_lz4(arr, block).tobytes()


def encode_lz4_h5(data: bytes, block: int = 1 << 16) -> bytes:
    """LZ4 in the HDF5 LZ4 filter's framing (Stream v2's ``lz4``); a block that does not shrink is stored."""
    lz4_block = load_codecs()[1]
    out = [BSLZ4_HEADER.pack(len(data), block)]
    for start in range(0, len(data), block):
        chunk = data[start : start + block]
        packed = lz4_block.compress(chunk, store_size=False)
        if len(packed) >= len(chunk):
            packed = chunk
        out += [struct.pack(">I", len(packed)), packed]
    return b"".join(out)


def _v1_blob(frame: np.ndarray, encoding: str) -> bytes:
    if encoding.startswith("bs"):
        return encode_bslz4(frame)
    raw = np.ascontiguousarray(frame).tobytes()
    if encoding == "lz4<":
        return load_codecs()[1].compress(raw, store_size=False)
    return raw


def _json(obj: dict) -> bytes:
    return json.dumps(obj).encode()


def dectris_v1_messages(
    patterns: np.ndarray, series: int = 1, *, encoding: str = "bs16-lz4<", first_image: int = 0, end: bool = True,
    pixel_mask: np.ndarray | None = None, header: bool = True,
) -> list[list[bytes]]:
    """The Stream v1 messages of one series, grouped as the detector sends them: ``[dheader,
    config]`` (with ``pixel_mask``, ``header_detail: all``: ``[dheader, config, flatfield header,
    flatfield, pixel mask header, pixel mask, count-rate header, table]``; none without
    ``header``), per image ``[dimage, dimage_d, blob, dconfig]``, ``[dseries_end]``."""
    n, h, w = patterns.shape
    type_ = {"u1": "uint8", "u2": "uint16", "u4": "uint32"}[patterns.dtype.str[1:]]
    bits = patterns.dtype.itemsize * 8
    enc = encoding.replace("bs16", f"bs{bits}") if encoding.startswith("bs") else encoding
    config = {
        "ntrigger": n, "nimages": 1, "trigger_mode": "exte", "x_pixels_in_detector": w, "y_pixels_in_detector": h,
        "bit_depth_image": bits, "compression": "bslz4" if enc.startswith("bs") else "lz4", "description": "livedenoise sim",
    }
    detail = "basic" if pixel_mask is None else "all"
    messages = [[_json({"htype": "dheader-1.0", "header_detail": detail, "series": series}), _json(config)]]
    if pixel_mask is not None:
        mask = np.ascontiguousarray(pixel_mask, "<u4")
        mh, mw = mask.shape
        messages[0] += [
            _json({"htype": "dflatfield-1.0", "shape": [mw, mh], "type": "float32"}), np.ones(mask.shape, "<f4").tobytes(),
            _json({"htype": "dpixelmask-1.0", "shape": [mw, mh], "type": "uint32"}), mask.tobytes(),
            _json({"htype": "dcountrate_table-1.0", "shape": [2, 4], "type": "float32"}), np.zeros(8, "<f4").tobytes(),
        ]
    if not header:
        messages = []
    dimaged = _json({"htype": "dimage_d-1.0", "shape": [w, h], "type": type_, "encoding": enc})
    for i, frame in enumerate(patterns):
        image_id = first_image + i
        messages.append([
            _json({"htype": "dimage-1.0", "series": series, "frame": image_id, "hash": f"{image_id:032x}"}),
            dimaged,
            _v1_blob(frame, enc),
            _json({"htype": "dconfig-1.0", "start_time": image_id * 1000, "stop_time": image_id * 1000 + 900, "real_time": 900}),
        ])
    if end:
        messages.append([_json({"htype": "dseries_end-1.0", "series": series})])
    return messages


def write_dectris_dump(path: Path, messages: Iterable[Sequence[bytes]]) -> Path:
    """The ZeroMQ dump LiberTEM's ``DectrisSim`` replays: per part, an i64 little-endian length and the part."""
    with open(path, "wb") as f:
        for message in messages:
            for part in message:
                f.write(struct.pack("<q", len(part)))
                f.write(part)
    return path


def dectris_v2_messages(
    patterns: np.ndarray,
    series: int = 1,
    *,
    compression: str = "bslz4",
    channels: Sequence[str] = ("threshold_1",),
    first_image: int = 0,
    end: bool = True,
    pixel_mask: np.ndarray | None = None,
    start: bool = True,
) -> list[bytes]:
    """The Stream v2 messages of one series (CBOR, self-described): ``start`` (with ``pixel_mask``,
    u32, for every channel; none without ``start``), one ``image`` per pattern (every channel
    carries it, the n-th channel times n + 1), ``end``."""
    cbor2 = load_codecs()[0]
    tag = cbor2.CBORTag
    n, h, w = patterns.shape
    uid = f"livedenoise-{series:08d}"
    start_msg = {
        "type": "start", "series_id": series, "series_unique_id": uid, "channels": list(channels),
        "image_size_x": w, "image_size_y": h, "number_of_images": n, "detector_description": "livedenoise sim",
    }
    if pixel_mask is not None:
        mask = np.ascontiguousarray(pixel_mask, "<u4")
        array = tag(40, [list(mask.shape), tag(TYPED_ARRAY_TAG["<u4"], mask.tobytes())])
        start_msg.update(pixel_mask={name: array for name in channels}, pixel_mask_enabled=True)
    messages = [cbor2.dumps(tag(55799, start_msg))] if start else []
    typed = TYPED_ARRAY_TAG[patterns.dtype.str]
    for i, frame in enumerate(patterns):
        data = {}
        for k, name in enumerate(channels):
            arr = np.ascontiguousarray(frame if k == 0 else frame * (k + 1))
            if compression == "bslz4":
                payload = tag(56500, ["bslz4", arr.dtype.itemsize, encode_bslz4(arr)])
            elif compression == "lz4":
                payload = tag(56500, ["lz4", 0, encode_lz4_h5(arr.tobytes())])
            else:
                payload = arr.tobytes()
            data[name] = tag(40, [[h, w], tag(typed, payload)])
        image = {
            "type": "image", "series_id": series, "series_unique_id": uid, "image_id": first_image + i,
            "start_time": [i, 1000], "stop_time": [i + 1, 1000], "real_time": [1, 1000], "data": data,
        }
        messages.append(cbor2.dumps(tag(55799, image)))
    if end:
        messages.append(cbor2.dumps(tag(55799, {"type": "end", "series_id": series, "series_unique_id": uid})))
    return messages


class DectrisV2Sender:
    """A Stream v2 detector: binds PUSH (``tcp://127.0.0.1:*`` by default; :attr:`endpoint` is the
    real address) and sends CBOR messages, one per ZeroMQ message, blocking until taken."""

    def __init__(self, bind: str = "tcp://127.0.0.1:*", ctx: zmq.Context | None = None):
        self.socket = (ctx or zmq.Context.instance()).socket(zmq.PUSH)
        self.socket.setsockopt(zmq.LINGER, 5000)
        self.socket.bind(bind)
        self.endpoint: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, messages: Iterable[bytes]) -> int:
        count = 0
        for message in messages:
            self.socket.send(message, copy=False)
            count += 1
        return count

    def close(self, linger: int | None = None) -> None:
        """Close; messages not yet taken get ``linger`` ms (default 5 s) to leave."""
        self.socket.close(linger=linger)
