"""What is measured on frames without ground truth, live and offline: the atoms of a denoised frame
(:func:`find_atoms`), how strongly the raw counts support each of them (:func:`atom_evidence`,
accumulated along tracks by :class:`TrackEvidence`), their tracks and hops (:class:`Tracker`),
and CSS, the paper's consecutive structural similarity (:func:`css`).

numpy only: the daemon uses all of them. Scoring against ground truth (PSNR, SSIM, atom F1, hops,
evidence AUC, identity switches) is :mod:`livedenoise.analysis.evaluate`, which the daemon never
imports.
"""

from ._atoms import Atoms, find_atoms, local_maxima
from ._css import C1, C2, css, css_chain, css_series, scale_to_unit
from ._evidence import ATOM_SIGMA, WEAK_Z, Evidence, TrackEvidence, accumulate_evidence, atom_evidence, estimate_sigma
from ._tracks import HopEvent, Tracker, link_frames

__all__ = [
    "ATOM_SIGMA",
    "C1",
    "C2",
    "WEAK_Z",
    "Atoms",
    "Evidence",
    "HopEvent",
    "TrackEvidence",
    "Tracker",
    "accumulate_evidence",
    "atom_evidence",
    "css",
    "css_chain",
    "css_series",
    "estimate_sigma",
    "find_atoms",
    "link_frames",
    "local_maxima",
    "scale_to_unit",
]
