"""``benchmarks/quality.py``'s methods and how each row is scored: the baselines (those of
``benchmarks/baselines.py``, BM3D through the GAT, the spatio-temporal one), a model through the
serving engine, and one row of figures per method and condition.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import baselines as bl
from ._bm3d import GAT, bm3d_gat
from ._conditions import Data

Method = Callable[[np.ndarray], np.ndarray]


def then(first: Method, second: Method) -> Method:
    """``second`` applied to ``first``'s output: one method made of two."""

    def run(frames: np.ndarray) -> np.ndarray:
        return second(first(frames))

    return run


@dataclass
class MethodSpec:
    name: str
    params: str
    fn: Method
    kind: str  # "reference" (blank), "single" (one frame at a time), "multi" (several frames)


def baseline_methods(d: Data, calib: int, bm3d_sigmas: list[float], skip: set[str]) -> tuple[list[MethodSpec], dict]:
    info: dict = {}
    multi = {"temporal-3", "temporal-5"}
    out = []
    for name, params, fn in bl.methods_for(d.noisy, d.truth, d.positions, calib):
        if name in skip:
            continue
        out.append(MethodSpec(name, params, fn, "reference" if name == "blank" else "multi" if name in multi else "single"))

    if "bm3d" not in skip:
        gat = GAT(d.sigma2, float(d.noisy.max()) * 1.5 + 10)
        lam = float(d.noisy.mean())  # the typical lambda: the background (atoms cover few pixels)
        line_std = math.sqrt(d.line2) / math.sqrt(lam + 0.375 + d.sigma2)  # row offsets times the GAT's slope
        info["gat"] = {"read2": d.read2, "line2": d.line2, "mean_counts": lam, "line_std": line_std,
                       "stabilised_std_mean": gat.stabilised_std(lam)}
        grid = list(bm3d_sigmas)
        if len(grid) > 1:  # every sigma on the calibration frames once, scored both ways
            idx = bl.calib_idx(d.noisy.shape[0], calib)
            cal = {p: bm3d_gat(p, gat, line_std)(d.noisy[idx]) for p in grid}
            s_psnr = max(grid, key=lambda p: bl.mean_psnr(cal[p], d.truth[idx]))
            s_f1 = max(grid, key=lambda p: bl.mean_f1(cal[p], d.truth[idx], d.positions[idx]))
            how = f"of {', '.join(f'{x:g}' for x in grid)}"
        else:
            s_psnr = s_f1 = grid[0]
            how = "fixed"
        base = "GAT + exact unbiased inverse, white + row-offset PSD, sigma_psd={:g} ({})"
        out.append(MethodSpec("bm3d", base.format(s_psnr, f"best PSNR {how}" if len(grid) > 1 else how),
                              bm3d_gat(s_psnr, gat, line_std), "single"))
        if s_f1 != s_psnr and "bm3d-f1" not in skip:
            out.append(MethodSpec("bm3d-f1", base.format(s_f1, f"best F1 {how}"), bm3d_gat(s_f1, gat, line_std), "single"))

    if "temporal-3+gaussian" not in skip:
        sig = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5]
        t3 = bl.temporal(3)(d.noisy)
        _, s_psnr = bl.best_of(bl.gaussian, sig, t3, d.truth, d.positions, calib)
        _, s_f1 = bl.best_of(bl.gaussian, sig, t3, d.truth, d.positions, t3.shape[0], by="f1")
        out.append(MethodSpec("temporal-3+gaussian", f"causal mean of 3, then sigma={s_psnr:g} px (best PSNR)",
                              then(bl.temporal(3), bl.gaussian(s_psnr)), "multi"))
        if s_f1 != s_psnr:
            out.append(MethodSpec("temporal-3+gaussian-f1", f"causal mean of 3, then sigma={s_f1:g} px (best F1)",
                                  then(bl.temporal(3), bl.gaussian(s_f1)), "multi"))
    return out, info


def score(cond: str, name: str, params: str, kind: str, den: np.ndarray, d: Data, ms: float | None,
          served: bool = False, extra: dict | None = None) -> dict:
    """One row of the report: ``evaluate``'s figures (CSS also as served for a model), then the tracks'."""
    from livedenoise.scoring import evaluate

    rep = evaluate(den, d.truth, d.positions, groups=d.groups)
    row = {
        "condition": cond,
        "method": name,
        "params": params,
        "kind": kind,
        **bl.report_fields(rep),
        "slope": rep.slope,
        "inverted_frames": rep.inverted_frames,
        "css_minmax": rep.css_mean,
        "css": rep.css_mean,
        "css_rule": "minmax",
        "ms_per_frame": ms,
    }
    if served:  # the model's [0, 1] output as the daemon publishes it
        row["css"] = evaluate(den, css_normalise="none", ssim=False).css_mean
        row["css_rule"] = "as served"
    return row | {"tracks": track_row(den, d, rep.threshold)} | (extra or {})


def track_row(den: np.ndarray, d: Data, threshold: float | None) -> dict | None:
    """Hops, evidence and identity switches of the atoms found at the method's best-F1 threshold,
    by :func:`livedenoise.scoring.score_tracks` (the daemon's linker, evidence on the raw frame),
    as ``benchmarks/tracks.py`` scores them; None without a threshold."""
    from livedenoise.analysis import find_atoms
    from livedenoise.scoring import score_tracks

    if threshold is None or not math.isfinite(threshold):
        return None
    found = [find_atoms(f, threshold=threshold).positions for f in den]
    ts = score_tracks(found, d.positions, d.noisy, read_noise=math.sqrt(d.sigma2))
    hs, ef, et = ts.hops, ts.evidence_frame or {}, ts.evidence_track or {}
    return {
        "hop_recall": hs["recall"], "hop_precision": hs["precision"], "hop_placement_px": hs["placement_error_px"],
        "hop_delay_frames": hs["delay_frames"], "hop_recall_placed": hs["recall_placed"],
        "hops_true": hs["n_true"], "hops_detected": hs["n_detected"],
        "evidence_auc_frame": ef.get("auc"), "evidence_auc_track": et.get("auc"),
        "evidence_p_at_90": ef.get("precision_at_recall"), "evidence_p_all": ef.get("precision_all"),
        "n_invented": ef.get("n_invented"), "n_true_found": ef.get("n_true"),
        "id_switches_per_100": ts.switches["per_100"], "id_switches": ts.switches["switches"],
    }


def not_run(cond: str, name: str, kind: str, reason: str) -> dict:
    """The row of a method that could not run here, with the reason in its parameters."""
    return {"condition": cond, "method": name, "params": f"not run: {reason}", "kind": kind, "not_run": True}


def run_model(engine, noisy: np.ndarray, series: int) -> tuple[np.ndarray, float]:
    """The model's output for every frame, one series in order as ``serve`` feeds it, and ms per frame."""
    engine.reset_series(series)
    engine.warm_up(noisy.shape[1:])
    t0 = time.perf_counter()
    den = engine.run_stack(noisy, series=series, restart=True)
    dt = (time.perf_counter() - t0) / len(noisy)
    engine.reset_series(series)
    return den, 1e3 * dt

