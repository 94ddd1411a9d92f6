"""What ``serve --source-format merlin`` is configured with (:class:`MerlinConfig`), built from the
command line's values by :func:`merlin_config`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import LivedenoiseError
from .._config import ScanConfig, scan_fields
from ._stream import load_qd_mpx, parse_data_address


@dataclass(slots=True)
class MerlinConfig(ScanConfig):
    """``--source-format merlin``: a Quantum Detectors Merlin's data port (its MIB frames over TCP,
    read by libertem-qd-mpx) and, for 4D-STEM, the virtual detector."""


def merlin_config(
    source: str, scan: str | None, annuli: Sequence[str], centre: str | None, masks: Sequence[Path],
    channel: str | None, stream: str = "auto",
) -> MerlinConfig:
    """The scan options as given on the command line, parsed and checked as for DECTRIS
    (:func:`~livedenoise.detectors.scan_fields`; a Merlin has no channels) as a :class:`MerlinConfig`;
    the source must be its data port, ``tcp://HOST:PORT``, and the ``merlin`` extra installed: one
    ``error:`` line at start."""
    if channel is not None:
        raise LivedenoiseError("--channel: only with --source-format dectris")
    if stream.strip().lower() != "auto":
        raise LivedenoiseError("--dectris-stream: only with --source-format dectris")
    parse_data_address(source)
    load_qd_mpx()
    return MerlinConfig(**scan_fields(scan, annuli, centre, masks))
