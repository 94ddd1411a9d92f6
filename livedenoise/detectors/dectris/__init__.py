"""DECTRIS detectors, one folder as in LiberTEM-live: the SIMPLON stream interface's Stream v1 and
v2 read by the Python decoder (:class:`DectrisDecoder`: :mod:`._decoder`, its v2 half :mod:`._v2`,
the codecs :mod:`._codecs`) or, Stream v1, by libertem-dectris's Rust receiver in a process of its
own (:class:`LibertemReceiver`: :mod:`._libertem`, the process :mod:`._relay`); what ``serve`` is
configured with (:class:`DectrisConfig`, :func:`dectris_config`) and the decoder it makes
(:func:`make_decoder`); and what a detector sends (:mod:`._sender`: Stream v1 and v2 messages,
:class:`DectrisV2Sender`), for the tests, benchmarks and :mod:`livedenoise.sim`.

numpy, pyzmq and msgpack at import; the codecs (cbor2, lz4, bitshuffle: the ``dectris`` extra)
load when a decoder is made or a message encoded, libertem-dectris in the receiver process only.
"""

from ._codecs import (
    BSLZ4_HEADER,
    decompress_bslz4,
    decompress_lz4_block,
    decompress_lz4_h5,
    load_codecs,
    single_thread_bitshuffle,
)
from ._config import DECTRIS_STREAMS, DectrisConfig, dectris_config, make_decoder
from ._decoder import DectrisDecoder
from ._libertem import LibertemReceiver
from ._libertem import available as libertem_available
from ._sender import (
    DectrisV2Sender,
    dectris_v1_messages,
    dectris_v2_messages,
    encode_bslz4,
    encode_lz4_h5,
    write_dectris_dump,
)
from ._v2 import TYPED_ARRAY_TAGS

__all__ = [
    "BSLZ4_HEADER",
    "DECTRIS_STREAMS",
    "TYPED_ARRAY_TAGS",
    "DectrisConfig",
    "DectrisDecoder",
    "DectrisV2Sender",
    "LibertemReceiver",
    "decompress_bslz4",
    "decompress_lz4_block",
    "decompress_lz4_h5",
    "dectris_config",
    "dectris_v1_messages",
    "dectris_v2_messages",
    "encode_bslz4",
    "encode_lz4_h5",
    "libertem_available",
    "load_codecs",
    "make_decoder",
    "single_thread_bitshuffle",
    "write_dectris_dump",
]
