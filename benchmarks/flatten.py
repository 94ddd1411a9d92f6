"""Failure case 2 (background thickness gradient): false atoms in the thick region, with and without ``--flatten``.

The target (issue 5, the paper's failure case 2): with a background thickness gradient, the false
atoms of a ``--flatten`` model in the thick region stay at the level of the thin region.

    python -m benchmarks.flatten                                    # simulate, train both models, score
    python -m benchmarks.flatten --flatten 12 24                    # ... one flatten model per sigma
    python -m benchmarks.flatten --model-plain plain.onnx --model-flatten flat12.onnx   # score existing models
    python -m benchmarks.flatten --workdir /tmp/flatten_work --json /tmp/flatten_work/result.json
    python -m benchmarks.flatten --train-frames 8 --train-extra "--steps 2 --distil-steps 2"   # smoke test

What it does:

1. **Movies** (``livedenoise simulate movie``, written under ``--workdir``, a fresh temporary folder
   by default, never the repository): a training movie (120 frames of 128 x 128, dose 300 e-/px,
   ``--gradient 4``: the carbon is 5 x thicker at the right edge than at the left, seed 1) and a
   held-out test movie (48 frames, seed 5, same gradient).
2. **Models**, trained with the CLI on the training movie, the default ``tiny`` recipe (stage 1 and,
   where the preset has it, the distillation stage): ``livedenoise train --frames train.tif --out
   plain.onnx --preset tiny --seed 0`` and the same with ``--flatten SIGMA`` for each ``--flatten``
   value (default 12 px: far wider than an atom, sigma 0.9 px, about a 12-atom cluster's radius,
   7-14 px, and far narrower than the gradient, linear over the whole 128 px frame; a Gaussian
   low-pass keeps a linear ramp exactly away from the edges, so sigma mostly sets how much atom
   signal and edge bias are removed with it; docs/training.md suggests 20-30 px). Trainings run as parallel subprocesses (``--jobs``) under ``nice
   -n 15`` with one torch/OpenMP thread each (``--nice``, ``--threads``); wall times are recorded.
   ``--model-plain`` / ``--model-flatten`` skip the training and score the given files.
3. **Scoring** on the test movie of: raw frames, the best Gaussian filter (sigma from a grid, by
   atom F1 on the test movie, as ``benchmarks/default_model_check.py``), the same Gaussian after the
   model's flattening (``modelcard.gaussian_lowpass``: the classical filter given the same remedy),
   the plain model and each flatten model (through :class:`livedenoise.engine.Engine`, as
   ``serve`` runs them). Each method's detection threshold is ``livedenoise.scoring``'s own
   ``auto`` rule (the one height above the frame median that maximises pooled F1 over the whole
   movie and frame, :func:`~livedenoise.scoring.detection_scores`); peaks are then found with
   :func:`livedenoise.analysis.find_atoms` at that threshold and matched to the true atoms with
   :func:`livedenoise.scoring.match_points` (1.5 px), which is exactly the loop of
   ``detection_scores`` (the totals are checked against it).
4. **Regions**: each frame is cut into ``--regions`` vertical bands along the gradient (default 3:
   left third = thin, right third = thick). A false positive (a detection matched to no true atom)
   belongs to the band of its x; a true atom to the band of its true x. Reported per band: false
   positives per frame per 100 x 100 px^2, and the recall of the true atoms there.

**Target**: for each flatten model, FP(thick) <= FP(thin) + ``--tolerance`` (default 0.5 false
atoms per frame per 100 x 100 px^2: about the Poisson counting error of such a difference on 48
frames at a few false atoms per 100 x 100 px^2, 0.4 at 2). The "±" printed are Poisson counting
errors of the pooled counts; frames of one movie share their background and atoms, so the true
uncertainty is larger.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ._proc import machine, run_jobs

SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)  # the Gaussian filter's grid (default_model_check.py)
AREA_UNIT = 100.0 * 100.0  # px^2


# ---------------------------------------------------------------------------- data and models


def simulate(workdir: Path, name: str, frames: int, size: int, dose: float, gradient: float, seed: int) -> dict:
    """``livedenoise simulate movie`` into ``workdir``: the noisy TIFF, its truth and positions."""
    paths = {k: workdir / f"{name}{suffix}" for k, suffix in (("noisy", ".tif"), ("truth", "_truth.tif"), ("positions", "_atoms.json"))}
    cmd = [sys.executable, "-m", "livedenoise", "simulate", "movie", "--out", str(paths["noisy"]),
           "--truth", str(paths["truth"]), "--positions", str(paths["positions"]), "--frames", str(frames),
           "--size", str(size), "--dose", str(dose), "--gradient", str(gradient), "--seed", str(seed)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return paths


def train_models(jobs: list[tuple[str, list[str], Path]], parallel: int, nice: int, threads: int) -> dict[str, dict]:
    """Run ``livedenoise train`` commands (``(name, extra args, out)``) at most ``parallel`` at once
    (:func:`_proc.run_jobs`); returns per name the command, wall time, exit code and log file."""
    runs = run_jobs(
        [(name, [sys.executable, "-m", "livedenoise", "train", "--out", str(out), *extra], out.with_suffix(".train.log"))
         for name, extra, out in jobs],
        parallel, nice=nice, threads=threads,
    )
    return {
        name: {"command": shlex.join(["livedenoise", "train", "--out", str(out), *extra]), "log": str(out.with_suffix(".train.log"))}
        | runs[name]
        for name, extra, out in jobs
    }


def run_model(path: Path, noisy: np.ndarray) -> tuple[np.ndarray, object]:
    """The model through the serving engine (CPU), as ``serve`` runs it; returns (output, card)."""
    from livedenoise.engine import Engine

    engine = Engine(path, provider="cpu")
    return engine.run_stack(noisy), engine.card


# ---------------------------------------------------------------------------- regional scores


def region_of(x: np.ndarray, width: int, regions: int) -> np.ndarray:
    """Band index (0 = left = thin) of x coordinates, bands of equal width along x."""
    return np.clip(np.floor(np.asarray(x, np.float64) * regions / width).astype(np.int64), 0, regions - 1)


def regional_scores(frames: np.ndarray, positions: np.ndarray, regions: int) -> dict:
    """False positives per frame per 100 x 100 px^2 and recall, per vertical band.

    The threshold is ``detection_scores``'s ``auto`` threshold for the whole movie; detections and
    matches come from ``find_atoms`` and ``match_points`` exactly as in ``detection_scores``.
    """
    from livedenoise.analysis import find_atoms
    from livedenoise.scoring import MATCH_RADIUS, detection_scores, match_points

    t_count, h, w = frames.shape
    det = detection_scores(frames, positions)
    thr = det["threshold"]
    fp = np.zeros((t_count, regions), np.int64)
    tp = np.zeros((t_count, regions), np.int64)
    n_true = np.zeros((t_count, regions), np.int64)
    for t in range(t_count):
        found = find_atoms(frames[t], threshold=thr).positions
        txy = np.asarray(positions[t], np.float64)
        ti, fi, _ = match_points(txy, found, MATCH_RADIUS)
        false = np.ones(found.shape[0], bool)
        false[fi] = False
        fp[t] = np.bincount(region_of(found[false, 0], w, regions), minlength=regions)
        tp[t] = np.bincount(region_of(txy[ti, 0], w, regions), minlength=regions)
        n_true[t] = np.bincount(region_of(txy[:, 0], w, regions), minlength=regions)
    # The same loop as detection_scores: the totals must agree with its pooled counts.
    assert int(tp.sum()) == det["n_matched"] and int(tp.sum() + fp.sum()) == det["n_found"], (det, tp.sum(), fp.sum())
    edges = np.linspace(0, w, regions + 1)
    area = (edges[1:] - edges[:-1]) * h / AREA_UNIT  # per band, in units of 100 x 100 px^2
    fp_tot = fp.sum(axis=0)
    return {
        "threshold": thr,
        "f1": det["f1"],
        "precision": det["precision"],
        "recall": det["recall"],
        "fp_count": fp_tot.tolist(),
        "fp_per_area": (fp_tot / (t_count * area)).tolist(),  # per frame per 100 x 100 px^2
        "fp_per_area_err": (np.sqrt(fp_tot) / (t_count * area)).tolist(),  # Poisson counting error
        "true_count": n_true.sum(axis=0).tolist(),
        "recall_region": [float(a / b) if b else None for a, b in zip(tp.sum(axis=0), n_true.sum(axis=0))],
        "band_width_px": float(edges[1] - edges[0]),
    }


# ---------------------------------------------------------------------------- report


def band_names(regions: int) -> list[str]:
    if regions == 3:
        return ["thin (left)", "middle", "thick (right)"]
    return [f"band {k + 1}/{regions}" + (" (thin)" if k == 0 else " (thick)" if k == regions - 1 else "") for k in range(regions)]


def markdown_table(rows: list[dict], regions: int) -> list[str]:
    names = band_names(regions)
    head = "| method | F1 (P / R) | " + " | ".join(f"FP/100² {n}" for n in names) + " | " + " | ".join(f"recall {n}" for n in names) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * regions)]
    for r in rows:
        s = r["scores"]
        fps = " | ".join(f"{v:.2f} ± {e:.2f}" for v, e in zip(s["fp_per_area"], s["fp_per_area_err"]))
        rec = " | ".join("-" if v is None else f"{v:.2f}" for v in s["recall_region"])
        lines.append(f"| {r['name']} | {s['f1']:.3f} ({s['precision']:.2f} / {s['recall']:.2f}) | {fps} | {rec} |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None, help="movies, models and logs (default: a new temporary folder)")
    ap.add_argument("--model-plain", type=Path, default=None, help="existing model trained without --flatten (skips its training)")
    ap.add_argument("--model-flatten", type=Path, nargs="+", default=None, help="existing model(s) trained with --flatten (skip those trainings)")
    ap.add_argument("--flatten", type=float, nargs="+", default=[12.0], help="SIGMA (px) of each flatten model to train (default 12)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--model-seed", type=int, default=0, help="livedenoise train --seed")
    ap.add_argument("--train-extra", default="", help='more livedenoise train options for every model, e.g. "--steps 2 --distil-steps 2" (a smoke test)')
    ap.add_argument("--gradient", type=float, default=4.0)
    ap.add_argument("--dose", type=float, default=300.0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--train-frames", type=int, default=120)
    ap.add_argument("--train-seed", type=int, default=1)
    ap.add_argument("--test-frames", type=int, default=48)
    ap.add_argument("--test-seed", type=int, default=5)
    ap.add_argument("--regions", type=int, default=3, help="vertical bands along the gradient (first = thin, last = thick)")
    ap.add_argument("--tolerance", type=float, default=0.5, help="false atoms per frame per 100x100 px^2 the thick band may exceed the thin one by")
    ap.add_argument("--jobs", type=int, default=2, help="trainings run at once")
    ap.add_argument("--nice", type=int, default=15, help="niceness of the trainings (0: not niced)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the trainings")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.regions < 2:
        ap.error("--regions must be at least 2")

    from scipy.ndimage import gaussian_filter

    from livedenoise.engine import gaussian_lowpass
    from livedenoise.io import read_movie
    from livedenoise.scoring import load_positions

    t_start = time.monotonic()
    load_start = os.getloadavg()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="livedenoise-flatten-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {workdir}")
    train = simulate(workdir, "train", args.train_frames, args.size, args.dose, args.gradient, args.train_seed)
    test = simulate(workdir, "test", args.test_frames, args.size, args.dose, args.gradient, args.test_seed)

    base = ["--frames", str(train["noisy"]), "--preset", args.preset, "--seed", str(args.model_seed), *shlex.split(args.train_extra)]
    jobs = []
    models: list[tuple[str, Path]] = []
    if args.model_plain is None:
        out = workdir / "plain.onnx"
        jobs.append(("plain", base, out))
        models.append(("plain", out))
    else:
        models.append(("plain", args.model_plain))
    if args.model_flatten is None:
        for s in args.flatten:
            out = workdir / f"flatten{s:g}.onnx"
            jobs.append((f"flatten {s:g}", [*base, "--flatten", f"{s:g}"], out))
            models.append((f"flatten {s:g}", out))
    else:
        models += [(f"flatten ({p.name})", p) for p in args.model_flatten]
    trainings = train_models(jobs, args.jobs, args.nice, args.threads) if jobs else {}
    failed = [n for n, info in trainings.items() if info["rc"] != 0]
    if failed:
        raise SystemExit(f"training failed for {', '.join(failed)}: see " + ", ".join(trainings[n]["log"] for n in failed))

    noisy = read_movie(test["noisy"], "test movie").astype("float32")
    pos, _ = load_positions(test["positions"])
    rows: list[dict] = []

    def add(name: str, frames: np.ndarray, **extra) -> dict:
        row = {"name": name, "scores": regional_scores(frames, pos, args.regions)} | extra
        rows.append(row)
        return row

    add("raw", noisy)
    gauss = {s: np.stack([gaussian_filter(f.astype(np.float64), s) for f in noisy]).astype(np.float32) for s in SIGMAS}
    from livedenoise.scoring import detection_scores

    f1s = {s: detection_scores(g, pos)["f1"] for s, g in gauss.items()}
    best = max(f1s, key=f1s.get)
    add(f"best Gaussian filter (sigma {best:g}, by F1)", gauss[best], sigma=best)
    cards = {}
    flatten_sigmas = []
    for name, path in models:
        den, card = run_model(path, noisy)
        fs = card.normalisation.flatten_sigma
        tr = card.training
        distil = tr.get("distil")
        cards[name] = {
            "path": str(path),
            "flatten_sigma": fs,
            "distil": distil,
            "polarity": tr.get("polarity"),
            "train_seconds": tr.get("train_seconds"),
            "steps": tr.get("steps"),
            "final_losses": tr.get("final_losses"),
        }
        label = f"{card.preset} model" + (f", --flatten {fs:g}" if fs else ", no flatten")
        if name.startswith("flatten") and not fs:
            print(f"WARNING {path} has no flatten sigma in its card")
        add(label, den, model=name, card=cards[name], training=trainings.get(name))
        if fs:
            flatten_sigmas.append(fs)
    for fs in sorted(set(flatten_sigmas)):
        flat = noisy - gaussian_lowpass(noisy, fs)
        g = np.stack([gaussian_filter(f.astype(np.float64), best) for f in flat]).astype(np.float32)
        add(f"flatten {fs:g} + the same Gaussian (sigma {best:g})", g, sigma=best, flatten_sigma=fs)

    # ---- the target: thick band <= thin band + tolerance, for each flatten model
    verdicts = []
    for r in rows:
        s = r["scores"]
        thin, thick = s["fp_per_area"][0], s["fp_per_area"][-1]
        err = float(np.hypot(s["fp_per_area_err"][0], s["fp_per_area_err"][-1]))
        r["thick_minus_thin"] = thick - thin
        r["thick_minus_thin_err"] = err
        if r.get("card") and r["card"]["flatten_sigma"]:
            met = thick <= thin + args.tolerance
            r["target_met"] = bool(met)
            verdicts.append((r["name"], met, thin, thick, err))

    cfg = (f"{args.test_frames} frames {args.size}x{args.size}, dose {args.dose:g}, gradient {args.gradient:g}, "
           f"seed {args.test_seed} (training movie: {args.train_frames} frames, seed {args.train_seed})")
    print(f"\ntest movie: {cfg}; {args.regions} bands of {rows[0]['scores']['band_width_px']:.1f} px along x")
    print("false positives per frame per 100x100 px^2 (± Poisson counting error) and recall, per band:\n")
    for ln in markdown_table(rows, args.regions):
        print(ln)
    print("\nthick - thin (false atoms per frame per 100x100 px^2):")
    for r in rows:
        print(f"  {r['name']:48s} {r['thick_minus_thin']:+6.2f} ± {r['thick_minus_thin_err']:.2f}")
    for name, card in cards.items():
        d = card["distil"]
        dtxt = "none" if not d else f"window {d.get('window')}, {d.get('steps')} steps, used {d.get('used')}, {d.get('seconds')} s"
        t = trainings.get(name)
        print(f"card {name}: flatten_sigma {card['flatten_sigma']}, distil: {dtxt}, train_seconds {card['train_seconds']}, "
              f"polarity {card['polarity']}" + (f"; wall time {t['wall_s'] / 60:.1f} min" if t else ""))
    for name, met, thin, thick, err in verdicts:
        print(f"TARGET {name}: thick {thick:.2f} vs thin {thin:.2f} + tolerance {args.tolerance:g} -> "
              + ("MET" if met else "NOT MET") + f" (difference {thick - thin:+.2f} ± {err:.2f})")
    out = {
        "command": shlex.join(["python", "-m", "benchmarks.flatten", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "load_start": [round(v, 2) for v in load_start],
        "load_end": [round(v, 2) for v in os.getloadavg()],
        "total_s": round(time.monotonic() - t_start, 1),
        "workdir": str(workdir),
        "test_movie": cfg,
        "regions": args.regions,
        "tolerance": args.tolerance,
        "gauss_f1_by_sigma": {str(k): v for k, v in f1s.items()},
        "trainings": trainings,
        "rows": rows,
        "target_met": bool(verdicts) and all(v[1] for v in verdicts),
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
