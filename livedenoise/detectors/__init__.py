"""Detectors that speak their own stream protocol, read by ``serve --source-format``: one folder
per detector, as in LiberTEM-live, and what they share here.

DECTRIS (:mod:`.dectris`: SIMPLON Stream v1 and v2, :class:`DectrisDecoder`; Stream v1 also
through libertem-dectris's Rust receiver in a process of its own, :class:`LibertemReceiver`),
Quantum Detectors Merlin (:mod:`.merlin`: its data port through libertem-qd-mpx,
:class:`MerlinStream`), each with its ``serve`` configuration (:class:`DectrisConfig`,
:class:`MerlinConfig`) and a sender of its stream for the tests; and, shared, the virtual detector
that turns a 4D-STEM stream of diffraction patterns into scan images (:class:`VirtualDetector`:
one or several :class:`Annulus` / :class:`Weights` detectors, whole stacks at once) and its
configuration (:class:`ScanConfig`, :func:`scan_fields`, :func:`make_virtual`). numpy only at
import; the DECTRIS codecs (cbor2, lz4, bitshuffle: the ``dectris`` extra) load when a decoder is
made, libertem-qd-mpx (the ``merlin`` extra) when a stream is. The daemon's receiver takes their
messages, :class:`Skip` entries and :class:`VirtualImage` (the images of detectors after the first).
"""

from ._base import Skip, VirtualImage
from ._config import ScanConfig, make_virtual, scan_fields
from ._masks import Annulus, Weights, annular_mask, find_centre, read_mask
from ._virtual import VirtualDetector
from .dectris import (
    BSLZ4_HEADER,
    TYPED_ARRAY_TAGS,
    DectrisConfig,
    DectrisDecoder,
    LibertemReceiver,
    decompress_bslz4,
    decompress_lz4_block,
    decompress_lz4_h5,
    libertem_available,
    load_codecs,
    single_thread_bitshuffle,
)
from .merlin import MERLIN_DATA_PORT, MerlinConfig, MerlinStream, load_qd_mpx, parse_data_address, reduce_stack

__all__ = [
    "BSLZ4_HEADER",
    "MERLIN_DATA_PORT",
    "TYPED_ARRAY_TAGS",
    "Annulus",
    "DectrisConfig",
    "DectrisDecoder",
    "LibertemReceiver",
    "MerlinConfig",
    "MerlinStream",
    "ScanConfig",
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
    "make_virtual",
    "parse_data_address",
    "read_mask",
    "reduce_stack",
    "scan_fields",
    "single_thread_bitshuffle",
]
