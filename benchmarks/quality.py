"""Denoising quality against ground truth: the trained presets against every baseline we could run.

    python -m benchmarks.quality [--model NAME=PATH.onnx ...] [--conditions dose300,dose100,...]
                                 [--frames 48] [--n2v-python benchmarks/.venv-n2v/bin/python]
                                 [--json out.json] [--out docs/quality.md] [--figure docs/quality_frames.png]

Writes ``docs/quality.md`` (machine, versions, the exact command, one table per condition, the
targets met or missed, computed) and ``docs/quality_frames.png`` (example frames side by side).

**Conditions** (48 frames of 128 x 128 each; simulated ones by :mod:`livedenoise.sim`, with
seeds the shipped model was not trained on (it was trained on seed 1; seed 3 was its validation
movie):

* ``dose300``: 300 e-/px, dev-D's level (background 0.57 counts, an atom's peak 2.5 counts above
  it: more noise than signal), seed 2 (the test movie of ``benchmarks/default_model_check.py``);
* ``dose100``: 100 e-/px, very low (an atom's peak 0.83 counts above a 0.52-count background),
  seed 4, hop probability 0.1 per single atom and frame instead of 0.02, so that the hop scores
  count about 40 events rather than about 10: the condition of the temporal target;
* ``dose300-grad``: 300 e-/px with a background thickness gradient (``--gradient``, default 4:
  the carbon is 5 x thicker at the right edge than at the left, 4 -> 20 nm, the paper's failure
  case 2), seed 5;
* ``dev-D``: the abTEM multislice movie in ``../shared/data/dev-D`` (read from there, never
  copied), 300 e-/px: data the trainer's simulator did not generate.

**Methods**. The classical ones are those of ``benchmarks/baselines.py`` (imported, same
parameter choice: each gets its best setting on ``--calib`` frames against the truth): raw,
Gaussian (best sigma by PSNR, and by F1 when different), median, non-local means (scikit-image),
causal temporal means of 3 and 5 frames. Added here:

* ``bm3d``: the ``bm3d`` package (both stages, profile "np") between a variance-stabilising
  transform and its inverse, frame by frame. The counts are Poisson(lambda) plus zero-mean
  Gaussian noise: read noise (0.25 counts, per pixel) and an offset per scan line (0.15 counts,
  the same along a row). The 0.5-count pedestal is dark/stray *counts*, part of lambda, so it is
  not subtracted. Transform: the generalised Anscombe transform (GAT) for Poisson-Gaussian noise
  with gain 1, ``f(z) = 2 sqrt(z + 3/8 + s^2)``, ``s^2 = 0.25^2 + 0.15^2`` (each pixel's Gaussian
  variance). Inverse: the *exact unbiased* inverse (Makitalo & Foi 2011/2013), computed
  numerically: ``E[f(z) | lambda]`` on a grid of lambda (Poisson sum x Gaussian quadrature),
  inverted by interpolation; the algebraic inverse ``(D/2)^2 - 3/8 - s^2`` is biased by -0.16 to
  -0.25 counts over lambda 0.5-3, a bias that varies with lambda (no affine fit undoes it) on the
  scale of an atom's whole contrast at dose 100 (0.83 counts). Noise given to BM3D:
  a PSD (its coloured-noise mode), white at ``sigma_psd`` plus the row offsets (std 0.15 times the
  GAT's slope at the mean count) on the zero horizontal frequency; as white noise those offsets
  came out of BM3D as horizontal streaks. ``sigma_psd``: the GAT aims at a unit std, but at these
  counts it gives about 0.75-0.83 on the background (most pixels; the report prints it) and 1.0
  only from an atom's peak up, and sigma_psd = 1 was measured to erase single atoms (dose 300, 4
  frames, white noise: F1 0.46 at 1 against 0.70 at 0.7). So, like every other baseline, BM3D gets
  its best setting: sigma_psd from ``--bm3d-sigmas`` (default 0.35, 0.5, 0.7, 1) by PSNR on the
  calibration frames, and by F1 there (``bm3d-f1``, run on the movie when it differs).
* ``temporal-3+gaussian``: the causal mean of 3 frames, then a Gaussian filter (best sigma by PSNR,
  and by F1 as ``temporal-3+gaussian-f1`` when different): the spatio-temporal baseline a
  multi-frame network has to beat.
* ``n2v``: Noise2Void through ``careamics``, trained on the noisy movie itself (self-supervised,
  no truth), time-bounded (``--n2v-seconds``) on the CPU, then run on every frame. careamics needs
  torch and would break the project's environment, so it runs in its own virtual environment
  (``--n2v-python``, ``benchmarks/_n2v.py`` as a worker; see docs/quality.md for the recipe). Without it
  the row says "not run" and why.

**Models** (``--model NAME=PATH``, repeatable; default the shipped model as ``n2a-tiny``) run
through :class:`livedenoise.engine.Engine` as ``serve`` runs them: the model card's
normalisation, padding, batches of ``--max-batch``, and for multi-frame models the causal history
of one series, frames fed in order.

**Scoring**: :func:`livedenoise.scoring.evaluate`, the same rules for every method: PSNR and SSIM
after the per-frame affine fit (the sign of the fit's slope shown: "-" is inverted contrast),
atom precision / recall / F1 at each method's best threshold, localisation error, recall and
localisation error of hopping atoms in the frame they landed, CSS (min-max normalised for
baselines, whose units are counts; on the [0, 1] output as served for models, the value the
daemon publishes; both are in the JSON). Time per frame: wall time of the method on the movie /
frames, single process, this machine's CPU (parameter searches and N2V's training not included;
N2V's training time is given beside it).

**Hops, evidence, tracks** (issue 17; a second table per condition): the atoms each method's
best-F1 threshold finds, linked frame to frame by the daemon's linker
(:func:`livedenoise.analysis.link_frames`, max displacement 7 px, gaps of 2 frames), scored by
:mod:`livedenoise.scoring` as ``benchmarks/tracks.py`` does: hop recall, precision,
placement error and delay of the detected hop events (a step > 2.5 px confirmed by the track's
next frame, as ``serve`` publishes them) against the truth's hops (> 2.5 px), and
"placed", the share of true hops placed within 1 px and 2 frames (``hop_scores``'
``recall_placed``); evidence ROC AUC of :func:`livedenoise.analysis.atom_evidence`'s z on the raw
frame for true against invented atoms (per frame, and accumulated along the track), precision at
90 % recall of the true ones (in brackets: of all); identity switches per 100 true atom-frames.
The older "hop recall" column of the first table is the evaluation's: atoms found in the frame a
hop landed, whatever the tracks.

**Targets** (computed, per condition; "baseline" = every method above except ``blank``, the
constant-frame floor): the best Noise2Atom preset beats every baseline on atom F1 and on PSNR, and
its CSS is >= 0.69 (the paper's value); at the lowest dose, a causal multi-frame preset
(``input_frames`` > 1) reaches >= 2 x the F1 of the best single-frame baseline, with hopping atoms
placed within a pixel (mean localisation error of the hop atoms it finds <= 1 px). Issue 17: every
multi-frame model other than ``n2a-lowdose`` (the hop-following ``hops`` model) keeps lowdose's
F1 within 0.02 and places >= 80 % of the hops within 1 px and 2 frames, at dose300; evidence AUC
>= 0.9 at dose300 and >= 0.8 at dose100 for the models.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ._conditions import DEFAULT, DEV_D, ROOT, conditions, load_condition
from ._n2v import RECIPE, run_n2v
from ._proc import machine
from ._quality_methods import baseline_methods, not_run, run_model, score
from ._quality_report import targets, versions, write_report
from ._report import command, figure


def parse_models(specs: list[str] | None) -> list[tuple[str, Path]]:
    """``--model NAME=PATH`` as (name, path); the shipped model as ``n2a-tiny`` without any."""
    if not specs:
        from livedenoise.engine import default_model_path

        return [("n2a-tiny", default_model_path())]
    out = []
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--model wants NAME=PATH.onnx, got {s!r}")
        out.append((name, Path(path)))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="NAME=PATH.onnx, repeatable (default: the shipped model as n2a-tiny)")
    ap.add_argument("--conditions", default=DEFAULT, help="comma-separated subset")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--gradient", type=float, default=4.0, help="thickness gradient of dose300-grad")
    ap.add_argument("--calib", type=int, default=4, help="frames used to choose each baseline's parameter")
    ap.add_argument("--bm3d-sigmas", type=float, nargs="+", default=[0.35, 0.5, 0.7, 1.0],
                    help="sigma_psd after the GAT (a grid: best by PSNR, and by F1, on the calibration frames)")
    ap.add_argument("--skip", default="", help="comma-separated methods not to run (e.g. bm3d,nlm or bm3d-f1,n2v for quicker runs)")
    ap.add_argument("--provider", default="cpu", help="onnxruntime provider for the models (cpu, cuda)")
    ap.add_argument("--max-batch", type=int, default=8, help="the engine's batch, as serve --max-batch")
    ap.add_argument("--n2v-python", default=None, help="python of a venv with careamics (runs N2V)")
    ap.add_argument("--n2v-seconds", type=float, default=240.0, help="N2V training time per condition")
    ap.add_argument("--n2v-seed", type=int, default=1)
    ap.add_argument("--dev-d", type=Path, default=DEV_D)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/quality.md", help="the Markdown report ('-': none)")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs/quality_frames.png", help="the figure ('-': none)")
    ap.add_argument("--json", type=Path, default=None, help="also write rows, targets and metadata as JSON")
    args = ap.parse_args(argv)
    from livedenoise.engine import Engine
    from livedenoise.errors import LivedenoiseError

    t_start = time.perf_counter()
    load_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    allc = conditions(args.gradient)
    keys = [k.strip() for k in args.conditions.split(",") if k.strip()]
    bad = [k for k in keys if k not in allc]
    if bad:
        raise SystemExit(f"unknown condition(s) {bad}; choose from {', '.join(allc)}")
    conds = [allc[k] for k in keys]
    if any(c.dev_d for c in conds) and not (args.dev_d / "D_noisy.tif").is_file():
        print(f"dev-D not found at {args.dev_d}: skipped", flush=True)
        conds = [c for c in conds if not c.dev_d]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    models = []
    for name, path in parse_models(args.model):
        try:
            eng = Engine(path, provider=args.provider, max_batch=args.max_batch)
        except LivedenoiseError as exc:
            raise SystemExit(f"error: --model {name}: {exc}") from None
        models.append({"name": name, "path": str(path), "engine": eng, "input_frames": int(eng.card.input_frames),
                       "preset": eng.card.preset, "provider": eng.provider})

    rows: list[dict] = []
    meta: dict = {"sources": {}, "gat": {}}
    panels = []
    n2v_note = ("Not run: no `--n2v-python` given.")
    n2v_info = None
    for ci, c in enumerate(conds):
        t_c = time.perf_counter()
        d = load_condition(c, args.frames, args.size, args.dev_d)
        meta["sources"][c.key] = d.source
        print(f"== {c.key}: {c.label} ({d.noisy.shape[0]} frames)", flush=True)
        dens: dict[str, np.ndarray] = {}
        specs, info = baseline_methods(d, args.calib, args.bm3d_sigmas, skip)
        if "gat" in info:
            meta["gat"][c.key] = info["gat"]
        for s in specs:
            t0 = time.perf_counter()
            den = s.fn(d.noisy)
            ms = 1e3 * (time.perf_counter() - t0) / d.noisy.shape[0]
            rows.append(score(c.key, s.name, s.params, s.kind, den, d, ms))
            dens[s.name] = den
            print(f"   {s.name:24s} F1 {rows[-1]['f1']:.3f} PSNR {rows[-1]['psnr']:.2f} {ms:8.2f} ms/frame", flush=True)
        if "n2v" not in skip:
            if args.n2v_python:
                den, info_n = run_n2v(args.n2v_python, d.noisy, args.n2v_seconds, args.n2v_seed)
                if den is None:
                    rows.append(not_run(c.key, "n2v", "single", info_n["reason"]))
                    n2v_note = f"Not run: {info_n['reason']}"
                else:
                    n2v_info = info_n
                    ms = 1e3 * info_n["predict_s"] / d.noisy.shape[0]
                    params = (f"careamics, trained on this movie {info_n['train_s']:.0f} s "
                              f"({info_n['steps']} steps) on the CPU")
                    rows.append(score(c.key, "n2v", params, "single", den, d, ms, extra={"train_s": info_n["train_s"]}))
                    dens["n2v"] = den
                    print(f"   {'n2v':24s} F1 {rows[-1]['f1']:.3f} PSNR {rows[-1]['psnr']:.2f}", flush=True)
            else:
                rows.append(not_run(c.key, "n2v", "single", "no --n2v-python (careamics needs its own venv)"))
        for m in models:
            den, ms = run_model(m["engine"], d.noisy, series=1000 + ci)
            params = f"preset {m['preset']}, {m['input_frames']} frame(s), {Path(m['path']).name}"
            rows.append(score(c.key, m["name"], params, "model", den, d, ms, served=True))
            dens[m["name"]] = den
            print(f"   {m['name']:24s} F1 {rows[-1]['f1']:.3f} PSNR {rows[-1]['psnr']:.2f} CSS {rows[-1]['css']:.3f}"
                  f" {ms:8.2f} ms/frame", flush=True)
        # the figure's frame: the middle one, or at the lowest dose the first hop landing after frame 4
        fi = d.noisy.shape[0] // 2
        if d.noisy.shape[0] > 1:
            step = np.hypot(*np.diff(d.positions, axis=0).transpose(2, 0, 1))
            hop_frames = [t + 1 for t in np.flatnonzero((step > 2.5).any(axis=1)) if t + 1 >= 4]
            if hop_frames and c.hop_prob > 0.05:
                fi = int(hop_frames[0])
        want = ["raw", "gaussian-f1" if "gaussian-f1" in dens else "gaussian", "nlm",
                "bm3d-f1" if "bm3d-f1" in dens else "bm3d",
                "temporal-3+gaussian-f1" if "temporal-3+gaussian-f1" in dens else "temporal-3+gaussian", "n2v"]
        row = [("truth", d.truth[fi])] + [(k, dens[k][fi]) for k in want if k in dens]
        row += [(m["name"], dens[m["name"]][fi]) for m in models]
        panels.append((f"{c.key}, frame {fi}", row))
        print(f"   ({time.perf_counter() - t_c:.0f} s)", flush=True)

    tg = targets(rows, conds, models)
    cmd = command("benchmarks.quality", argv if argv is not None else sys.argv[1:])
    if n2v_info:
        n2v_note = (f"Run in its own venv (`{args.n2v_python}`): careamics {n2v_info['careamics']}, torch "
                    f"{n2v_info['torch']}; {n2v_info['config']}; trained on each noisy movie itself for at most "
                    f"{args.n2v_seconds:g} s (Lightning `max_time`), then applied to every frame. Time per frame is "
                    "prediction only; the training time is given beside it.")
    n2v_note += RECIPE
    meta.update({
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": cmd,
        "machine": machine(),
        "load_start": load_start,
        "load_end": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "versions": versions(n2v_info),
        "models": [{k: v for k, v in m.items() if k != "engine"} for m in models],
        "n2v_note": n2v_note,
        "figure_note": ("Columns: the truth, raw counts, the baselines (Gaussian and temporal-3+Gaussian at their best-F1"
                        " sigma where it differs, BM3D at its best-F1 sigma_psd likewise), and each model."),
        "total_s": time.perf_counter() - t_start,
    })
    if args.figure and str(args.figure) != "-":
        figure(args.figure, panels)
    fig = args.figure if args.figure and str(args.figure) != "-" else None
    if args.out and str(args.out) != "-":
        write_report(args.out, fig, meta, conds, rows, tg)
        print(f"wrote {args.out}", flush=True)
    result = {"meta": meta, "rows": rows, "targets": tg}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=lambda o: None))
    for pc in tg["per_condition"]:
        print(f"target {pc['condition']}: {'met' if pc['met'] else 'missed'}")
    print(f"total {meta['total_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
