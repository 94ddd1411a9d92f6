"""benchmarks/realsamples.py's ``scorecheck`` and ``hops``.

``scorecheck --dir CASES [--work W] [--seeds 1001 1002 1003]``: is the ground-truth-free score right?

* (a) **static**: each case's first held-out truth frame repeated (16 frames of history + the
  held-out count), noise only, drawn by the project's noise model (``livedenoise.sim.acquire``
  with the case's read noise, line noise and line shifts; the truth already holds the dose and
  pedestal); every filter of ``FILTER_BANK`` and every shipped model: the score's gain over raw
  against the true gain, which should agree within 0.5 dB;
* (b) **order**: the case's whole movie re-acquired from its truth with other noise seeds; every
  method of ``score`` (baselines, shipped, trained) and the filter bank; every pair more than 0.5
  dB apart in true PSNR must come out in the same order by the score, on each seed;
* (c) **bias under motion**: on those re-acquired movies, the score's gain minus the true gain
  per method, next to the static figure: what drift, jitter, the scene change, the dose decay and
  hops add.

``hops --work W [--seeds 31 32 33] [--dose 300] [--hop-prob 0.1]``: sparse movies at the dose the
shipped ``hops`` model was built for (docs/training.md), 112 frames with hop probability 0.1 per
single atom and frame (about one hop a frame), seeds no model or table uses; the temporal
self-supervised model (``livedenoise train --method selfsup``) trained on each movie's first 64
frames (``--train-once``: on the first movie's only, used on all), beside the shipped ``hops``
and ``lowdose``. On the held-out frames 64-111, at each method's best-F1 threshold chosen on the
training frames: the share of true hops (> 2.5 px) with a detection within 1 px of the new site
in the landing frame or the next (target >= 0.8), and the share still showing a detection within
1 px of the old site in the landing frame (target <= 0.2), pooled over the movies with a 95 %
Wilson interval; also the daemon linker's ``recall_placed`` (``score_tracks``' hops).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from livedenoise.analysis import FILTER_BANK, find_atoms, score
from livedenoise.scoring import score_tracks
from livedenoise.sim import NoiseConfig, SimConfig, acquire, simulate_movie

from ._realmeasure import (
    candidates,
    choose_threshold,
    hop_outcomes,
    misordered,
    pooled_f1,
    scored_index,
    true_gain,
    wilson,
)
from ._realrun import _done, case_models, cli, methods_on, run_trainings, shipped_models, signature, tuned_baselines
from .cases import ALL, load_case
from .dense import r2_and_psnr, run_model

STATIC_DB = 0.5  # the score's gain within this of the true gain on a static movie
ORDER_GAP_DB = 0.5  # pairs further apart than this in true PSNR must be ordered right
FOUND_NEW, GHOST_OLD = 0.8, 0.2  # the hop targets
TRAIN, FRAMES = 64, 112
FORMAT = 1  # of the cached per-case results: a change of what they hold invalidates them


def _bank() -> dict:
    return {f"bank: {f.describe()}": f for f in FILTER_BANK}


def _redraw(case) -> NoiseConfig:
    """The case's detector noise on its expected counts (the truth holds dose and pedestal already)."""
    n = NoiseConfig(**case.info["noise"])
    return NoiseConfig(dose=1.0, pedestal=0.0, read_noise=n.read_noise, line_noise=n.line_noise, line_shift=n.line_shift)


