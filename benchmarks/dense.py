"""Dense samples (issue 19): lattices and particles, simulated and real, against the baselines.

Two steps, so the trainings in between run on their own (``livedenoise train``, minutes each):

    python -m benchmarks.dense make --out /tmp/dense
    # for each case C of /tmp/dense/cases.json, both Domain C generators, the same recipe:
    livedenoise train --frames /tmp/dense/C/train.tif --out /tmp/dense/C/fitted.onnx \
        --preset temporal --window 5 --domain fitted --seed 0
    livedenoise train --frames /tmp/dense/C/train.tif --out /tmp/dense/C/paper.onnx \
        --preset temporal --window 5 --domain paper --seed 0
    python -m benchmarks.dense score --dir /tmp/dense --json /tmp/dense/report.json \
        [--figure docs/quality_dense.png] [--write docs/quality.md]

Cases (each a training movie and a held-out movie of the same sample with other noise):

* ``sim-mos2``, ``sim-particle``: ``livedenoise.sim.simulate_dense`` (truth and column positions
  known: PSNR, r2 and column F1);
* ``real-mos2``: the experimental ADF image of Se-implanted MoS2 shipped in the ``temul-toolkit``
  0.1.9 wheel (0.127 A/px), binned 3 x 3 to 0.38 A/px; ``real-au``: its Au nanoparticle image
  (0.075 A/px) binned 5 x 5 to 0.375 A/px. Each is the truth of a static movie given the dose of
  the project's low-dose movies: brightest columns (99.5th percentile) 5 counts over a background
  (1st percentile) of 0.5, Poisson, read noise 0.25 and line noise 0.15 counts (PSNR and r2 only:
  their columns are not known). The files come from the wheel at run time
  (``.ci/fetch-vendor-files``), never from the repository (GPL-3.0).
* ``sparse-300``, ``sparse-100``: the project's sparse movies (``simulate_movie``, doses 300 and
  100), for the guard's verdicts only (their figures are those of the quality tables above).

``score`` runs the baselines of ``benchmarks/quality.py`` (best-PSNR parameters chosen on 8
calibration frames of the held-out movie), the shipped models, the models trained per case, the
guard's verdict of every model on every case and the unexplained-signal figure of every model.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from ._conditions import PIXEL_NM, SHIPPED
from ._report import figure, replace_section

VENDOR = Path(os.environ.get("LIVEDENOISE_VENDOR_FILES", Path.home() / ".cache/livedenoise/vendor-files"))
REAL = {
    "real-mos2": ("temul-toolkit/example_Se_implanted_MoS2.dm3", 3),
    "real-au": ("temul-toolkit/example_Au_nanoparticle.emd", 5),
}
TRAIN_FRAMES, EVAL_FRAMES, CALIB = 120, 48, 8


def acquire(clean: np.ndarray, frames: int, seed: int) -> np.ndarray:
    """A static movie of ``clean`` (expected counts): the simulators' Poisson, read noise 0.25 and
    line noise 0.15 counts (``livedenoise.sim.acquire``), no scan-line shifts."""
    from livedenoise.sim import NoiseConfig
    from livedenoise.sim import acquire as detect

    noise = NoiseConfig(dose=1.0, pedestal=0.0, line_shift=0.0)
    return detect(np.broadcast_to(clean, (frames, *clean.shape)), noise, np.random.default_rng(seed))


def vendor_image(rel: str, b: int, pixel_nm: float | None = None) -> tuple[np.ndarray, float]:
    """A vendor file's first image (``rel`` in the ``.ci/fetch-vendor-files`` cache) binned ``b`` x ``b``
    as a contrast, 0 at its 1st percentile (background) and 1 at its 99.5th (the brightest columns),
    and its pixel size in nm (``pixel_nm`` where the file stores none)."""
    from livedenoise.io import open_movie

    path = VENDOR / rel
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `python .ci/fetch-vendor-files` first")
    movie = open_movie(path, "frames")
    img = np.asarray(movie.read() if not isinstance(movie.data, np.ndarray) else movie.data)[0].astype(np.float64)
    h, w = (img.shape[0] // b) * b, (img.shape[1] // b) * b
    img = img[:h, :w].reshape(h // b, b, w // b, b).mean(axis=(1, 3))
    lo, hi = np.percentile(img, [1, 99.5])
    px = movie.pixel_size_nm if movie.pixel_size_nm is not None else pixel_nm
    if px is None:
        raise SystemExit(f"{path} has no pixel size: give one")
    return np.clip((img - lo) / (hi - lo), 0, None), float(px) * b


def real_truth(name: str) -> tuple[np.ndarray, float]:
    """The binned vendor image as expected counts per frame (5 counts over 0.5), and its pixel size (nm)."""
    contrast, px = vendor_image(*REAL[name])
    return (0.5 + 5.0 * contrast).astype(np.float32), px


def make(out: Path) -> None:
    from livedenoise.io import write_imagej
    from livedenoise.sim import DenseConfig, SimConfig, simulate_dense, simulate_movie

    out.mkdir(parents=True, exist_ok=True)
    cases = {}
    for kind in ("mos2", "particle"):
        name = f"sim-{kind}"
        d = out / name
        d.mkdir(exist_ok=True)
        train = simulate_dense(DenseConfig(kind=kind, frames=TRAIN_FRAMES, seed=1))
        held = simulate_dense(DenseConfig(kind=kind, frames=EVAL_FRAMES, seed=2))
        write_imagej(d / "train.tif", train.noisy, pixel_size_nm=PIXEL_NM)
        np.save(d / "noisy.npy", held.noisy)
        np.save(d / "truth.npy", held.truth)
        np.save(d / "positions.npy", held.positions)
        np.save(d / "groups.npy", held.groups)
        cases[name] = {"pixel_size_nm": PIXEL_NM, "positions": True, "dose": held.dose}
    for name in REAL:
        d = out / name
        d.mkdir(exist_ok=True)
        truth, px = real_truth(name)
        write_imagej(d / "train.tif", acquire(truth, TRAIN_FRAMES, 1), pixel_size_nm=px)
        np.save(d / "noisy.npy", acquire(truth, EVAL_FRAMES, 2))
        np.save(d / "truth.npy", np.broadcast_to(truth, (EVAL_FRAMES, *truth.shape)).copy())
        cases[name] = {"pixel_size_nm": px, "positions": False}
    for dose in (300, 100):
        name = f"sparse-{dose}"
        d = out / name
        d.mkdir(exist_ok=True)
        held = simulate_movie(SimConfig(dose=dose, frames=EVAL_FRAMES, seed=2))
        np.save(d / "noisy.npy", held.noisy)
        np.save(d / "truth.npy", held.truth)
        np.save(d / "positions.npy", held.positions)
        cases[name] = {"pixel_size_nm": PIXEL_NM, "positions": True, "sparse": True}
    (out / "cases.json").write_text(json.dumps(cases, indent=1))
    print(f"wrote {len(cases)} cases to {out}: {', '.join(cases)}")


# ---------------------------------------------------------------------------- score


def r2_and_psnr(den: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean over frames of PSNR (range of the truth) and r2, each after the affine fit to the truth."""
    from livedenoise.scoring import fit_errors

    errors = fit_errors(den, truth)
    return float(errors.psnr(float(truth.max() - truth.min())).mean()), float(errors.r2.mean())


