"""What ``serve --source-format dectris`` is configured with (:class:`DectrisConfig`, built from the
command line's values by :func:`dectris_config`), and the decoder it makes (:func:`make_decoder`):
which receiver reads the stream is the detector's business, not the pipeline's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..._options import option
from ...errors import LivedenoiseError
from ...protocol import DEFAULT_LIMITS, Limits
from .._config import ScanConfig, make_virtual, scan_fields
from ._decoder import DectrisDecoder
from ._libertem import LibertemReceiver, available

log = logging.getLogger("livedenoise.detectors")

DECTRIS_STREAMS = ("auto", "v1", "v2")


@dataclass(slots=True)
class DectrisConfig(ScanConfig):
    """``--source-format dectris``: a DECTRIS SIMPLON stream, Stream v1 or v2 (``stream``: which,
    and so which receiver reads it) and, for 4D-STEM, the virtual detector."""

    channel: str | None = option(None, "Stream v2: the channel (threshold) to read (default: the first).")
    stream: str = option(
        "auto", "auto: the Python decoder reads Stream v1 and v2, told apart by their messages; v1: Stream v1 "
        "through libertem-dectris's Rust receiver (in a process of its own; the Python decoder where it is not "
        "installed); v2: Stream v2. docs/dectris.md."
    )

    def __post_init__(self) -> None:
        ScanConfig.__post_init__(self)  # not super(): slots=True makes a new class
        if self.stream not in DECTRIS_STREAMS:
            raise LivedenoiseError(f"--dectris-stream {self.stream!r}: expected one of {', '.join(DECTRIS_STREAMS)}")
        if self.channel is not None and self.stream == "v1":
            raise LivedenoiseError("--channel picks a Stream v2 channel; Stream v1 has one")


def dectris_config(
    scan: str | None, annuli: Sequence[str], centre: str | None, masks: Sequence[Path], channel: str | None,
    stream: str = "auto",
) -> DectrisConfig:
    """The DECTRIS options as given on the command line (:func:`~livedenoise.detectors.scan_fields`,
    ``--channel``, ``--dectris-stream``) as a :class:`DectrisConfig`; one ``error:`` line for
    anything that does not parse or fit."""
    return DectrisConfig(**scan_fields(scan, annuli, centre, masks), channel=channel, stream=stream)


def make_decoder(
    dectris: DectrisConfig, limits: Limits = DEFAULT_LIMITS, source: str | None = None
) -> DectrisDecoder | LibertemReceiver:
    """The decoder ``serve``'s receiver reads a DECTRIS stream with: Stream v1 (``dectris.stream ==
    "v1"``) through libertem-dectris's receiver process where it is installed (connected to
    ``source``), else the Python decoder. Fails here, not in the receiver thread, where the
    ``dectris`` extra is missing, a mask file is unreadable or the receiver process does not start."""
    virtual = make_virtual(dectris, "DECTRIS stream")
    if dectris.stream == "v1" and source is not None:
        if available():
            return LibertemReceiver(source, virtual=virtual)
        log.warning("libertem-dectris is not installed (pip install 'livedenoise[dectris]'): the Python decoder reads Stream v1")
    return DectrisDecoder(virtual=virtual, channel=dectris.channel, limits=limits)
