"""Statistics of the project's simulator next to the physics-simulated dev-D movie.

    python -m benchmarks.simstats [--dev-d ../shared/data/dev-D] [--seed 0]

Prints, for both movies at 300 e-/px: mean counts, background (median truth and counts far from
atoms), carbon texture (relative std, autocorrelation at 1 and 2 px), atom peak above background
(beam fraction and counts), the noise (variance of counts - expected, row-offset spread), and the
motion of single atoms. The numbers are quoted in docs/simulation.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ._conditions import DEV_D


def stats(noisy: np.ndarray, truth: np.ndarray, pos: np.ndarray, groups: np.ndarray, dose: float) -> dict:
    t_count, h, w = truth.shape
    yy, xx = np.mgrid[:h, :w]
    far = np.ones_like(truth, bool)
    for t in range(t_count):
        d = np.min(np.hypot(xx[None] - pos[t, :, 0, None, None], yy[None] - pos[t, :, 1, None, None]), axis=0)
        far[t] = d > 6
    bg = truth[far]
    t0 = truth[0]
    b0 = np.where(far[0], t0 - truth[0][far[0]].mean(), 0.0)
    ac = np.real(np.fft.ifft2(np.abs(np.fft.fft2(b0)) ** 2))
    ac /= ac[0, 0]
    # peak of isolated single atoms: truth at the nearest pixel of isolated singles, minus bg
    peaks = []
    for t in range(t_count):
        for k in np.flatnonzero(groups == -1):
            others = np.delete(pos[t], k, axis=0)
            if np.min(np.hypot(*(others - pos[t, k]).T)) < 10:
                continue
            j, i = np.rint(pos[t, k]).astype(int)
            peaks.append(truth[t, i - 2 : i + 3, j - 2 : j + 3].max())
    peak = float(np.mean(peaks)) - float(np.median(bg))
    pedestal = float(noisy[far].mean() - dose * bg.mean())
    resid = noisy - (dose * truth + 0.5)
    singles = pos[:, groups == -1]
    step = np.hypot(*np.diff(singles, axis=0).transpose(2, 0, 1))
    slope, offset = np.polyfit(truth.ravel(), noisy.ravel(), 1)
    return {
        "mean counts": float(noisy.mean()),
        "fit noisy = a*truth + b: a": float(slope),
        "fit: b (pedestal)": float(offset),
        "background truth (median, far from atoms)": float(np.median(bg)),
        "background counts (median, far from atoms)": float(np.median(noisy[far])),
        "carbon rel. std": float(bg.std() / bg.mean()),
        "carbon autocorr 1 px": float(ac[0, 1]),
        "carbon autocorr 2 px": float(ac[0, 2]),
        "carbon 1% / 99% / mean": f"{np.percentile(bg, 1):.2e} / {np.percentile(bg, 99):.2e} / {bg.mean():.2e}",
        "single-atom peak above bg (beam fraction)": peak,
        "single-atom peak above bg (counts)": peak * dose,
        "truth max": float(truth.max()),
        "residual variance (counts^2)": float(resid.var()),
        "row-mean residual std": float(resid.mean(axis=2).std()),
        "pedestal (mean counts - dose x mean truth, far from atoms)": pedestal,
        "atoms per frame": int(pos.shape[1]),
        "single-atom median step (px)": float(np.median(step)),
        "single-atom steps > 2.5 px": int((step > 2.5).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dev-d", default=str(DEV_D))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from livedenoise.sim import SimConfig, simulate_movie

    movie = simulate_movie(SimConfig(seed=args.seed))
    ours = stats(movie.noisy, movie.truth, movie.positions.astype(float), movie.groups, 300.0)
    rows = [("quantity", "livedenoise.sim", "dev-D (abTEM)")]
    dev = None
    dpath = Path(args.dev_d)
    if (dpath / "D_noisy.tif").is_file():
        import tifffile

        meta = json.loads((dpath / "D_positions.json").read_text())
        dev = stats(
            tifffile.imread(dpath / "D_noisy.tif"),
            tifffile.imread(dpath / "D_truth.tif"),
            np.asarray(meta["frames"], float),
            np.asarray(meta["group_id"]),
            300.0,
        )
    for k, v in ours.items():
        d = dev[k] if dev else "-"
        rows.append((k, _f(v), _f(d)))
    wk = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"| {r[0]:<{wk}} | {r[1]:>22} | {r[2]:>22} |")


def _f(v) -> str:
    if isinstance(v, float):
        return f"{v:.3e}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}"
    return str(v)


if __name__ == "__main__":
    main()
