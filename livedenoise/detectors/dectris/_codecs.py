"""The DECTRIS codecs: the blobs a detector sends, decompressed with every claim checked first.

``bsN-lz4`` / ``bslz4`` is bitshuffle + LZ4 with a 12-byte header (u64 big-endian size, u32
big-endian block size in bytes; LiberTEM's mocked simulator writes zeros there: the default block
size then). The block framing is checked before bitshuffle sees it: its C code trusts each block's
length and reads past a truncated buffer. ``lz4`` is one LZ4 block in v1, the HDF5 LZ4 filter's
framing in v2; ``<`` / ``>`` raw pixels.

cbor2, lz4 and bitshuffle are the ``dectris`` extra, imported when a decoder is made
(:func:`load_codecs`).
"""

from __future__ import annotations

import ctypes
import functools
import struct
import sys
from typing import Any

import numpy as np

from ...errors import LivedenoiseError, MalformedMessage
from ...protocol import Buffer

BSLZ4_HEADER = struct.Struct(">QI")  # uncompressed size, block size (bytes): 12 bytes before the blocks
_U32BE = struct.Struct(">I")


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