def baselines(noisy: np.ndarray, truth: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """The classical baselines of quality.py, each with its best-PSNR parameter on CALIB frames."""
    from . import baselines as bl

    sig = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5]
    out = []
    g, gs = bl.best_of(bl.gaussian, sig, noisy, truth, None, CALIB)
    out.append(("gaussian", f"sigma={gs:g} px", g(noisy)))
    m, ms = bl.best_of(lambda v: bl.median(int(v)), [3, 5], noisy, truth, None, CALIB)
    out.append(("median", f"size={int(ms)}", m(noisy)))
    n, nh = bl.best_of(bl.nlm, [0.4, 0.6, 0.8, 1.0, 1.3], noisy, truth, None, CALIB)
    out.append(("nlm", f"h={nh:g} x noise std", n(noisy)))
    for k in (3, 5):
        t = bl.temporal(k)(noisy)
        out.append((f"temporal-{k}", f"causal mean of {k}", t))
        tg, ts = bl.best_of(bl.gaussian, sig, t, truth, None, CALIB)
        out.append((f"temporal-{k}+gaussian", f"causal mean of {k}, then sigma={ts:g} px", tg(t)))
    return out


def run_model(path: Path, noisy: np.ndarray) -> tuple[np.ndarray, object]:
    from livedenoise.engine import Engine

    eng = Engine(path, provider="cpu")
    return eng.run_stack(noisy, restart=True), eng.card


