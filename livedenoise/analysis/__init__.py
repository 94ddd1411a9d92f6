"""What is measured on frames without ground truth, live and offline: the atoms of a denoised frame
(:func:`find_atoms`), how strongly the raw counts support each of them (:func:`atom_evidence`,
accumulated along tracks by :class:`TrackEvidence`), their tracks and hops (:class:`Tracker`),
CSS, the paper's consecutive structural similarity (:func:`css`), and the guard: does the model
fit the stream, and why not (:func:`guard_report`).

numpy only: the daemon uses all of them. Scoring against ground truth (PSNR, SSIM, atom F1, hops,
evidence AUC, identity switches) is :mod:`livedenoise.scoring`, which the daemon never
imports.
"""

from ._atoms import Atoms, find_atoms
from ._content import SampleContent, estimate_content
from ._css import C1, C2, css, css_chain, css_series, scale_to_unit
from ._evidence import ATOM_SIGMA, WEAK_Z, Evidence, TrackEvidence, accumulate_evidence, atom_evidence
from ._filter import MAX_WINDOW, CausalFilter, filter_grid, gaussian_blur, gaussian_kernel
from ._fit import DOES_NOT_FIT, FILTER_BANK, FITS, UNDECIDED, FitRules, FitSummary, MeasuredFit, measure_fit
from ._guard import NO_EXPECTS, GuardReport, GuardVerdict, atom_width, compare_content, expected_content, guard_report
from ._noise import NoiseModel, drift_per_frame, noise_model, scene_changes
from ._score import FrameTerms, Score, frame_terms, paired_gain, score, summarise
from ._tracks import HOP_DISTANCE, MAX_LINK, HopEvent, Tracker, link_frames
from ._unexplained import UNEXPLAINED_Z, Unexplained, read_noise_of, unexplained, unexplained_sum

__all__ = [
    "ATOM_SIGMA",
    "C1",
    "C2",
    "DOES_NOT_FIT",
    "FILTER_BANK",
    "FITS",
    "HOP_DISTANCE",
    "MAX_LINK",
    "MAX_WINDOW",
    "NO_EXPECTS",
    "UNDECIDED",
    "UNEXPLAINED_Z",
    "WEAK_Z",
    "Atoms",
    "CausalFilter",
    "Evidence",
    "FitRules",
    "FitSummary",
    "FrameTerms",
    "GuardReport",
    "GuardVerdict",
    "HopEvent",
    "MeasuredFit",
    "NoiseModel",
    "SampleContent",
    "Score",
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
    "drift_per_frame",
    "estimate_content",
    "expected_content",
    "filter_grid",
    "find_atoms",
    "frame_terms",
    "gaussian_blur",
    "gaussian_kernel",
    "guard_report",
    "link_frames",
    "measure_fit",
    "noise_model",
    "paired_gain",
    "read_noise_of",
    "scale_to_unit",
    "scene_changes",
    "score",
    "summarise",
    "unexplained",
    "unexplained_sum",
]
