"""Quantum Detectors Merlin, one folder as in LiberTEM-live: its data port (MIB frames over TCP)
read through libertem-qd-mpx (:class:`MerlinStream`: :mod:`._stream`), what ``serve`` is
configured with (:class:`MerlinConfig`, :func:`merlin_config`), and what a Merlin sends
(:mod:`._sender`: the MPX framing, headers and pixel formats, :class:`MerlinSender`), for the
tests, benchmarks and :mod:`livedenoise.sim`.

numpy only at import; libertem-qd-mpx (the ``merlin`` extra) loads when a stream is made.
"""

from ._config import MerlinConfig, merlin_config
from ._sender import FAULTS, FORMATS, LAYOUTS, MerlinSender, merlin_fault, merlin_stream
from ._stream import MERLIN_DATA_PORT, MerlinStream, load_qd_mpx, parse_data_address, reduce_stack

__all__ = [
    "FAULTS",
    "FORMATS",
    "LAYOUTS",
    "MERLIN_DATA_PORT",
    "MerlinConfig",
    "MerlinSender",
    "MerlinStream",
    "load_qd_mpx",
    "merlin_config",
    "merlin_fault",
    "merlin_stream",
    "parse_data_address",
    "reduce_stack",
]
