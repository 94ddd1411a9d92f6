"""What every pixelated detector's stream is configured with: the scan and its virtual detectors
(:class:`ScanConfig`, which each detector's config extends), read from the command line's values
(:func:`scan_fields`) and built (:func:`make_virtual`). Each field's help text is declared once
here (:func:`~livedenoise._options.option`) and shown by ``serve --help``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._options import option, parse_shapes
from ..errors import LivedenoiseError
from ._masks import Annulus, Weights, read_mask
from ._virtual import VirtualDetector

log = logging.getLogger("livedenoise.detectors")


@dataclass(slots=True)
class ScanConfig:
    """A pixelated detector's stream: for 4D-STEM, the scan and the virtual detector
    (:mod:`livedenoise.detectors`): one or several annuli and masks, reduced in one pass; the first
    (annuli before masks, each in the order given) is denoised, the others published on
    ``virtual``. The fields every such detector shares."""

    scan: tuple[int, int] | None = option(
        None, "4D-STEM: the scan's ROWSxCOLS (the detector does not know it); each scan of diffraction patterns "
        "becomes one virtual image. Without it, each detector frame is a frame."
    )
    annuli: tuple[Annulus, ...] = option(
        (), "Virtual detectors: annuli (INNER <= r < OUTER, detector pixels) around the beam. The first virtual "
        "detector (annuli before masks) is denoised; the others are published on 'virtual'."
    )
    masks: tuple[Path, ...] = option(
        (), "Virtual detector (with --scan): a mask or weights file (.npy or .tif, the detector's shape); may be "
        "repeated, after the annuli."
    )
    inner: float | None = option(None, "One annulus' inner radius (short for annuli), detector pixels.")
    outer: float | None = option(None, "One annulus' outer radius (short for annuli), detector pixels.")
    mask: Path | None = option(None, "Virtual detector: a mask or weights file (.npy or .tif) instead of an annulus.")
    centre: tuple[float, float] | None = option(
        None, "Virtual detector: the annuli's centre X,Y in detector pixels (default: found from each series' first patterns)."
    )
    centre_frames: int = option(16, "Patterns averaged to find the annuli's centre.")

    def __post_init__(self) -> None:
        if self.inner is not None or self.outer is not None:  # the one-annulus shorthand, first
            inner = 0.0 if self.inner is None else self.inner
            if self.outer is None or not (0 <= inner < self.outer):
                raise LivedenoiseError(f"--annulus {inner:g}:{self.outer}: expected 0 <= INNER < OUTER, in pixels")
            self.annuli = (Annulus(inner, self.outer), *self.annuli)
            self.inner = self.outer = None
        if self.mask is not None:
            self.masks = (self.mask, *self.masks)
            self.mask = None
        detectors = bool(self.annuli or self.masks)
        if self.scan is not None:
            if len(self.scan) != 2 or any(type(n) is not int or n < 1 for n in self.scan):
                raise LivedenoiseError(f"--scan {self.scan}: expected ROWSxCOLS, like 64x64")
            if not detectors:
                raise LivedenoiseError("--scan needs a virtual detector: --annulus INNER:OUTER or --mask FILE")
        elif detectors or self.centre is not None:
            raise LivedenoiseError("--annulus, --centre and --mask need --scan ROWSxCOLS (a 4D-STEM stream)")
        if self.centre is not None and not self.annuli:
            raise LivedenoiseError("--centre goes with --annulus, not --mask")
        if self.centre_frames < 1:
            raise LivedenoiseError("centre_frames must be at least 1")

    def virtual_detectors(self) -> list[Annulus | Weights]:
        """The virtual detectors in order, mask files read (one clear error for one that is not)."""
        return [*self.annuli, *(Weights(read_mask(path), name=path.stem) for path in self.masks)]


def _numbers(text: str, sep: str, n: int, option: str, example: str) -> tuple[float, ...]:
    parts = text.split(sep)
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != n or not all(map(math.isfinite, values)):
        raise LivedenoiseError(f"{option} {text!r}: expected {example}")
    return values


def _annulus(text: str) -> Annulus:
    """``[NAME=]INNER:OUTER`` as an :class:`~livedenoise.detectors.Annulus`."""
    name, _, radii = text.rpartition("=")
    inner, outer = _numbers(radii, ":", 2, "--annulus", "[NAME=]INNER:OUTER radii in pixels, like 10:40 or haadf=24:60")
    return Annulus(inner, outer, name.strip())


def scan_fields(scan: str | None, annuli: Sequence[str], centre: str | None, masks: Sequence[Path]) -> dict[str, Any]:
    """``--scan ROWSxCOLS``, ``--annulus [NAME=]INNER:OUTER`` and ``--mask FILE`` (each may be given
    several times) and ``--centre X,Y`` as :class:`ScanConfig`'s fields, parsed (one ``error:`` line
    for anything that does not) and checked by the config they build.

    >>> scan_fields("64x32", ["haadf=24:60", "0:8"], None, [])["annuli"][1]
    Annulus(inner=0.0, outer=8.0, name='')
    """
    rows_cols = None
    if scan is not None:
        try:
            rows_cols = parse_shapes(scan)
        except LivedenoiseError:
            rows_cols = ()
        if len(rows_cols) != 1 or min(rows_cols[0]) < 1:
            raise LivedenoiseError(f"--scan {scan!r}: expected ROWSxCOLS, like 64x64")
        rows_cols = rows_cols[0]
    xy = None if centre is None else _numbers(centre, ",", 2, "--centre", "X,Y in pixels, like 47.5,48")
    for path in masks:
        if not path.is_file():
            raise LivedenoiseError(f"--mask {path}: no such file")
    return {"scan": rows_cols, "annuli": tuple(_annulus(a) for a in annuli), "masks": tuple(masks), "centre": xy}


def make_virtual(scan: ScanConfig, stream: str) -> VirtualDetector | None:
    """The virtual detector of a 4D-STEM stream (None without ``--scan``: each detector frame is a
    frame): its annuli and masks, the first denoised; logged. A mask file that cannot be read fails here."""
    if scan.scan is None:
        log.info("%s: each detector frame is a frame", stream)
        return None
    detectors = scan.virtual_detectors()
    virtual = VirtualDetector(scan.scan, detectors=detectors, centre=scan.centre, centre_frames=scan.centre_frames)
    what = ", ".join(d.label for d in detectors)
    log.info("%s: virtual detectors %s (the first denoised), %dx%d scan positions per image", stream, what, *scan.scan)
    return virtual
