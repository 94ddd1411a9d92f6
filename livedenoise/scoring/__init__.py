"""Scoring against ground truth, offline: what a simulator or a reference image knows and a live
stream does not (PSNR and SSIM after the affine fit, atom F1 and localisation, hops, evidence AUC,
identity switches). :func:`evaluate` runs all of them by one set of rules, the same for every
method (its module docstring says which and why).

The live side (:mod:`livedenoise.analysis`: atoms, evidence, tracks, CSS, the score without
ground truth, the guard) never imports this package; import-linter checks it.
"""

from ._affine import FitErrors, affine_fit, fit_errors, psnr
from ._detection import MATCH_RADIUS, detection_scores, match_points
from ._evaluate import EvalReport, evaluate, load_positions
from ._trackscore import TrackScores, TrueHop, hop_scores, precision_at_recall, score_tracks, true_hops

__all__ = [
    "MATCH_RADIUS",
    "EvalReport",
    "FitErrors",
    "TrackScores",
    "TrueHop",
    "affine_fit",
    "detection_scores",
    "evaluate",
    "fit_errors",
    "hop_scores",
    "load_positions",
    "match_points",
    "precision_at_recall",
    "psnr",
    "score_tracks",
    "true_hops",
]
