"""The guard: does the model fit the stream, and does the stream look like what it was trained on?
(issues 19 and 24)

A Noise2Atom model turns whatever it sees into the picture of its Domain C: pointed at a lattice
when it learnt sparse atoms, it shows clean, convincing, wrong images. The model card keeps what
its training movie contained (``ModelCard.expects``: a :class:`~._content.SampleContent` as a
dict); ``serve`` and ``denoise`` estimate the same figures on the frames they get and
:func:`compare_content` says whether they fit. numpy only, and cheap (a few comparisons): the
cost is in :func:`~._content.estimate_content`.

:func:`guard_report` composes the guard's steps, for ``serve``'s guard thread, ``denoise`` and
the benchmarks alike: the card's figures, the stream's content estimate and their comparison, the
measured fit (:mod:`._fit`: what decides), and the one verdict they give (:class:`GuardReport`).

The rules (each broken one is a reason; any reason: does not fit):

* **density** of atoms or columns off by more than :data:`DENSITY_FACTOR` either way, per nm²
  where both pixel sizes are known, else per px² (what the network sees);
* a **lattice** where the model learnt none, or none where it learnt one;
* peak **width** off by more than :data:`WIDTH_FACTOR` (another magnification, or a blurred probe);
* peak **counts** off by more than :data:`COUNTS_FACTOR` (a dose far from the training's).

An estimate that is not reliable (too few frames or peaks, too little signal: its ``note`` says
why), on either side, gives ``fits`` None (cannot tell) and no warning: an empty field of view or
a beam blank must not cry wolf.

>>> from livedenoise.analysis import SampleContent
>>> sparse = SampleContent(0.0017, 1.03, 0.9, 2.4, 0.6, False, None, 32, True)
>>> dense = SampleContent(0.018, 11.3, 0.95, 2.1, 0.6, True, 8.1, 32, True)
>>> v = compare_content(sparse, dense, pixel_size_nm=0.04)
>>> v.fits, v.state, v.reasons, round(v.density_ratio, 1)
(False, 'does not fit', ('density', 'lattice'), 11.0)
>>> v.message
'this model expects about 1.03 atoms per nm²; this stream shows 11.3, on a lattice with 3.2 Å spacing: train on it (livedenoise train)'
>>> compare_content(sparse, sparse).state
'fits'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._content import SampleContent, estimate_content
from ._fit import FitSummary, measure_fit

__all__ = [
    "COUNTS_FACTOR", "DENSITY_FACTOR", "NO_EXPECTS", "WIDTH_FACTOR", "GuardReport", "GuardVerdict", "atom_width",
    "compare_content", "expected_content", "guard_report",
]

DENSITY_FACTOR = 2.0  # atoms per area, either way
WIDTH_FACTOR = 1.5  # peak sigma, either way
COUNTS_FACTOR = 4.0  # median peak height in raw counts, either way

FITS, DOES_NOT_FIT, UNKNOWN = "fits", "does not fit", "unknown"

#: Said once (log, ``stats``, ``denoise``) where the model card has no ``expects``.
NO_EXPECTS = "model card has no training-content figures (older model): no guard"


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """What :func:`compare_content` found. Ratios are the stream's over the model's (None where
    one side has no figure); ``message`` is the line to log and show."""

    fits: bool | None  # None: cannot tell (an estimate is not reliable)
    reasons: tuple[str, ...]  # what is off: "density", "lattice", "width", "counts" (the message says how)
    message: str
    density_ratio: float | None = None
    width_ratio: float | None = None
    counts_ratio: float | None = None
    lattice_mismatch: bool = False

    @property
    def state(self) -> str:
        """``"fits"``, ``"does not fit"`` or ``"unknown"`` (the ``guard`` field of ``stats``)."""
        return UNKNOWN if self.fits is None else FITS if self.fits else DOES_NOT_FIT

    def to_dict(self) -> dict[str, Any]:
        """The figures as ``stats`` fields (``guard_`` prefixed, ratios rounded)."""

        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {
            "guard": self.state,
            "guard_message": self.message,
            "guard_reasons": list(self.reasons),
            "guard_density_ratio": r(self.density_ratio),
            "guard_width_ratio": r(self.width_ratio),
            "guard_counts_ratio": r(self.counts_ratio),
            "guard_lattice_mismatch": self.lattice_mismatch,
        }


def _ratio(seen: float, expected: float) -> float | None:
    """seen / expected; None where expected is not a positive number (nothing to compare with)."""
    if not (math.isfinite(seen) and math.isfinite(expected)) or expected <= 0:
        return None
    return max(seen, 0.0) / expected


def _off(ratio: float | None, factor: float) -> bool:
    return ratio is not None and (ratio > factor or ratio < 1.0 / factor)


def _times(ratio: float) -> str:
    return f"{ratio:.2g}x" if ratio >= 1 else f"1/{1 / max(ratio, 1e-9):.2g}"


def _density_text(content: SampleContent, per_nm2: bool) -> float:
    return float(content.density_nm2) if per_nm2 else 100.0 * float(content.density_px)


def _lattice_text(content: SampleContent, pixel_size_nm: float | None) -> str:
    if not content.lattice:
        return "no lattice"
    if content.spacing_px is None:
        return "a lattice"
    if pixel_size_nm:
        return f"a lattice with {10 * content.spacing_px * pixel_size_nm:.2g} Å spacing"
    return f"a lattice with {content.spacing_px:.2g} px spacing"


def compare_content(
    expected: SampleContent, seen: SampleContent, *, pixel_size_nm: float | None = None
) -> GuardVerdict:
    """Does ``seen`` (a stream's estimate) fit ``expected`` (the training movie's, from the card)?

    ``pixel_size_nm``: the stream's, for the lattice spacing in Å in the message (else px).
    """
    if not expected.reliable:
        why = expected.note or "not reliable"
        return GuardVerdict(None, (), f"cannot tell: the model card's training-content figures are {why}")
    if not seen.reliable:
        return GuardVerdict(None, (), f"cannot tell yet: {seen.note or 'too little signal'}")
    per_nm2 = expected.density_nm2 is not None and seen.density_nm2 is not None
    if per_nm2:
        density = _ratio(float(seen.density_nm2), float(expected.density_nm2))
    else:
        density = _ratio(seen.density_px, expected.density_px)
    width = _ratio(seen.width_px, expected.width_px)
    counts = _ratio(seen.peak_counts, expected.peak_counts)
    lattice_mismatch = bool(seen.lattice) != bool(expected.lattice)
    off: dict[str, str] = {}  # reason -> how it reads in the message
    if density is not None and _off(density, DENSITY_FACTOR):
        off["density"] = f"{_times(density)} the atom density it was trained on"
    if lattice_mismatch:
        off["lattice"] = "a lattice where it was trained on none" if seen.lattice else "no lattice where it was trained on one"
    if width is not None and _off(width, WIDTH_FACTOR):
        off["width"] = f"peaks {_times(width)} as wide as in training"
    if counts is not None and _off(counts, COUNTS_FACTOR):
        off["counts"] = f"peaks of {_times(counts)} the training's counts (a dose far from training)"
    unit = "atoms per nm²" if per_nm2 else "atoms per 100 px²"
    shows = f"{_density_text(seen, per_nm2):.3g}"
    expects = f"this model expects about {_density_text(expected, per_nm2):.3g} {unit}"
    if not off:
        message = f"the stream fits the model's training: {shows} {unit} (trained on {_density_text(expected, per_nm2):.3g})"
        return GuardVerdict(True, (), message, density, width, counts, False)
    if "density" in off or "lattice" in off:
        message = f"{expects}; this stream shows {shows}, on {_lattice_text(seen, pixel_size_nm)}"
        others = [text for key, text in off.items() if key not in ("density", "lattice")]
    else:
        message = f"{expects} and gets {shows}, but the stream does not look like its training data"
        others = list(off.values())
    if others:
        message += f" ({'; '.join(others)})"
    message += ": train on it (livedenoise train)"
    reasons = tuple(off)
    return GuardVerdict(False, tuple(reasons), message, density, width, counts, lattice_mismatch)


def expected_content(expects: Mapping[str, Any] | None) -> tuple[SampleContent | None, str]:
    """The model card's ``expects`` as a :class:`~._content.SampleContent`, or None and why there is no guard.

    >>> expected_content(None)
    (None, 'model card has no training-content figures (older model): no guard')
    """
    if expects is None:
        return None, NO_EXPECTS
    try:
        return SampleContent.from_dict(expects), ""
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return None, f"model card's training-content figures are unreadable ({exc}): no guard"


def atom_width(*contents: SampleContent | None, default: float = 0.875) -> float:
    """The atoms' Gaussian width (px) for the unexplained figure: the first reliable estimate's
    (the training's before the stream's), else ``default`` (the simulator's Pt atom)."""
    for content in contents:
        if content is not None and content.reliable and content.width_px > 0:
            return float(content.width_px)
    return default


@dataclass(frozen=True, slots=True)
class GuardReport:
    """What the guard finds (:func:`guard_report`): the measured fit, which decides, and the content
    verdict, which says why; :attr:`state` and :attr:`message` are the one verdict they give."""

    fit: FitSummary | None  # the model against the causal filters; None: not measured
    content: GuardVerdict | None  # the stream against the card's figures; None: the card has none
    seen: SampleContent | None = None  # the stream's content estimate (where the card has figures)
    expected: SampleContent | None = None  # the card's figures
    off_reason: str = ""  # why there is no content verdict (no or unreadable figures)

    @property
    def state(self) -> str:
        """The measured fit's state (``fits``, ``does not fit``, ``undecided``); unmeasured, the
        content verdict's (``unknown`` without one)."""
        if self.fit is not None:
            return self.fit.state
        return self.content.state if self.content is not None else UNKNOWN

    @property
    def message(self) -> str:
        """The measured fit's sentence; where the model does not fit for sure, what the content
        estimate finds off (or why there is no estimate) after it."""
        if self.fit is None:
            return self.content.message if self.content is not None else self.off_reason
        text = self.fit.message
        if self.fit.state != FITS and self.content is not None and self.content.fits is False:
            text += f"; {self.content.message}"
        elif self.fit.state != FITS and self.content is None and self.expected is None:
            text += f" ({self.off_reason})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """``stats`` fields: the content figures, the score, and the verdict (``guard``, ``guard_message``)."""
        out = self.content.to_dict() if self.content is not None else {}
        if self.fit is not None:
            out |= self.fit.to_dict()
        return out | {"guard": self.state, "guard_message": self.message}


def guard_report(
    expects: Mapping[str, Any] | None,
    raw: np.ndarray,
    denoised: np.ndarray | None = None,
    *,
    pixel_size_nm: float | None = None,
    fit: FitSummary | None = None,
    window: int = 32,
) -> GuardReport:
    """The guard on raw ``(T, H, W)`` frames, the same live and offline: the model card's
    ``expects`` (:func:`expected_content`) against the frames' content estimate
    (:func:`~._content.estimate_content`, windows of ``window`` frames) by :func:`compare_content`,
    and the measured fit: ``fit`` where it is measured already (``serve``: frame by frame, at its
    own rate), else the model's ``denoised`` frames against the causal filters
    (:func:`~._fit.measure_fit`), else none (the content verdict alone).

    >>> guard_report(None, np.zeros((4, 32, 32), np.float32)).message
    'model card has no training-content figures (older model): no guard'
    """
    expected, off_reason = expected_content(expects)
    seen = content = None
    if expected is not None:
        seen = estimate_content(raw, pixel_size_nm, window=window)
        content = compare_content(expected, seen, pixel_size_nm=pixel_size_nm)
    if fit is None and denoised is not None:
        fit = measure_fit(raw, denoised)
    return GuardReport(fit, content, seen, expected, off_reason)