def score(args: argparse.Namespace) -> None:
    root = args.dir
    cases = json.loads((root / "cases.json").read_text())
    for name, info in cases.items():
        if not args.cases or name in args.cases:
            score_case(root / name, name, info)
    # the report: every case scored so far (a case is scored once; its figures stay in its folder)
    rows, guard, panels = [], [], []
    for name in cases:
        d = root / name
        if not (d / "score.json").is_file():
            continue
        part = json.loads((d / "score.json").read_text())
        rows += part["rows"]
        guard += part["guard"]
        if (d / "panel.npz").is_file():
            with np.load(d / "panel.npz") as z:
                panels.append((name, [(k, z[k]) for k in part["panel"]]))
    ceilings = {name: peak_ceiling(np.load(root / name / "truth.npy")[0]) for name in cases
                if not cases[name].get("sparse") and (root / name / "score.json").is_file()}
    report = {"cases": cases, "rows": rows, "guard": guard, "ceilings": ceilings}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.figure and panels:
        figure(args.figure, panels)
    text = markdown(report, args.figure)
    print(text)
    if args.write:
        replace_section(args.write, text, BEGIN, END)


def peak_ceiling(truth: np.ndarray) -> dict:
    """What an image made only of Gaussian peaks (Noise2Atom's output, whatever its Domain C) can
    score against ``truth``: the truth's own peaks (``find_atoms``, sub-pixel, above 5 % of its
    range), each rendered as a Gaussian of its height, the best of three widths."""
    from livedenoise.analysis import find_atoms
    from livedenoise.sim import render_atoms

    t = truth.astype(np.float64)
    floor = float(np.percentile(t, 5))
    atoms = find_atoms(t, threshold=0.05 * (float(t.max()) - floor), background=floor)
    best = max((*r2_and_psnr(render_atoms(atoms.positions, t.shape, sigma=s, peak=atoms.heights)[None], t[None]), s)
               for s in (0.9, 1.1, 1.3))
    return {"psnr": best[0], "r2": best[1], "sigma": best[2], "peaks": len(atoms)}


