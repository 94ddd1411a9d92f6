"""What is measured on frames without ground truth, live and offline: the atoms of a denoised frame
(:func:`find_atoms`), how strongly the raw counts support each of them (:func:`atom_evidence`,
accumulated along tracks by :class:`TrackEvidence`), their tracks and hops (:class:`Tracker`),
and CSS, the paper's consecutive structural similarity (:func:`css`).

numpy only: the daemon uses all of them. Scoring against ground truth (PSNR, SSIM, atom F1, hops,
evidence AUC, identity switches) is :mod:`livedenoise.analysis.evaluate`, which the daemon never
imports.
"""

from ._atoms import Atoms, find_atoms, local_maxima
from ._content import SampleContent, estimate_content
from ._css import C1, C2, css, css_chain, css_series, scale_to_unit
from ._evidence import ATOM_SIGMA, WEAK_Z, Evidence, TrackEvidence, accumulate_evidence, atom_evidence, estimate_sigma
from ._guard import NO_EXPECTS, GuardVerdict, atom_width, compare_content, expected_content
from ._tracks import HopEvent, Tracker, link_frames
from ._unexplained import UNEXPLAINED_Z, Unexplained, read_noise_of, unexplained, unexplained_sum

__all__ = [
    "ATOM_SIGMA",
    "C1",
    "C2",
    "NO_EXPECTS",
    "UNEXPLAINED_Z",
    "WEAK_Z",
    "Atoms",
    "Evidence",
    "GuardVerdict",
    "HopEvent",
    "SampleContent",
    "TrackEvidence",
    "Tracker",
    "Unexplained",
    "accumulate_evidence",
    "atom_evidence",
    "atom_width",
    "compare_content",
    "css",
    "css_chain",
    "css_series",
    "estimate_content",
    "estimate_sigma",
    "expected_content",
    "find_atoms",
    "link_frames",
    "local_maxima",
    "read_noise_of",
    "scale_to_unit",
    "unexplained",
    "unexplained_sum",
]
