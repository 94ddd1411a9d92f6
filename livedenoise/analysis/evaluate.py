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
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._atoms import find_atoms
from ..errors import LivedenoiseError
from ._css import css_series, scale_to_unit

__all__ = [
    "EvalReport",
    "affine_fit",
    "detection_scores",
    "evaluate",
    "load_positions",
    "match_points",
    "psnr",
]

MATCH_RADIUS = 1.5
HOP_PX = 2.5  # a true displacement larger than this between two frames is a hop
CALIB_FRAMES: int | None = None  # None: all frames


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


def affine_fit(denoised: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Least-squares ``a, c`` minimising ``|a*denoised + c - truth|^2`` (a = 0 for a flat input)."""
    d = np.asarray(denoised, np.float64).ravel()
    t = np.asarray(truth, np.float64).ravel()
    dm, tm = d.mean(), t.mean()
    dd = d - dm
    var = float((dd * dd).sum())  # not np.dot: BLAS threads crawl on a busy machine
    a = float((dd * (t - tm)).sum()) / var if var > 0 else 0.0
    return a, float(tm - a * dm)


def psnr(estimate: np.ndarray, truth: np.ndarray, data_range: float) -> float:
    """PSNR in dB; inf when the two are equal."""
    mse = float(np.mean((np.asarray(estimate, np.float64) - np.asarray(truth, np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def match_points(
    true_xy: np.ndarray, found_xy: np.ndarray, radius: float = MATCH_RADIUS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy one-to-one matching within ``radius``, closest pairs first.

    Returns ``(true_index, found_index, distance)`` of the matched pairs.
    """
    t = np.asarray(true_xy, np.float64).reshape(-1, 2)
    f = np.asarray(found_xy, np.float64).reshape(-1, 2)
    if t.shape[0] == 0 or f.shape[0] == 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0)
    dist = np.hypot(t[:, None, 0] - f[None, :, 0], t[:, None, 1] - f[None, :, 1])
    ti, fi = np.nonzero(dist <= radius)
    dd = dist[ti, fi]
    order = np.argsort(dd, kind="stable")
    used_t = np.zeros(t.shape[0], bool)
    used_f = np.zeros(f.shape[0], bool)
    keep = []
    for k in order:
        a, b = ti[k], fi[k]
        if not used_t[a] and not used_f[b]:
            used_t[a] = used_f[b] = True
            keep.append(k)
    keep_arr = np.asarray(keep, np.int64)
    return ti[keep_arr], fi[keep_arr], dd[keep_arr]


def _f1(tp: int, fp: int, fn: int) -> float:
    den = 2 * tp + fp + fn
    return 2 * tp / den if den else 1.0


def _candidates(frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """All 3 x 3 local maxima of each frame: (positions, heights above median), tallest first."""
    out = []
    for fr in frames:
        a = find_atoms(fr, threshold=-np.inf)
        out.append((a.positions, a.heights))
    return out


def _tallest_near(true_xy: np.ndarray, pos: np.ndarray, h: np.ndarray, radius: float) -> np.ndarray:
    """For each true atom, the height of the tallest candidate within ``radius`` (-inf if none).

    Candidates sit on distinct pixels (local maxima) plus a sub-pixel offset of at most 0.5 px,
    so only the pixels within ``radius + 1.5`` of an atom are looked up: O(atoms), not
    O(atoms x candidates), which matters for raw 512 x 512 frames with ~30 000 maxima.
    """
    pix = np.floor(pos + 0.5).astype(np.int64)
    ox, oy = pix[:, 0].min(), pix[:, 1].min()
    w = int(pix[:, 0].max() - ox + 1)
    hgt = int(pix[:, 1].max() - oy + 1)
    index = np.full((hgt, w), -1, np.int64)
    index[pix[:, 1] - oy, pix[:, 0] - ox] = np.arange(pos.shape[0])
    reach = int(np.ceil(radius + 1.5))
    offs = np.arange(-reach, reach + 1)
    cx = np.floor(true_xy[:, 0] + 0.5).astype(np.int64)[:, None, None] + offs[None, None, :] - ox
    cy = np.floor(true_xy[:, 1] + 0.5).astype(np.int64)[:, None, None] + offs[None, :, None] - oy
    inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < hgt)
    idx = np.where(inside, index[np.clip(cy, 0, hgt - 1), np.clip(cx, 0, w - 1)], -1).reshape(len(true_xy), -1)
    ok = idx >= 0
    safe = np.where(ok, idx, 0)
    d = np.hypot(pos[safe, 0] - true_xy[:, None, 0], pos[safe, 1] - true_xy[:, None, 1])
    return np.where(ok & (d <= radius), h[safe], -np.inf).max(axis=1)


