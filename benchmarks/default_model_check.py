"""Check a trained model against the best Gaussian filter on a simulated movie with ground truth.

The acceptance check of the trainer issue: on a movie it was *not* trained on, the model must give
a higher PSNR (after the best affine fit to the truth) and a higher atom-detection F1 than a
Gaussian filter with its best sigma (searched on a grid, separately for each metric). Metrics come
from :mod:`livedenoise.scoring` (the rules are documented there); the model runs through the
serving :class:`~livedenoise.engine.Engine` (same normalisation, padding and output mapping as
``serve``).

    python -m benchmarks.default_model_check --model livedenoise/models/default.onnx --seed 2

It simulates the test movie itself (``livedenoise.sim``; default 48 frames of 128 x 128 at
dose 300, seed 2: the default model was trained on seed 1).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


def gaussian_reference(noisy: np.ndarray, truth: np.ndarray, positions) -> dict:
    """The Gaussian filter's scores (:func:`livedenoise.scoring.evaluate`) for each sigma of ``SIGMAS``."""
    from scipy.ndimage import gaussian_filter

    from livedenoise.scoring import evaluate

    out = {}
    for s in SIGMAS:
        filt = np.stack([gaussian_filter(f.astype(np.float64), s) for f in noisy]).astype(np.float32)
        out[s] = evaluate(filt, truth, positions, ssim=False)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="ONNX model (default: the shipped default model)")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--dose", type=float, default=300.0)
    ap.add_argument("--gradient", type=float, default=0.0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    from scipy.ndimage import gaussian_filter

    from livedenoise.engine import Engine, default_model_path
    from livedenoise.scoring import evaluate
    from livedenoise.sim import SimConfig, simulate_movie

    cfg = SimConfig(frames=args.frames, size=args.size, dose=args.dose, gradient=args.gradient, seed=args.seed)
    movie = simulate_movie(cfg)
    noisy, truth, pos = movie.noisy, movie.truth, movie.positions

    engine = Engine(args.model or default_model_path(), provider="cpu")
    t0 = time.perf_counter()
    den = engine.run_stack(noisy)
    per_frame_ms = 1e3 * (time.perf_counter() - t0) / len(noisy)
    model = evaluate(den, truth, pos, css_normalise="none", ssim=False, groups=movie.groups)

    raw = evaluate(noisy, truth, pos, ssim=False)
    gauss = gaussian_reference(noisy, truth, pos)
    best_psnr_s = max(gauss, key=lambda s: gauss[s].psnr)
    best_f1_s = max(gauss, key=lambda s: gauss[s].f1)
    k = engine.card.input_frames
    spatio = {}
    if k > 1:
        # A k-frame model sees k frames: compare it also with the classical filter on the same
        # causal window (mean of the current and k - 1 previous frames, then a Gaussian).
        from livedenoise.engine import causal_windows

        window_mean = causal_windows(noisy.astype(np.float64), k).mean(axis=1)
        for s in SIGMAS:
            filt = np.stack([gaussian_filter(f, s) for f in window_mean]).astype(np.float32)
            spatio[s] = evaluate(filt, truth, pos, ssim=False)

    rows = [("raw", raw.psnr, raw.f1, raw.css_mean)]
    rows += [(f"gaussian sigma={s}", r.psnr, r.f1, r.css_mean) for s, r in gauss.items()]
    rows += [(f"temporal-{k} mean + gaussian sigma={s}", r.psnr, r.f1, r.css_mean) for s, r in spatio.items()]
    rows += [(f"model {engine.path.name} ({engine.card.preset})", model.psnr, model.f1, model.css_mean)]
    print(f"test movie: {cfg.frames} frames {cfg.size}x{cfg.size}, dose {cfg.dose}, gradient {cfg.gradient}, seed {cfg.seed}")
    print(f"{'method':40s} {'PSNR dB':>8s} {'F1':>6s} {'CSS':>6s}")
    for name, p, f, c in rows:
        print(f"{name:40s} {p:8.2f} {f:6.3f} {c:6.3f}")
    out = {
        "model": str(engine.path),
        "model_input_frames": k,
        "model_hop_recall": model.hop_recall,
        "model_loc_error_px": model.loc_error_px,
        "model_psnr": model.psnr,
        "model_f1": model.f1,
        "model_precision": model.precision,
        "model_recall": model.recall,
        "model_css": model.css_mean,
        "model_slope": model.slope,
        "model_ms_per_frame": per_frame_ms,
        "gauss_best_psnr": gauss[best_psnr_s].psnr,
        "gauss_best_psnr_sigma": best_psnr_s,
        "gauss_best_f1": gauss[best_f1_s].f1,
        "gauss_best_f1_sigma": best_f1_s,
        "raw_psnr": raw.psnr,
        "raw_f1": raw.f1,
    }
    if spatio:
        out["temporal_gauss_best_psnr"] = max(r.psnr for r in spatio.values())
        out["temporal_gauss_best_f1"] = max(r.f1 for r in spatio.values())
        print(
            f"best temporal-{k} mean + Gaussian: PSNR {out['temporal_gauss_best_psnr']:.2f} dB, "
            f"F1 {out['temporal_gauss_best_f1']:.3f} (the same {k} frames the model sees)"
        )
    beats = model.psnr > out["gauss_best_psnr"] and model.f1 > out["gauss_best_f1"]
    out["beats_gaussian"] = bool(beats)
    print(
        f"best Gaussian: PSNR {out['gauss_best_psnr']:.2f} dB (sigma {best_psnr_s}), F1 {out['gauss_best_f1']:.3f} "
        f"(sigma {best_f1_s}); model: PSNR {model.psnr:.2f} dB, F1 {model.f1:.3f} -> "
        + ("BEATS the best Gaussian filter on both" if beats else "does NOT beat the best Gaussian filter on both")
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
