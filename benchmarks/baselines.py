"""Classical baselines against ground truth: what a Noise2Atom preset has to beat.

    python -m benchmarks.baselines [--dose 300] [--gradient 0] [--seed 100] [--frames 48]
                                   [--hop-prob 0.02] [--dev-d ../shared/data/dev-D] [--json out.json]

Two movies: (a) one from the project's simulator (``livedenoise.sim``, 128 x 128) and
(b) dev-D, the abTEM (multislice) movie, when its folder exists. Each method is a function
``frames (T, H, W) -> denoised (T, H, W)``:

* ``blank``: a constant frame, the floor (perfect CSS, PSNR of the truth's own variance);
* ``raw``: the noisy counts;
* ``gaussian``: Gaussian filter; sigma chosen from a grid by PSNR against the truth;
* ``median``: median filter; size 3 or 5, chosen the same way;
* ``nlm``: non-local means (scikit-image, fast mode, patch 5, distance 6); h chosen the same way,
  as a multiple of the noise std estimated from horizontal pixel differences (MAD);
* ``temporal-3``, ``temporal-5``: causal mean of the current and the 2 / 4 previous frames
  (no future frames: fit for live use; fewer frames at the start).

Parameters are chosen on ``--calib`` frames spread over the movie (default 4) by mean PSNR after
the affine fit (the Gaussian also by atom F1 on the whole movie, like the detection threshold:
``gaussian-f1``, shown when its sigma differs), then applied to the whole movie: every method
gets its best setting, with the truth (an oracle no live user has; the same for all methods).
Every movie is scored by :func:`livedenoise.scoring.evaluate`: PSNR and SSIM after the
per-frame affine fit, atom F1 (3 x 3 peaks, 1.5 px matching radius, per-method threshold
maximising F1 over the movie), mean localisation error, recall of atoms in the frame where they landed after a hop (their
number in brackets), CSS. Time per frame: wall time of the method on the whole movie / T,
single process on this machine's CPU.

Left for ``benchmarks/quality.py`` (issue 5): BM3D with an Anscombe transform, Noise2Void
(careamics), the trained presets, the figure and docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from livedenoise.io import read_movie
from livedenoise.scoring import evaluate, fit_errors, load_positions

from ._conditions import DEV_D

Method = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------- the methods


def raw(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32)


def gaussian(sigma: float) -> Method:
    def run(frames: np.ndarray) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        return np.stack([gaussian_filter(f.astype(np.float32), sigma, mode="reflect") for f in frames])

    return run


def median(size: int) -> Method:
    def run(frames: np.ndarray) -> np.ndarray:
        from scipy.ndimage import median_filter

        return np.stack([median_filter(f.astype(np.float32), size, mode="reflect") for f in frames])

    return run


def noise_std(frame: np.ndarray) -> float:
    """Noise std from horizontal differences of neighbouring pixels (MAD, robust to atoms)."""
    d = np.diff(frame.astype(np.float64), axis=1)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))


def nlm(h_factor: float) -> Method:
    def run(frames: np.ndarray) -> np.ndarray:
        from skimage.restoration import denoise_nl_means

        out = []
        for f in frames:
            f64 = f.astype(np.float64)
            s = noise_std(f64)
            out.append(
                denoise_nl_means(f64, h=h_factor * s, sigma=s, patch_size=5, patch_distance=6, fast_mode=True)
            )
        return np.stack(out).astype(np.float32)

    return run


def temporal(n: int) -> Method:
    """Causal running mean of the current frame and the ``n - 1`` previous ones."""

    def run(frames: np.ndarray) -> np.ndarray:
        f = frames.astype(np.float64)
        c = np.cumsum(f, axis=0)
        out = np.empty_like(f)
        for t in range(f.shape[0]):
            lo = t - n
            out[t] = (c[t] - (c[lo] if lo >= 0 else 0.0)) / (t - max(lo, -1))
        return out.astype(np.float32)

    return run


# ---------------------------------------------------------------------------- parameter choice


def mean_psnr(den: np.ndarray, truth: np.ndarray) -> float:
    return float(fit_errors(den, truth).psnr(float(truth.max() - truth.min())).mean())


def mean_f1(den: np.ndarray, truth: np.ndarray, pos: np.ndarray) -> float:
    return float(evaluate(den, positions=pos, ssim=False).f1)


def calib_idx(t_count: int, calib: int) -> np.ndarray:
    """Calibration frames spread over the movie (temporal filters warm up at the start)."""
    return np.unique(np.linspace(0, t_count - 1, min(calib, t_count)).round().astype(int))


def best_of(factory, grid, noisy, truth, pos, calib: int, by: str = "psnr"):
    """The parameter of ``grid`` with the best PSNR (or F1) on the calibration frames."""
    idx = calib_idx(noisy.shape[0], calib)
    scores = []
    for p in grid:
        den = factory(p)(noisy)[idx] if by == "f1" else factory(p)(noisy[idx])
        score = mean_f1(den, truth[idx], pos[idx]) if by == "f1" else mean_psnr(den, truth[idx])
        scores.append((score, p))
    best = max(scores)
    return factory(best[1]), best[1]


def blank(frames: np.ndarray) -> np.ndarray:
    """Reference floor: every frame the same constant (a perfect CSS, nothing else)."""
    return np.zeros_like(frames, dtype=np.float32)


def methods_for(noisy: np.ndarray, truth: np.ndarray, pos: np.ndarray, calib: int) -> list[tuple[str, str, Method]]:
    sig = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5]
    g, g_sigma = best_of(gaussian, sig, noisy, truth, pos, calib)
    gf, gf_sigma = best_of(gaussian, sig, noisy, truth, pos, noisy.shape[0], by="f1")
    m, m_size = best_of(lambda s: median(int(s)), [3, 5], noisy, truth, pos, calib)
    n, n_h = best_of(nlm, [0.4, 0.6, 0.8, 1.0, 1.3], noisy, truth, pos, calib)
    out = [
        ("blank", "constant frame", blank),
        ("raw", "", raw),
        ("gaussian", f"sigma={g_sigma:g} px (best PSNR)", g),
    ]
    if gf_sigma != g_sigma:
        out.append(("gaussian-f1", f"sigma={gf_sigma:g} px (best F1)", gf))
    return [*out, ("median", f"size={int(m_size)}", m), ("nlm", f"h={n_h:g} x noise std", n), ("temporal-3", "causal mean of 3", temporal(3)), ("temporal-5", "causal mean of 5", temporal(5))]


# ---------------------------------------------------------------------------- the table


#: The :class:`~livedenoise.scoring.EvalReport` scores a benchmark row reports (here and in quality.py).
REPORT_FIELDS = (
    "psnr", "ssim", "f1", "precision", "recall", "loc_error_px",
    "recall_single", "recall_cluster", "n_hops", "hop_recall", "hop_loc_error_px",
)


def report_fields(rep) -> dict:
    return {k: getattr(rep, k) for k in REPORT_FIELDS}


def run_movie(
    name: str, noisy: np.ndarray, truth: np.ndarray, pos: np.ndarray, groups: np.ndarray | None, calib: int
) -> list[dict]:
    rows = []
    for method, params, fn in methods_for(noisy, truth, pos, calib):
        t0 = time.perf_counter()
        den = fn(noisy)
        dt = (time.perf_counter() - t0) / noisy.shape[0]
        rep = evaluate(den, truth, pos, groups=groups)
        rows.append(
            {
                "movie": name,
                "method": method,
                "params": params,
                **report_fields(rep),
                "css": rep.css_mean,
                "ms_per_frame": 1e3 * dt,
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        "| movie | method | params | PSNR dB | SSIM | F1 | precision | recall | loc. err px"
        " | hop recall | CSS | ms/frame |"
    )
    print(head)
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def f(v, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in rows:
        hop = f(r["hop_recall"], ".2f") + (f" ({r['n_hops']})" if r["n_hops"] else "")
        print(
            f"| {r['movie']} | {r['method']} | {r['params']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['f1']:.3f}"
            f" | {r['precision']:.3f} | {r['recall']:.3f} | {f(r['loc_error_px'], '.2f')} | {hop}"
            f" | {r['css']:.3f} | {r['ms_per_frame']:.2f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description="Classical denoising baselines against ground truth.")
    ap.add_argument("--dose", type=float, default=300.0, help="e-/px of the simulated movie")
    ap.add_argument("--gradient", type=float, default=0.0, help="background thickness gradient")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--hop-prob", type=float, default=0.02, help="hop probability per single atom and frame")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--calib", type=int, default=4, help="frames used to choose each method's parameter")
    ap.add_argument("--dev-d", default=str(DEV_D))
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()

    from livedenoise.sim import SimConfig, simulate_movie

    t_start = time.perf_counter()
    cfg = SimConfig(
        size=args.size, frames=args.frames, dose=args.dose, gradient=args.gradient, seed=args.seed,
        hop_prob=args.hop_prob,
    )
    movie = simulate_movie(cfg)
    label = f"sim dose {args.dose:g}" + (f" grad {args.gradient:g}" if args.gradient else "")
    rows = run_movie(label, movie.noisy, movie.truth, movie.positions, movie.groups, args.calib)
    dev = Path(args.dev_d)
    if (dev / "D_noisy.tif").is_file():
        rows += run_movie(
            "dev-D (abTEM) dose 300",
            read_movie(dev / "D_noisy.tif").astype("float32"),
            read_movie(dev / "D_truth.tif").astype("float32"),
            *load_positions(dev / "D_positions.json"),
            args.calib,
        )
    else:
        print(f"(dev-D not found at {dev}: skipped)")
    print_table(rows)
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