def _gains(movie: np.ndarray, truth: np.ndarray, den: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    return score(movie, den, idx).gain_db, true_gain(den, movie, truth, idx)


def check_case(root: Path, work: Path, name: str, seeds: list[int], force: bool = False) -> dict:
    """(a), (b) and (c) of the module text for one case, cached in ``W/C/scorecheck.json``."""
    models = case_models(work, name)
    sig = [*signature([*(p for _, p in models.values()), root / name / "movie.npy"]), seeds, FORMAT]
    cache = work / name / "scorecheck.json"
    if not force and cache.is_file() and json.loads(cache.read_text()).get("signature") == sig:
        return json.loads(cache.read_text())
    case = load_case(root, name)
    noise, held = _redraw(case), case.held
    n_held = held.stop - held.start
    clean = np.broadcast_to(case.truth[held.start], (16 + n_held, *case.truth.shape[1:]))
    movie = acquire(clean, noise, np.random.default_rng(seeds[0] + 500))
    idx = np.arange(16, clean.shape[0] - 2)
    static = {}
    for label, flt in _bank().items():
        static[label] = _gains(movie, clean, flt.apply(movie), idx)
    for label, path in shipped_models().items():
        static[f"shipped:{label}"] = _gains(movie, clean, run_model(path, movie)[0], idx)
    tuned = tuned_baselines(case, work)
    per_seed = []
    for seed in seeds:
        movie = acquire(case.truth, noise, np.random.default_rng(seed))
        methods, _ = methods_on(movie, tuned, models, extra=_bank())
        rows = {}
        for m in methods:
            est, true = _gains(movie, case.truth, m.den, scored_index(held))
            rows[m.name] = {"psnr": r2_and_psnr(m.den[held], case.truth[held])[0], "est_db": est, "true_db": true}
        est = {k: r["est_db"] for k, r in rows.items()}
        pairs, wrong = misordered({k: r["psnr"] for k, r in rows.items()}, est, ORDER_GAP_DB)
        # the same against the true gain, which aggregates the frames as the score does (a ratio of mean errors)
        pairs_g, wrong_g = misordered({k: r["true_db"] for k, r in rows.items()}, est, ORDER_GAP_DB)
        per_seed.append({"seed": seed, "rows": rows, "pairs": pairs, "misordered": wrong, "pairs_gain": pairs_g,
                         "misordered_gain": wrong_g})
        print(f"{name:20s} seed {seed}: {len(rows)} methods, {pairs} pairs > {ORDER_GAP_DB} dB apart in PSNR, {len(wrong)} "
              f"misordered; {pairs_g} apart in true gain, {len(wrong_g)} misordered", flush=True)
    out = {"case": name, "kind": case.info["kind"], "static": {k: {"est_db": e, "true_db": t} for k, (e, t) in static.items()},
           "seeds": per_seed, "signature": sig}
    cache.write_text(json.dumps(out, indent=1))
    worst = max(abs(e - t) for e, t in static.values())
    print(f"{name:20s} static: {len(static)} methods, worst |score - true| {worst:.2f} dB", flush=True)
    return out


def summarise_checks(checks: list[dict]) -> dict:
    """Per case: (a) the worst static disagreement, (b) pairs and misordered ones over the seeds,
    (c) the bias (score - true) under motion over methods and seeds."""
    out = []
    for c in checks:
        st = [v["est_db"] - v["true_db"] for v in c["static"].values()]
        bias = [r["est_db"] - r["true_db"] for s in c["seeds"] for k, r in s["rows"].items() if k != "raw"]
        wrong = [w | {"seed": s["seed"]} for s in c["seeds"] for w in s["misordered"]]
        out.append({"case": c["case"], "kind": c["kind"], "static_methods": len(st), "static_worst_db": max(map(abs, st)),
                    "static_mean_db": float(np.mean(st)), "static_met": max(map(abs, st)) <= STATIC_DB,
                    "pairs": sum(s["pairs"] for s in c["seeds"]), "misordered": wrong, "order_met": not wrong,
                    "pairs_gain": sum(s["pairs_gain"] for s in c["seeds"]),
                    "misordered_gain": sum(len(s["misordered_gain"]) for s in c["seeds"]),
                    "bias_mean_db": float(np.mean(bias)), "bias_min_db": min(bias), "bias_max_db": max(bias),
                    "seeds": [s["seed"] for s in c["seeds"]]})
    return {"cases": out}


# ---------------------------------------------------------------------------- hops


def hop_movies(work: Path, seeds: list[int], dose: float, hop_prob: float) -> list[Path]:
    from livedenoise.io import write_imagej

    dirs = []
    for seed in seeds:
        d = work / "hops" / f"dose{dose:g}-hop{hop_prob:g}-seed{seed}"
        if not (d / "positions.npy").is_file():
            d.mkdir(parents=True, exist_ok=True)
            m = simulate_movie(SimConfig(frames=FRAMES, dose=dose, seed=seed, hop_prob=hop_prob))
            write_imagej(d / "train.tif", m.noisy[:TRAIN], pixel_size_nm=0.04)
            np.save(d / "movie.npy", m.noisy)
            np.save(d / "positions.npy", m.positions)
        dirs.append(d)
    return dirs


def hop_methods(movie_dir: Path, den: np.ndarray, positions: np.ndarray) -> dict:
    """F1 and hop outcomes on the held-out frames at the threshold chosen on the training frames."""
    thr = choose_threshold(candidates(den[:TRAIN]), positions[:TRAIN])
    f1 = pooled_f1(candidates(den[TRAIN:]), positions[TRAIN:], thr)["f1"]
    found = [find_atoms(d, threshold=thr).positions.astype(np.float64) for d in den]
    outcome = hop_outcomes(found, positions, range(TRAIN, FRAMES))
    placed = score_tracks(found[TRAIN:], positions[TRAIN:]).hops
    return outcome | {"f1": f1, "threshold": thr, "linker_placed": placed["recall_placed"], "linker_hops": placed["n_true"]}


def hops(args: argparse.Namespace, work: Path) -> dict:
    dirs = hop_movies(work, args.seeds, args.dose, args.hop_prob)
    jobs = []
    for d in dirs[:1] if args.train_once else dirs:
        if not _done(d / "selfsup.run.json"):
            cmd = [*cli(), "train", "--frames", str(d / "train.tif"), "--out", str(d / "selfsup.onnx"), "--method", "selfsup",
                   *(["--steps", str(args.steps)] if args.steps else []), *(["--minutes", str(args.minutes)] if args.minutes else [])]
            jobs.append((f"hops/{d.name}", cmd, d / "selfsup.log"))
    run_trainings(jobs, args.nice, args.threads)
    shipped = shipped_models()
    per_movie, pooled = [], {}
    for d in dirs:
        model = (dirs[0] if args.train_once else d) / "selfsup.onnx"
        movie, positions = np.load(d / "movie.npy"), np.load(d / "positions.npy")
        runs = {"selfsup": model, **{n: shipped[n] for n in ("hops", "lowdose") if n in shipped}}
        for name, path in runs.items():
            if not path.is_file():
                continue
            r = hop_methods(d, run_model(path, movie)[0], positions)
            per_movie.append({"movie": d.name, "method": name} | r)
            p = pooled.setdefault(name, {"hops": 0, "found_new": 0, "ghost_old": 0})
            for k in p:
                p[k] += r[k]
            print(f"hops {d.name} {name:8s}: {r['hops']} hops, new site {r['found_new']}, old site {r['ghost_old']}, "
                  f"F1 {r['f1']:.3f}, linker placed {r['linker_placed']}", flush=True)
    train_s = {d.name: json.loads((d / "selfsup.run.json").read_text()).get("wall_s") for d in dirs if (d / "selfsup.run.json").is_file()}
    out = {"dose": args.dose, "hop_prob": args.hop_prob, "seeds": args.seeds, "train_once": args.train_once,
           "per_movie": per_movie, "train_wall_s": train_s, "pooled": {}}
    for name, p in pooled.items():
        new, ghost = wilson(p["found_new"], p["hops"]), wilson(p["ghost_old"], p["hops"])
        out["pooled"][name] = p | {"found_new_share": new, "ghost_old_share": ghost,
                                   "found_new_met": new[0] >= FOUND_NEW, "ghost_old_met": ghost[0] <= GHOST_OLD}
    (work / "hops.json").write_text(json.dumps(out, indent=1))
    return out


# ---------------------------------------------------------------------------- CLI and report


def add_check_parsers(sub) -> list[argparse.ArgumentParser]:
    c = sub.add_parser("scorecheck", help="the score against the truth: static movies, order over noise seeds, bias under motion")
    c.add_argument("--dir", type=Path, required=True)
    c.add_argument("--work", type=Path)
    c.add_argument("--cases", nargs="*", default=ALL, choices=ALL)
    c.add_argument("--seeds", type=int, nargs="+", default=[1001, 1002, 1003])
    c.add_argument("--force", action="store_true")
    h = sub.add_parser("hops", help="the hop target with the temporal self-supervised model")
    h.add_argument("--work", type=Path, required=True)
    h.add_argument("--dir", type=Path, help="the cases (only named in the report)")
    h.add_argument("--seeds", type=int, nargs="+", default=[31, 32, 33])
    h.add_argument("--dose", type=float, default=300.0)
    h.add_argument("--hop-prob", type=float, default=0.1)
    h.add_argument("--steps", type=int)
    h.add_argument("--minutes", type=float)
    h.add_argument("--train-once", action="store_true", help="train on the first movie only, use that model on every movie")
    h.add_argument("--nice", type=int, default=10)
    h.add_argument("--threads", type=int)
    return [c, h]


def run_check(args: argparse.Namespace, work: Path) -> None:
    if args.cmd == "hops":
        args.dir = args.dir or work
        hops(args, work)
        return
    cases = json.loads((args.dir / "cases.json").read_text())
    for name in (n for n in args.cases if n in cases):
        check_case(args.dir, work, name, args.seeds, args.force)
    # every case checked so far, in the cases' order (a later run of a few cases keeps the others)
    checks = [json.loads(p.read_text()) for p in (work / n / "scorecheck.json" for n in ALL) if p.is_file()]
    (work / "scorecheck.json").write_text(json.dumps(summarise_checks(checks), indent=1))


def _share(s: list[float]) -> str:
    return "-" if not s or not math.isfinite(s[0]) else f"{s[0]:.2f} [{s[1]:.2f}, {s[2]:.2f}]"


def markdown_checks(rep: dict) -> list[str]:
    out = []
    sc = rep.get("scorecheck")
    if sc:
        out += ["", "### The score against the truth (`realsamples.py scorecheck`)", "",
                "(a) static: the first held-out truth frame repeated, noise only: every filter of `FILTER_BANK` and every "
                "shipped model, |score - true gain| (target <= 0.5 dB); (b) the movie re-acquired with other noise seeds: "
                "pairs of methods (baselines, shipped, trained, the filter bank) more than 0.5 dB apart in true PSNR that "
                "the score orders the other way (target: none); in brackets the same against the true gain, which "
                "aggregates the frames as the score does (a ratio of mean errors, where the mean PSNR averages dB: a few "
                "bad frames, after a scene change, weigh more there); (c) the score's bias (score - true gain, dB) on the "
                "moving movies, over methods and seeds:", "",
                "| case | (a) methods, worst, mean | (a) | (b) seeds, pairs, misordered (vs true gain) | (b) | (c) bias mean, min .. max |",
                "|---|---|---|---|---|---|"]
        for c in sc["cases"]:
            worst = max(c["misordered"], key=lambda w: abs(w["true_gap_db"]), default=None)
            out.append(f"| {c['case']} | {c['static_methods']}, {c['static_worst_db']:.2f}, {c['static_mean_db']:+.2f} | "
                       f"{'met' if c['static_met'] else 'missed'} | {len(c['seeds'])}, {c['pairs']}, {len(c['misordered'])} "
                       f"({c['pairs_gain']}, {c['misordered_gain']})"
                       + (f" (worst {worst['a']} vs {worst['b']}, seed {worst['seed']}: {worst['true_gap_db']:+.2f} true, "
                          f"{worst['est_gap_db']:+.2f} scored)" if worst else "")
                       + f" | {'met' if c['order_met'] else 'missed'} | {c['bias_mean_db']:+.2f}, {c['bias_min_db']:+.2f} .. {c['bias_max_db']:+.2f} |")
    hp = rep.get("hops")
    if hp:
        n_movies = len(hp["seeds"])
        out += ["", "### Hops (`realsamples.py hops`)", "",
                f"{n_movies} simulated sparse movies at dose {hp['dose']:g} e-/px (the `hops` model's), hop probability "
                f"{hp['hop_prob']:g}, seeds {', '.join(map(str, hp['seeds']))}; the self-supervised model trained "
                + ("on the first movie's 64 training frames, used on all" if hp["train_once"] else "on each movie's first 64 frames")
                + "; held-out frames 64-111, threshold chosen per method on the training frames. New site: a detection within "
                "1 px of the new site within 2 frames (target >= 0.8); old site: a detection within 1 px of the old site in the "
                "hop frame (target <= 0.2); share [95 % Wilson interval], pooled:", "",
                "| method | hops | new site | old site | F1 (mean) | linker: placed within 1 px and 2 frames (mean) | targets |",
                "|---|---|---|---|---|---|---|"]
        for name, p in hp["pooled"].items():
            rows = [r for r in hp["per_movie"] if r["method"] == name]
            placed = [r["linker_placed"] for r in rows if r["linker_placed"] is not None]
            out.append(f"| {name} | {p['hops']} | {_share(p['found_new_share'])} | {_share(p['ghost_old_share'])} | "
                       f"{np.mean([r['f1'] for r in rows]):.3f} | {np.mean(placed) if placed else math.nan:.2f} | "
                       f"new {'met' if p['found_new_met'] else 'missed'}, old {'met' if p['ghost_old_met'] else 'missed'} |")
        if hp["train_wall_s"]:
            out += ["", "Training wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in hp["train_wall_s"].items() if v) + "."]
    return out
