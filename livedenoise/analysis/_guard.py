"""The guard: does a stream look like what the model was trained on? (issue 19)

A Noise2Atom model turns whatever it sees into the picture of its Domain C: pointed at a lattice
when it learnt sparse atoms, it shows clean, convincing, wrong images. The model card keeps what
its training movie contained (``ModelCard.expects``: a :class:`~._content.SampleContent` as a
dict); ``serve`` and ``denoise`` estimate the same figures on the frames they get and
:func:`compare_content` says whether they fit. numpy only, and cheap (a few comparisons): the
cost is in :func:`~._content.estimate_content`.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._content import SampleContent

__all__ = [
    "COUNTS_FACTOR", "DENSITY_FACTOR", "NO_EXPECTS", "WIDTH_FACTOR", "GuardVerdict", "atom_width", "compare_content",
    "expected_content",
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


def expected_content(expects: dict[str, Any] | None) -> tuple[SampleContent | None, str]:
    """The model card's ``expects`` as a :class:`~._content.SampleContent`, or None and why there is no guard.

    >>> expected_content(None)
    (None, 'model card has no training-content figures (older model): no guard')
    """
    from ._content import SampleContent

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
