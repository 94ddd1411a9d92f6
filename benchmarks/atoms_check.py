"""``find_atoms`` against another revision's on the movies of ``benchmarks/quality.py``: the same
atoms, the same F1, and what each costs per frame.

    python -m benchmarks.atoms_check [--reference main] [--conditions dose300,dose100,dose300-grad,dev-D]
                                     [--frames 48] [--passes 5]

The reference is ``livedenoise/analysis/_atoms.py`` as it is at ``--reference`` (``git show``),
loaded beside this tree's. Per condition (quality.py's movies, seeds and dev-D) and method (the
shipped models run as ``serve`` runs them, the raw frames, a Gaussian of 1 px):

* **F1**: ``evaluate``'s atom detection scores (each method's best threshold, chosen on spread
  frames, then all frames scored: the F1 of ``docs/quality.md``) with each ``find_atoms``;
* **atoms**: at every frame, with ``serve``'s threshold (0.4 above the median on the models' [0, 1]
  output) and with every peak (``threshold=-inf``, what the scoring starts from), the positions,
  intensities and heights of the two compared bit for bit;
* **time**: each ``find_atoms`` per frame of the models' output at 0.4, p50 / p99 over ``--passes``
  passes, one thread, the two alternating frame by frame.

Prints one line per condition and method and the largest F1 difference (the target: within 0.005).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ._conditions import DAEMON_THRESHOLD, DEFAULT, DEV_D, ROOT, conditions, load_condition
from ._conditions import SHIPPED as MODELS
from ._quality_methods import run_model


def reference_module(rev: str):
    """``livedenoise/analysis/_atoms.py`` at ``rev``, as a module of the package (relative imports work)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:livedenoise/analysis/_atoms.py"],
        capture_output=True, text=True, check=True,
    ).stdout
    name = "livedenoise.analysis._atoms_reference"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "livedenoise.analysis"
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:livedenoise/analysis/_atoms.py", "exec"), module.__dict__)
    return module


def same_atoms(a, b) -> bool:
    fields = ("positions", "intensities", "heights")
    return all(np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True) for f in fields) and (
        np.float64(a.background).tobytes() == np.float64(b.background).tobytes()
    )


def f1_with(find, frames: np.ndarray, positions: np.ndarray) -> dict:
    """``detection_scores`` (quality.py's atom F1) with ``find`` as the finder."""
    from livedenoise.scoring import _detection

    kept = _detection.find_atoms
    _detection.find_atoms = find
    try:
        return _detection.detection_scores(frames, positions)
    finally:
        _detection.find_atoms = kept


def methods(d, engines: dict) -> list[tuple[str, np.ndarray, bool]]:
    """(name, frames, the model's [0, 1] output) per method."""
    from scipy.ndimage import gaussian_filter

    out = [("raw", d.noisy.astype(np.float32), False),
           ("gaussian-1px", np.stack([gaussian_filter(f.astype(np.float64), 1.0) for f in d.noisy]).astype(np.float32), False)]
    for i, (name, engine) in enumerate(engines.items()):
        den, _ = run_model(engine, d.noisy, series=100 + i)
        out.append((f"n2a-{name}", den, True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", default="main", help="git revision of the find_atoms to compare with")
    ap.add_argument("--conditions", default=DEFAULT)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--passes", type=int, default=5, help="timing passes over each model's frames")
    ap.add_argument("--dev-d", type=Path, default=DEV_D)
    args = ap.parse_args()

    from livedenoise.analysis import find_atoms
    from livedenoise.engine import Engine

    ref = reference_module(args.reference)
    engines = {m: Engine(ROOT / "livedenoise" / "models" / f"{m}.onnx", provider="cpu") for m in MODELS}
    allc = conditions()
    worst, all_same, t_new, t_ref = 0.0, True, [], []
    print(f"find_atoms here against {args.reference}'s; F1 as docs/quality.md scores it", flush=True)
    for key in [k.strip() for k in args.conditions.split(",") if k.strip()]:
        c = allc[key]
        if c.dev_d and not (args.dev_d / "D_noisy.tif").is_file():
            print(f"{key}: dev-D not found at {args.dev_d}, skipped")
            continue
        d = load_condition(c, args.frames, 128, args.dev_d)
        for name, frames, served in methods(d, engines):
            new = f1_with(find_atoms, frames, d.positions)
            old = f1_with(ref.find_atoms, frames, d.positions)
            thresholds = (DAEMON_THRESHOLD, -np.inf) if served else (-np.inf,)
            same = all(same_atoms(find_atoms(f, threshold=t), ref.find_atoms(f, threshold=t))
                       for f in frames for t in thresholds)
            all_same &= same
            worst = max(worst, abs(new["f1"] - old["f1"]))
            print(f"{key:13s} {name:13s} F1 {new['f1']:.4f} (reference {old['f1']:.4f}, threshold {new['threshold']:.4g}"
                  f" / {old['threshold']:.4g}); atoms {'identical' if same else 'DIFFER'}", flush=True)
            if served:
                for _ in range(args.passes):
                    for f in frames:
                        t0 = time.perf_counter()
                        find_atoms(f, threshold=DAEMON_THRESHOLD)
                        t1 = time.perf_counter()
                        ref.find_atoms(f, threshold=DAEMON_THRESHOLD)
                        t_new.append(t1 - t0)
                        t_ref.append(time.perf_counter() - t1)
    q = [50, 99]
    new_ms, ref_ms = (np.percentile(np.array(t) * 1e3, q) for t in (t_new, t_ref))
    print(f"largest F1 difference {worst:.4f} (target <= 0.005); atoms identical everywhere: {all_same}")
    print(f"find_atoms at threshold {DAEMON_THRESHOLD} on the models' output, {len(t_new)} frames: here p50 {new_ms[0]:.3f}"
          f" / p99 {new_ms[1]:.3f} ms, {args.reference} p50 {ref_ms[0]:.3f} / p99 {ref_ms[1]:.3f} ms"
          f" ({ref_ms[0] / new_ms[0]:.1f}x at p50)")


if __name__ == "__main__":
    main()
