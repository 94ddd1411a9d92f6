"""The guard's figures (issue 19): what they cost, and what they say about the shipped models on
sparse and dense simulated movies.

    python -m benchmarks.unexplained [--frames 32] [--size 128] [--passes 200] [--skip-models]

Prints:

1. **Cost** of :func:`livedenoise.analysis.unexplained` per frame at 128², 256² and 512² (p50 /
   p99 over ``--passes`` calls, one thread, wall time; target: well under 2 ms at 128²), and of
   :func:`livedenoise.analysis.estimate_content` on a window of 32 frames (what ``serve``'s guard
   runs once a second).
2. **Unexplained signal** per frame (mean counts and fraction of the atomic counts), in single
   frames and in sums of 16 frames (:func:`livedenoise.analysis.unexplained_sum`), on three
   simulated movies (sparse: ``simulate_movie`` at dose 300; dense: ``simulate_dense`` mos2 and
   particle at their default dose), for the truth as the "denoised" image (what a perfect
   denoiser leaves: the noise floor), a blank output (everything unexplained), and every
   shipped model through :class:`livedenoise.engine.Engine`.
3. **Verdict** of the guard for every shipped model on each movie: against the card's
   ``expects``, or where the card has none (models exported before it), against a stand-in: the
   content of a default simulated movie, what those models were trained on (marked ``*``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from livedenoise.analysis import (
    atom_width,
    compare_content,
    estimate_content,
    expected_content,
    read_noise_of,
    unexplained,
    unexplained_sum,
)
from livedenoise.engine import Engine, default_model_path
from livedenoise.sim import DenseConfig, SimConfig, simulate_dense, simulate_movie

from ._conditions import PIXEL_NM
from ._conditions import SHIPPED as MODELS


def timed(fn, passes: int) -> tuple[float, float]:
    for _ in range(min(20, passes)):
        fn()
    ms = []
    for _ in range(passes):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    p50, p99 = np.percentile(ms, [50, 99])
    return float(p50), float(p99)


def cost(passes: int) -> None:
    print("## cost (ms, one thread)")
    print(f"{'':28s} {'p50':>8s} {'p99':>8s}")
    for size in (128, 256, 512):
        movie = simulate_movie(SimConfig(size=size, frames=1, seed=1))
        raw, truth = movie.noisy[0], movie.truth[0]
        n = passes if size <= 256 else max(20, passes // 8)
        p50, p99 = timed(lambda: unexplained(raw, truth), n)  # noqa: B023 - called at once
        print(f"unexplained {size}x{size:<16d} {p50:8.3f} {p99:8.3f}")
    for size in (128, 256):
        frames = simulate_movie(SimConfig(size=size, frames=32, seed=2)).noisy
        p50, p99 = timed(lambda: estimate_content(frames, PIXEL_NM), max(5, passes // 20))  # noqa: B023
        print(f"estimate_content 32x{size}x{size:<6d} {p50:8.3f} {p99:8.3f}")
    print()


def movies(size: int, frames: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    sparse = simulate_movie(SimConfig(size=size, frames=frames, dose=300.0, seed=40))
    out = {"sparse dose 300": (sparse.noisy, sparse.truth)}
    for kind in ("mos2", "particle"):
        m = simulate_dense(DenseConfig(kind=kind, size=size, frames=frames, seed=41))
        out[f"dense {kind} (dose {m.dose:.0f})"] = (m.noisy, m.truth)
    return out


def denoise(engine: Engine, frames: np.ndarray) -> np.ndarray:
    return engine.run_stack(frames)


WINDOW = 16  # frames summed for the window figure (serve's guard: its --guard-window)


def figures(raw: np.ndarray, denoised: np.ndarray, sigma: float) -> tuple[float, float, float, float]:
    """Mean unexplained counts and fraction per frame: in single frames, and in sums of WINDOW frames."""
    noise = read_noise_of(raw)
    us = [unexplained(r, d, sigma, read_noise=noise) for r, d in zip(raw, denoised)]
    ws = [unexplained_sum(raw[s : s + WINDOW], denoised[s : s + WINDOW], sigma, read_noise=noise)
          for s in range(0, len(raw) - WINDOW + 1, WINDOW)]
    return (float(np.mean([u.counts for u in us])), float(np.mean([u.fraction for u in us])),
            float(np.mean([u.counts for u in ws])), float(np.mean([u.fraction for u in ws])))


def models(size: int, frames: int) -> None:
    data = movies(size, frames)
    seen = {name: estimate_content(raw, PIXEL_NM) for name, (raw, _) in data.items()}
    standin = estimate_content(simulate_movie(SimConfig(size=size, frames=frames, seed=7)).noisy, PIXEL_NM)
    print(f"## unexplained signal per frame: mean counts (fraction of the atomic counts), {frames} frames of {size}²;")
    print(f"## single frames | sums of {WINDOW} frames")
    names = list(data)
    print(f"{'':18s}" + "".join(f"{n:>44s}" for n in names))

    def row(label: str, cells: list[tuple[float, float, float, float]]) -> None:
        print(f"{label:18s}" + "".join(f"{c:>10.1f} ({f:6.1%}) | {w:>10.1f} ({g:6.1%})" for c, f, w, g in cells))

    sigma = atom_width(standin)
    row("truth (floor)", [figures(raw, truth, sigma) for raw, truth in data.values()])
    row("blank output", [figures(raw, np.zeros_like(truth), sigma) for raw, truth in data.values()])
    verdicts: dict[str, list[str]] = {}
    for name in MODELS:
        path = default_model_path().with_name(f"{name}.onnx")
        if not path.is_file():
            continue
        engine = Engine(path, provider="cpu")
        expected, _ = expected_content(engine.card.expects)
        mark = ""
        if expected is None:
            expected, mark = standin, "*"
        row(name + mark, [figures(raw, denoise(engine, raw), atom_width(expected)) for raw, _ in data.values()])
        verdicts[name + mark] = [compare_content(expected, s, pixel_size_nm=PIXEL_NM).state for s in seen.values()]
    print()
    print("## guard verdict (* : the card has no expects; stand-in: a default simulated movie's content)")
    print(f"{'':18s}" + "".join(f"{n:>30s}" for n in names))
    for label, states in verdicts.items():
        print(f"{label:18s}" + "".join(f"{s:>30s}" for s in states))
    print()
    for name, s in seen.items():
        print(f"{name}: {s.describe()}")
    print(f"stand-in (default simulated movie): {standin.describe()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--passes", type=int, default=200)
    parser.add_argument("--skip-models", action="store_true")
    args = parser.parse_args()
    cost(args.passes)
    if not args.skip_models:
        models(args.size, args.frames)


if __name__ == "__main__":
    main()