def score_case(d: Path, name: str, info: dict) -> None:
    """One case's rows, guard verdicts and figure panel, written to ``d`` (score.json, panel.npz)."""
    from livedenoise.analysis import guard_report, unexplained_sum
    from livedenoise.engine import default_model_path
    from livedenoise.scoring import evaluate

    rows, guard = [], []
    noisy, truth = np.load(d / "noisy.npy"), np.load(d / "truth.npy")
    pos = np.load(d / "positions.npy") if info.get("positions") else None
    groups = np.load(d / "groups.npy") if (d / "groups.npy").is_file() else None
    px = info["pixel_size_nm"]
    models = [(m, default_model_path().with_name(f"{m}.onnx"), "shipped") for m in SHIPPED]
    models += [(f"trained-{g}", d / f"{g}.onnx", "trained") for g in ("paper", "fitted") if (d / f"{g}.onnx").is_file()]
    outputs: dict[str, np.ndarray] = {}
    for mname, path, kind in models:
        den, card = run_model(path, noisy)
        outputs[mname] = den
        v = guard_report(card.expects, noisy, pixel_size_nm=px).content  # the card's figures against the movie's
        un = float(np.mean([unexplained_sum(noisy[i : i + 16], den[i : i + 16]).fraction for i in range(0, len(noisy) - 15, 16)]))
        guard.append({"case": name, "model": mname, "kind": kind, "state": v.state if v else "off",
                      "message": v.message if v else "no expects on the card", "unexplained": un})
    panel: dict[str, np.ndarray] = {}
    if not info.get("sparse"):  # the sparse movies: guard verdicts only, their figures are quality.py's
        methods = [(n, p, den, "baseline") for n, p, den in baselines(noisy, truth)]
        methods += [(m, "", outputs[m], "model") for m, _, _ in models]
        for mname, params, den, kind in methods:
            p, r2 = r2_and_psnr(den, truth)
            row = {"case": name, "method": mname, "params": params, "kind": kind, "psnr": p, "r2": r2}
            if pos is not None:
                rep = evaluate(den, positions=pos, groups=groups, ssim=False)
                row |= {"f1": rep.f1, "precision": rep.precision, "recall": rep.recall}
            row["unexplained"] = next((g["unexplained"] for g in guard if g["model"] == mname), None)
            rows.append(row)
            print(f"{name:13s} {mname:24s} PSNR {p:6.2f}  r2 {r2:.3f}" + (f"  F1 {row['f1']:.3f}" if "f1" in row else ""), flush=True)
        best = max((r for r in rows if r["kind"] == "baseline"), key=lambda r: r["psnr"])
        t = len(noisy) // 2
        crop = tuple(slice(max(0, (n - 128) // 2), max(0, (n - 128) // 2) + 128) for n in noisy.shape[1:])
        by_name = {m[0]: m[2] for m in methods}
        panel = {"noisy": noisy[t], "truth": truth[t], f"best baseline: {best['method']}": by_name[best["method"]][t]}
        panel |= {m: outputs[m][t] for m in ("lowdose", "trained-paper", "trained-fitted") if m in outputs}
        panel = {k: v[crop] for k, v in panel.items()}
        np.savez_compressed(d / "panel.npz", **panel)
    (d / "score.json").write_text(json.dumps({"rows": rows, "guard": guard, "panel": list(panel)}, indent=1))


BEGIN, END = "<!-- dense:begin (benchmarks/dense.py) -->", "<!-- dense:end -->"


def markdown(report: dict, fig: Path | None) -> str:
    rows, guard = report["rows"], report["guard"]
    out = ["## Dense samples: lattices and particles (issue 19)", "",
           "`python -m benchmarks.dense make --out DIR`, the trainings it lists, then `python -m benchmarks.dense score "
           "--dir DIR --figure docs/quality_dense.png --write docs/quality.md`. PSNR and r2 after the affine fit to the "
           "truth, mean over the 48 held-out frames; column F1 where the positions are known; *unexplained*: the "
           "fraction of the atomic counts the output leaves unexplained in sums of 16 frames (`livedenoise.analysis."
           "unexplained_sum`, mean of 3 sums; the models only: a baseline's output is not a [0, 1] image). "
           "Trained: `livedenoise train --preset temporal --window 5 --seed 0` on the case's 120-frame training movie "
           "with `--domain paper` or `--domain fitted`.", ""]
    for case in dict.fromkeys(r["case"] for r in rows):
        sub = [r for r in rows if r["case"] == case]
        has_f1 = "f1" in sub[0]
        best = max((r for r in sub if r["kind"] == "baseline"), key=lambda r: r["psnr"])
        out += [f"### {case}", "", "| method | params | PSNR | r2 |" + (" column F1 |" if has_f1 else "") + " unexplained |",
                "|---|---|---|---|" + ("---|" if has_f1 else "") + "---|"]
        for r in sub:
            name = f"**{r['method']}**" if r["method"].startswith("trained") else r["method"]
            un = "-" if r["unexplained"] is None else f"{r['unexplained']:.3f}"
            out.append(f"| {name} | {r['params']} | {r['psnr']:.2f} | {r['r2']:.3f} |" + (f" {r['f1']:.3f} |" if has_f1 else "") + f" {un} |")
        ceiling = report.get("ceilings", {}).get(case)
        if ceiling:
            out += ["", f"An image of Gaussian peaks only (what Ms2c draws, whatever its Domain C) made from the truth's own "
                        f"{ceiling['peaks']} peaks, sub-pixel, σ {ceiling['sigma']:g} px: PSNR {ceiling['psnr']:.2f}, "
                        f"r2 {ceiling['r2']:.3f} (`peak_ceiling`)."]
        missing = [m for m in ("trained-paper", "trained-fitted") if not any(r["method"] == m for r in sub)]
        if missing:
            out += ["", f"Not trained for this case in this run: {', '.join(missing)}."]
        fitted = next((r for r in sub if r["method"] == "trained-fitted"), None)
        if fitted:
            line = f"Fitted Domain C against the best baseline ({best['method']}): PSNR {fitted['psnr'] - best['psnr']:+.2f} dB"
            if has_f1:
                bf = max((r for r in sub if r["kind"] == "baseline"), key=lambda r: r["f1"])
                line += f"; column F1 {fitted['f1']:.3f} against the best baseline's {bf['f1']:.3f} ({bf['method']})"
            out += ["", line + "."]
        out.append("")
    out += ["### The guard's verdict", "",
            "Each model's card `expects` against `estimate_content` of the held-out movie (`livedenoise.analysis.compare_content`).", ""]
    models = list(dict.fromkeys(g["model"] for g in guard))
    cases = list(dict.fromkeys(g["case"] for g in guard))
    out += ["| case | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for c in cases:
        cell = {g["model"]: g["state"] for g in guard if g["case"] == c}
        out.append(f"| {c} | " + " | ".join(cell.get(m, "") for m in models) + " |")
    msg = next((g for g in guard if g["case"] == "real-mos2" and g["model"] == "default"), None)
    if msg:
        out += ["", f"What `default` says on real-mos2: \"{msg['message']}\""]
    if fig:
        out += ["", f"![dense samples]({fig.name})", "",
                "One held-out frame per case (central 128 x 128): noisy, truth, the best baseline, the shipped `lowdose`, "
                "the model trained with the paper's Domain C and with the fitted one."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("score")
    s.add_argument("--dir", type=Path, required=True)
    s.add_argument("--json", type=Path)
    s.add_argument("--figure", type=Path)
    s.add_argument("--cases", nargs="*", help="only these cases (default: all)")
    s.add_argument("--write", type=Path, help="docs/quality.md: replace its dense-sample section")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.cmd == "make":
        make(args.out)
    else:
        score(args)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