def _choose_threshold(cands: list[tuple[np.ndarray, np.ndarray]], true_xy: np.ndarray, radius: float) -> float:
    """The peak-height threshold that maximises pooled F1 over the given frames, exactly.

    Every distinct candidate height is tried at once: a true atom is found at threshold ``thr``
    when one of the candidates within ``radius`` of it is taller than ``thr`` (exact for the
    one-to-one matching while true atoms are more than 2 x radius apart, since a candidate is
    then near one atom at most). The threshold returned lies midway between the lowest kept
    height and the next one; where several cuts tie, the middle one is taken.
    """
    heights = np.concatenate([h for _, h in cands]) if cands else np.zeros(0)
    if heights.size == 0:
        return 0.0
    best_h = []  # per true atom: the tallest candidate within radius (-inf if none)
    for (pos, h), txy in zip(cands, true_xy):
        t = np.asarray(txy, np.float64).reshape(-1, 2)
        if t.shape[0] == 0:
            continue
        if pos.shape[0] == 0:
            best_h.append(np.full(t.shape[0], -np.inf))
            continue
        best_h.append(_tallest_near(t, pos, h, radius))
    bh = np.sort(np.concatenate(best_h)) if best_h else np.zeros(0)
    n_true = bh.size
    levels = np.unique(heights)[::-1]  # cut k keeps every candidate >= levels[k]
    sorted_h = np.sort(heights)
    found = sorted_h.size - np.searchsorted(sorted_h, levels, side="left")
    tp = n_true - np.searchsorted(bh, levels, side="left")
    f1 = 2 * tp / np.maximum(found + n_true, 1)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    k = best[len(best) // 2]
    lower = levels[k + 1] if k + 1 < levels.size else levels[k] - 1.0
    return float((levels[k] + lower) / 2)


def detection_scores(
    frames: np.ndarray,
    positions: np.ndarray,
    threshold: float | str = "auto",
    match_radius: float = MATCH_RADIUS,
    calib_frames: int | None = CALIB_FRAMES,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Atom detection scores of a (T, H, W) stack against (T, K, 2) true [x, y] positions.

    Besides the pooled scores: recall of single atoms and of cluster atoms (with ``groups``,
    -1 = single), and recall and localisation error of *hopping* atoms in the frame where they
    landed (displacement > ``HOP_PX`` from the previous frame): what a temporal method smears.
    """
    cands = _candidates(frames)
    if isinstance(threshold, str):
        if threshold != "auto":
            raise LivedenoiseError(f"threshold must be 'auto' or a number, got {threshold!r}")
        n = len(cands) if calib_frames is None else max(1, min(calib_frames, len(cands)))
        idx = np.unique(np.linspace(0, len(cands) - 1, n).round().astype(int))
        thr = _choose_threshold([cands[i] for i in idx], positions[idx], match_radius)
        where = "all frames" if idx.size == len(cands) else f"{idx.size} frames spread over the movie"
        rule = f"auto: maximises F1 on {where}"
    else:
        thr = float(threshold)
        rule = "fixed"
    tp = fp = fn = 0
    dists = []
    per_f1 = []
    t_count, k_count = positions.shape[:2]
    found_d = np.full((t_count, k_count), np.nan)  # distance to the matched detection per atom
    for t, ((pos, h), txy) in enumerate(zip(cands, positions)):
        sel = pos[h > thr]
        ti, _, d = match_points(txy, sel, match_radius)
        found_d[t, ti] = d
        m = d.size
        tp += m
        fp += sel.shape[0] - m
        fn += txy.shape[0] - m
        dists.append(d)
        per_f1.append(_f1(m, sel.shape[0] - m, txy.shape[0] - m))
    alld = np.concatenate(dists) if dists else np.zeros(0)
    extra: dict[str, Any] = {}
    if groups is not None and len(groups) == k_count:
        g = np.asarray(groups)
        hit = ~np.isnan(found_d)
        extra["recall_single"] = float(hit[:, g < 0].mean()) if (g < 0).any() else None
        extra["recall_cluster"] = float(hit[:, g >= 0].mean()) if (g >= 0).any() else None
    if t_count > 1:
        step = np.hypot(*np.diff(positions, axis=0).transpose(2, 0, 1))  # (T-1, K)
        hops = np.zeros((t_count, k_count), bool)
        hops[1:] = step > HOP_PX
        extra["n_hops"] = int(hops.sum())
        if hops.any():
            hd = found_d[hops]
            extra["hop_recall"] = float((~np.isnan(hd)).mean())
            extra["hop_loc_error_px"] = float(np.nanmean(hd)) if (~np.isnan(hd)).any() else None
    return extra | {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": _f1(tp, fp, fn),
        "loc_error_px": float(alld.mean()) if alld.size else None,
        "n_true": tp + fn,
        "n_found": tp + fp,
        "n_matched": tp,
        "threshold": thr,
        "threshold_rule": rule,
        "per_frame_f1": per_f1,
    }


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
) -> EvalReport:
    """Score a denoised (T, H, W) stack; see the module docstring for every rule.

    ``truth``: noise-free stack of the same shape (any units). ``positions``: (T, K, 2) true
    atom positions, [x, y] = [column, row] in pixels, same frame count as ``denoised``.
    ``groups``: (K,) cluster ids (-1 = single atom) for separate recalls.
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
        ps, ss, slopes = [], [], []
        structural_similarity = None
        if ssim:
            from skimage.metrics import structural_similarity  # lazy: eval extra only
        for d, t in zip(den, tru):
            a, c = affine_fit(d, t)
            fit = a * d.astype(np.float64) + c
            slopes.append(a)
            ps.append(psnr(fit, t, data_range))
            if structural_similarity is not None:
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
    return rep


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
