"""Detectors that speak their own stream protocol, read by ``serve --source-format``.

DECTRIS (SIMPLON Stream v1 and v2, :class:`DectrisDecoder`; Stream v1 also through
libertem-dectris's Rust receiver in a process of its own, :class:`LibertemReceiver`), Quantum
Detectors Merlin (its data port through libertem-qd-mpx, :class:`MerlinStream`) and the virtual
detector that turns a 4D-STEM stream of diffraction patterns into scan images
(:class:`VirtualDetector`: one or several :class:`Annulus` / :class:`Weights` detectors, whole
stacks at once). numpy only at import; the DECTRIS codecs (cbor2, lz4, bitshuffle: the
``dectris`` extra) load when a decoder is made, libertem-qd-mpx (the ``merlin`` extra) when a
stream is. The daemon's receiver takes their messages, :class:`Skip` entries and
:class:`VirtualImage` (the images of detectors after the first).
"""

from ._base import Skip, VirtualImage
from ._dectris import (
    BSLZ4_HEADER,
    TYPED_ARRAY_TAGS,
    DectrisDecoder,
    decompress_bslz4,
    decompress_lz4_block,
    decompress_lz4_h5,
    load_codecs,
    single_thread_bitshuffle,
)
from ._libertem import LibertemReceiver
from ._libertem import available as libertem_available
from ._merlin import MERLIN_DATA_PORT, MerlinStream, load_qd_mpx, parse_data_address, reduce_stack
from ._virtual import Annulus, VirtualDetector, Weights, annular_mask, find_centre, read_mask

__all__ = [
    "BSLZ4_HEADER",
    "MERLIN_DATA_PORT",
    "TYPED_ARRAY_TAGS",
    "Annulus",
    "DectrisDecoder",
    "LibertemReceiver",
    "MerlinStream",
    "Skip",
    "VirtualDetector",
    "VirtualImage",
    "Weights",
    "annular_mask",
    "decompress_bslz4",
    "decompress_lz4_block",
    "decompress_lz4_h5",
    "find_centre",
    "libertem_available",
    "load_codecs",
    "load_qd_mpx",
    "parse_data_address",
    "read_mask",
    "reduce_stack",
    "single_thread_bitshuffle",
]
