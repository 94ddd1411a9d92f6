"""Scoring a denoised movie: CSS always; PSNR, SSIM and contrast sign against a noise-free truth;
atom-detection precision, recall, F1 and localisation error against true atom positions.

Not imported by the daemon (``serve``); scikit-image is imported lazily, only for SSIM.

Rules (the same for every method, so that methods can be compared):

**CSS** (the paper's formula of :mod:`livedenoise.analysis`, vectorised here as
:func:`~livedenoise.analysis.css_series`) between consecutive frames. Its constants assume intensities in [0, 1], so by default (``css_normalise="minmax"``) the whole stack is first
mapped linearly to [0, 1] with its global minimum and maximum (one map for all frames, so the
frame-to-frame changes are kept). ``"none"`` uses the values as given (what the daemon reports
for a model's [0, 1] output).

**PSNR and SSIM after the best affine intensity fit.** A denoiser's output has its own units
(a model gives [0, 1], a filter gives counts), so in each frame the denoised image d is mapped to
``a*d + c`` with the least-squares a and c that best match the truth t, then
``PSNR = 10 log10(R^2 / MSE)`` and SSIM (scikit-image, 7 x 7 uniform window) with
``R = max(truth) - min(truth)`` over the whole truth movie. Both are per frame, then averaged.
The fit's slope a is reported: a negative slope means inverted contrast (bright atoms rendered
dark, the paper's failure case 1) and is flagged even though the fit itself would flip it back.
A blank output gets a = 0 and the PSNR of the truth's mean, so it scores badly here (unlike CSS).

**Atom detection.** Peaks are found on the denoised frames *as given* (no sign flip) with
:func:`livedenoise.analysis.find_atoms`: 3 x 3 local maxima whose height above the frame's median
exceeds a threshold. A detection matches a true atom when they are at most ``match_radius``
(default 1.5 px) apart, each used once; pairs are taken greedily in order of increasing
distance, which is a maximum matching whenever true atoms are more than 2 x radius apart (3 px;
the closest Pt atoms of the simulations are about 4 px apart). Counts are pooled over all frames:
precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2TP/(2TP+FP+FN); the localisation error is the
mean distance of the matched pairs, in pixels. Also reported: recall of single atoms and of
cluster atoms (given group ids), and the recall and localisation error of atoms in the frame
where they landed after a hop (> 2.5 px since the previous frame), where temporal methods smear.

The **threshold** is the part that must be fair across methods, whose outputs have different
units and noise. With ``threshold="auto"`` (default) each method gets its own best threshold:
the value that maximises the pooled F1 over the movie (every distinct candidate height is tried;
midway to the next candidate, the middle cut where several tie); that one threshold is then
applied to every frame. This gives every method its best operating point, is invariant to any
increasing intensity map (a model's [0, 1] or a filter's counts score the same), and needs no
guess of the output's scale; it is an upper bound on what an operator who tunes a threshold
once would see. ``calib_frames=n`` chooses on n frames spread evenly over the movie instead
(not the first ones: a causal temporal filter is still warming up at the start); fewer frames
were measured to be unstable (on 8 of 48 frames the F1 of a 3-frame temporal mean moved by
0.13). A float ``threshold`` uses that fixed height above the frame median instead.

**Evidence, hops and tracks** (issue 17; rules in :mod:`livedenoise.scoring._trackscore`). The
atoms found at that threshold are linked into tracks as ``serve --atoms`` links them
(:func:`~livedenoise.analysis.link_frames`: greedy nearest first within ``max_disp`` px, gaps of
2 frames), and scored against the truth: hop events (a link longer than ``hop_px``, confirmed by
the track's next frame as ``serve`` confirms it) for recall,
precision, placement error, delay and the share placed within 1 px and 2 frames; identity
switches of the tracks per 100 true atom-frames. Given the *raw* frames (detector counts), each
atom's evidence (:func:`~livedenoise.analysis.atom_evidence`, accumulated along its track as the
daemon publishes it) is scored for how well it separates true atoms from invented ones: ROC
AUC, and the precision when the evidence threshold keeps 90 % of the true atoms.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis import (
    ATOM_SIGMA,
    HOP_DISTANCE,
    MAX_LINK,
    css_series,
    find_atoms,
    scale_to_unit,
)
from ..errors import LivedenoiseError
from ._affine import affine_fit, fit_errors
from ._detection import CALIB_FRAMES, MATCH_RADIUS, detection_scores
from ._trackscore import score_tracks

__all__ = ["EvalReport", "evaluate", "load_positions"]



@dataclass
class EvalReport:
    """What :func:`evaluate` measured; fields are None where the input needed was not given."""

    frames: int
    css_mean: float | None = None
    css_min: float | None = None
    psnr: float | None = None  # dB, mean over frames, after the per-frame affine fit
    ssim: float | None = None  # mean over frames, after the per-frame affine fit
    slope: float | None = None  # movie-wide affine fit slope (truth units per denoised unit)
    inverted: bool | None = None  # movie-wide slope < 0: inverted contrast
    inverted_frames: int | None = None  # frames whose own fit has a negative slope
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    loc_error_px: float | None = None  # mean distance of matched pairs
    n_true: int | None = None
    n_found: int | None = None
    n_matched: int | None = None
    recall_single: float | None = None  # with group ids: recall of single atoms
    recall_cluster: float | None = None  # ... and of atoms in clusters
    n_hops: int | None = None  # atoms displaced > 2.5 px since the previous frame
    hop_recall: float | None = None  # recall of those atoms in the frame they landed
    hop_loc_error_px: float | None = None  # their mean localisation error
    threshold: float | None = None  # peak height above the frame median used for detection
    threshold_rule: str | None = None
    # tracks of the atoms found (with positions): hop events and identity switches
    n_hop_events: int | None = None  # hop events the tracks gave
    hop_events_recall: float | None = None  # true hops matched by an event within 5 frames
    hop_events_precision: float | None = None  # events matched to a true hop
    hop_events_placement_px: float | None = None  # mean landing error of the matched events
    hop_events_delay_frames: float | None = None  # mean frames from the true hop to its event
    hop_events_placed: float | None = None  # share of true hops placed within 1 px and 2 frames
    id_switches: int | None = None
    id_switches_per_100: float | None = None  # per 100 true atom-frames
    # evidence (with positions and raw frames): true against invented atoms
    evidence_auc_track: float | None = None  # accumulated along tracks, as serve --atoms publishes it
    evidence_auc_frame: float | None = None  # each frame's own
    evidence_precision_at_90: float | None = None  # precision keeping 90 % of the true atoms (tracks)
    evidence_threshold_at_90: float | None = None  # the evidence z of that cut
    evidence_precision_all: float | None = None  # precision keeping every atom (true / (true + invented))
    n_invented: int | None = None  # atoms found with no true atom within 3 px
    match_radius: float = MATCH_RADIUS
    per_frame: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self, per_frame: bool = True) -> dict[str, Any]:
        """JSON-ready dict; non-finite floats (a perfect PSNR is inf) become None."""
        d = asdict(self)
        if not per_frame:
            d.pop("per_frame")

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return clean(d)

    def to_json(self, per_frame: bool = True) -> str:
        return json.dumps(self.to_dict(per_frame), indent=2)


# ---------------------------------------------------------------------------- fits and metrics


# ---------------------------------------------------------------------------- the evaluation


def _as_stack(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise LivedenoiseError(f"{name} must be a (frames, height, width) stack, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise LivedenoiseError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise LivedenoiseError(f"{name} contains NaN or infinite pixels")
    return arr


def evaluate(
    denoised: np.ndarray,
    truth: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    *,
    threshold: float | str = "auto",
    match_radius: float = MATCH_RADIUS,
    calib_frames: int | None = CALIB_FRAMES,
    css_normalise: str = "minmax",
    ssim: bool = True,
    groups: np.ndarray | None = None,
    raw: np.ndarray | None = None,
    max_disp: float = MAX_LINK,
    hop_px: float = HOP_DISTANCE,
    sigma: float = ATOM_SIGMA,
    read_noise: float = 0.0,
) -> EvalReport:
    """Score a denoised (T, H, W) stack; see the module docstring for every rule.

    ``truth``: noise-free stack of the same shape (any units). ``positions``: (T, K, 2) true
    atom positions, [x, y] = [column, row] in pixels, same frame count as ``denoised``.
    ``groups``: (K,) cluster ids (-1 = single atom) for separate recalls. ``raw``: the noisy
    input frames in detector counts (same shape), for the evidence scores; ``max_disp`` and
    ``hop_px`` as ``serve --track-max-disp`` and ``--hop-px``; ``sigma`` and ``read_noise``
    (counts) for :func:`~livedenoise.analysis.atom_evidence`.
    """
    den = _as_stack(denoised, "denoised")
    t_count = den.shape[0]
    rep = EvalReport(frames=t_count, match_radius=float(match_radius))

    # CSS
    if t_count >= 2:
        if css_normalise == "minmax":
            scaled = scale_to_unit(den)
        elif css_normalise == "none":
            scaled = den
        else:
            raise LivedenoiseError(f"css_normalise must be 'minmax' or 'none', got {css_normalise!r}")
        series = css_series(scaled)
        rep.css_mean = float(series.mean())
        rep.css_min = float(series.min())
        rep.per_frame["css"] = [float(v) for v in series]

    # truth: affine fit, PSNR, SSIM
    if truth is not None:
        tru = _as_stack(truth, "truth")
        if tru.shape != den.shape:
            raise LivedenoiseError(f"truth has shape {tru.shape}, denoised has {den.shape}")
        data_range = float(tru.max() - tru.min()) or 1.0
        a_all, _ = affine_fit(den, tru)
        rep.slope = a_all
        rep.inverted = bool(a_all < 0)
        errors = fit_errors(den, tru)
        ps, slopes = errors.psnr(data_range).tolist(), errors.slope.tolist()
        ss = []
        if ssim:
            from skimage.metrics import structural_similarity  # lazy: eval extra only

            for d, t, a, c in zip(den, tru, errors.slope, errors.offset):
                fit = a * d.astype(np.float64) + c
                ss.append(float(structural_similarity(t.astype(np.float64), fit, data_range=data_range)))
        rep.inverted_frames = int(sum(s < 0 for s in slopes))
        rep.psnr = float(np.mean(ps))
        rep.per_frame["psnr"] = ps
        rep.per_frame["slope"] = slopes
        if ss:
            rep.ssim = float(np.mean(ss))
            rep.per_frame["ssim"] = ss

    # atom detection
    if positions is not None:
        pos = np.asarray(positions, np.float64)
        if pos.ndim == 2:
            pos = pos[None]
        if pos.ndim != 3 or pos.shape[-1] != 2:
            raise LivedenoiseError(f"positions must be (frames, atoms, 2), got shape {pos.shape}")
        if pos.shape[0] != t_count:
            raise LivedenoiseError(f"positions have {pos.shape[0]} frames, denoised has {t_count}")
        det = detection_scores(den, pos, threshold, match_radius, calib_frames, groups)
        rep.per_frame["f1"] = det.pop("per_frame_f1")
        for k, v in det.items():
            setattr(rep, k, v)
        raw_stack = None
        if raw is not None:
            raw_stack = _as_stack(raw, "raw")
            if raw_stack.shape != den.shape:
                raise LivedenoiseError(f"raw has shape {raw_stack.shape}, denoised has {den.shape}")
        _track_scores(rep, den, pos, raw_stack, match_radius, max_disp, hop_px, sigma, read_noise)
    return rep


def _track_scores(
    rep: EvalReport, den: np.ndarray, pos: np.ndarray, raw: np.ndarray | None, match_radius: float,
    max_disp: float, hop_px: float, sigma: float, read_noise: float,
) -> None:
    """:func:`score_tracks` of the atoms found at ``rep.threshold``, into ``rep``."""
    found = [find_atoms(d, threshold=rep.threshold).positions.astype(np.float64) for d in den]
    ts = score_tracks(found, pos, raw, radius=match_radius, max_disp=max_disp, hop_px=hop_px, sigma=sigma,
                      read_noise=read_noise)
    hs = ts.hops
    rep.n_hop_events = hs["n_detected"]
    rep.hop_events_recall = hs["recall"]
    rep.hop_events_precision = hs["precision"]
    rep.hop_events_placement_px = hs["placement_error_px"]
    rep.hop_events_delay_frames = hs["delay_frames"]
    rep.hop_events_placed = hs["recall_placed"]
    rep.id_switches, rep.id_switches_per_100 = ts.switches["switches"], ts.switches["per_100"]
    if ts.evidence_frame is None or ts.evidence_track is None:
        return
    track = ts.evidence_track
    rep.evidence_auc_frame = ts.evidence_frame["auc"]
    rep.evidence_auc_track = track["auc"]
    rep.evidence_precision_at_90 = track["precision_at_recall"]
    rep.evidence_threshold_at_90 = track["threshold_at_recall"]
    rep.evidence_precision_all = track["precision_all"]
    rep.n_invented = track["n_invented"]


# ---------------------------------------------------------------------------- files


def load_positions(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Atom positions JSON (the dev-D / ``simulate movie`` schema, or a bare [T][K][2] list).

    Returns ``(positions (T, K, 2) float64, group_id (K,) int or None)``.
    """
    p = Path(path)
    if not p.is_file():
        raise LivedenoiseError(f"positions file not found: {p}")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LivedenoiseError(f"cannot read positions {p}: {exc}".split("\n")[0]) from None
    frames = data.get("frames") if isinstance(data, dict) else data
    try:
        pos = np.asarray(frames, dtype=np.float64)
    except (TypeError, ValueError):
        raise LivedenoiseError(f"positions {p}: 'frames' must be a [frames][atoms][2] list") from None
    if pos.ndim != 3 or pos.shape[-1] != 2:
        raise LivedenoiseError(f"positions {p}: 'frames' must be [frames][atoms][2], got shape {pos.shape}")
    groups = None
    if isinstance(data, dict) and "group_id" in data:
        groups = np.asarray(data["group_id"], dtype=np.int64)
    return pos, groups
