"""Issue 24 measured: denoisers trained on the movie itself and chosen by the ground-truth-free
score, against the truth-tuned causal filter, the shipped models and Noise2Atom, on the cases of
benchmarks/cases.py; the score checked against the truth; the guard's measured verdict; hops.

    python -m benchmarks.cases make --out CASES                       # the 9 cases (once)
    python -m benchmarks.realsamples train --dir CASES [--work W] [--cases C ...] [--noise2atom]
    python -m benchmarks.realsamples score --dir CASES [--work W] [--write docs/quality.md]
    python -m benchmarks.realsamples scorecheck --dir CASES [--work W] [--write docs/quality.md]
    python -m benchmarks.realsamples hops --work W [--write docs/quality.md]

Every step is resumable and caches per case in ``W/C`` (``W`` defaults to ``CASES``; the cases
folder is only read): ``train`` runs ``livedenoise train --frames CASES/C/train.tif --out
W/C/auto.onnx --keep W/C/candidates`` (its default: candidates trained and chosen by the score;
Noise2Atom among them where the content says sparse atoms) for each case not trained yet, one
case at a time under ``nice``, the log and wall time kept; ``--noise2atom`` also trains
Noise2Atom alone (trainer/auto.py's recipe) where ``train`` did not. ``score`` measures on the
held-out frames (64-111 of each 112-frame movie; dev-D: 24-47), every model run causally over the
whole movie as one stream:

* PSNR and r2 after the affine fit (benchmarks/dense.py's ``r2_and_psnr``) of raw, the best
  Gaussian, the causal 5-frame mean + the best Gaussian, the **truth-tuned causal filter**
  (benchmarks/cases.py: the bar), every shipped model (whatever ``livedenoise/models/*.onnx`` holds
  now), and the models trained on the case: the self-supervised one, the filter chosen by the score,
  Noise2Atom, and ``auto.onnx`` (the automatic choice; the candidate it is, from its card);
* atom F1 where the positions are known (columns outside the moving field dropped frame by frame),
  at each method's best-F1 threshold chosen on the 64 training frames, never on the evaluated ones;
* each method's gain over raw by the ground-truth-free score (``livedenoise.analysis.score``) on
  the held-out frames with two after them, against its true gain (:func:`_realmeasure.true_gain`);
* the guard's measured verdict (:class:`~livedenoise.analysis.MeasuredFit`) on every model, frames in
  order at 150 frames/s; when it first left "undecided", in frames and in seconds at serve's
  default ``--score-rate`` of 10 scored frames a second; against "does the model beat the
  truth-tuned filter in true PSNR";
* training time (``livedenoise train``'s wall time; the self-supervised candidate's own, from the card).

Then issue 24's targets, each met or missed with its numbers. ``scorecheck`` and ``hops``: see
benchmarks/_realchecks.py. Each writes ``W/report.json`` and, with ``--write``, its section of
docs/quality.md between the realsamples markers, from whatever the steps have measured so far.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import time
from pathlib import Path

from livedenoise.analysis import score

from ._proc import machine
from ._realmeasure import detection, evaluate_targets, misordered, replay_guard, scored_index, true_gain
from ._realrun import (
    case_models,
    chosen_candidate,
    methods_on,
    run_trainings,
    signature,
    train_jobs,
    train_record,
    tuned_baselines,
)
from ._report import replace_section
from .cases import ALL, load_case
from .dense import r2_and_psnr

BEGIN, END = "<!-- realsamples:begin (benchmarks/realsamples.py) -->", "<!-- realsamples:end -->"
FPS = 150.0
FORMAT = 1  # of the cached per-case results: a change of what they hold invalidates them


# ---------------------------------------------------------------------------- score


def score_case(root: Path, work: Path, name: str, fps: float = FPS, force: bool = False) -> dict:
    """One case's rows (module text), cached in ``W/C/score.json`` until an input file changes."""
    d = work / name
    models = case_models(work, name)
    sig = [*signature([*(p for _, p in models.values()), root / "cases.json", root / name / "movie.npy"]), FORMAT]
    cache = d / "score.json"
    if not force and cache.is_file() and json.loads(cache.read_text()).get("signature") == sig:
        return json.loads(cache.read_text())
    t0 = time.perf_counter()
    case = load_case(root, name)
    tuned = tuned_baselines(case, work)
    methods, cards = methods_on(case.movie, tuned, models)
    held, idx = case.held, scored_index(case.held)
    rows = []
    for m in methods:
        psnr, r2 = r2_and_psnr(m.den[held], case.truth[held])
        row = {"method": m.name, "kind": m.kind, "psnr": psnr, "r2": r2,
               "est_db": score(case.movie, m.den, idx).gain_db, "true_db": true_gain(m.den, case.movie, case.truth, idx)}
        if case.positions is not None:
            row |= {k: v for k, v in detection(m.den, case.positions, case.train, held).items() if k != "n_true"}
        if m.kind != "baseline":
            row["guard"] = replay_guard(case.movie, m.den, idx, fps)
        rows.append(row)
    bar = next(r["psnr"] for r in rows if r["method"] == "truth-tuned")
    for r in rows:
        r["vs_filter_db"] = r["psnr"] - bar
    auto_card = cards.get("auto")
    cands = ((auto_card.training or {}).get("candidates") or {}) if auto_card else {}
    selfsup_s = (cands.get("selfsup") or {}).get("train_seconds")
    out = {"case": name, "kind": case.info["kind"], "held_out": case.info["held_out"], "train_frames": case.info["train_frames"],
           "rows": rows, "auto_choice": chosen_candidate(auto_card) if auto_card else None,
           "card_scores": {k: v.get("gain_db") for k, v in cands.items()},
           "train": {w: train_record(d, w) for w in ("auto", "noise2atom")}, "selfsup_train_s": selfsup_s,
           "seconds": round(time.perf_counter() - t0, 1), "signature": sig}
    d.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=1))
    return out


def print_case(c: dict) -> None:
    for r in c["rows"]:
        g = r.get("guard")
        print(f"{c['case']:20s} {r['method']:22s} PSNR {r['psnr']:6.2f} ({r['vs_filter_db']:+6.2f})"
              + (f"  F1 {r['f1']:.3f}" if "f1" in r else "")
              + f"  score {r['est_db']:+6.2f} true {r['true_db']:+6.2f}"
              + (f"  guard {g['state']}" + (f" after {g['decided_after_frames']} frames" if g["decided_after_frames"]
                                             else f" after all {g['frames']} frames, leans {g['lean']}") if g else ""), flush=True)


# ---------------------------------------------------------------------------- the report


def report(root: Path, work: Path) -> dict:
    """Everything measured so far in ``work``: per case (score.json), targets, scorecheck, hops."""
    cases = {}
    for name in ALL:
        p = work / name / "score.json"
        if p.is_file():
            cases[name] = json.loads(p.read_text())
    extra = {k: json.loads((work / f"{k}.json").read_text()) for k in ("scorecheck", "hops") if (work / f"{k}.json").is_file()}
    return {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "cases_dir": str(root), "work": str(work),
            "cases": cases, "targets": evaluate_targets(cases), **extra}


def f(v, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _met(m: bool | None) -> str:
    return "not measured" if m is None else ("**met**" if m else "**missed**")


def markdown(rep: dict) -> str:
    from ._realchecks import markdown_checks

    cases = rep["cases"]
    out = ["## Trained on the movie, chosen by the score (issue 24)", "",
           f"`benchmarks/realsamples.py` ({rep['date']}, {rep['machine']}): the cases of `benchmarks/cases.py` (112 "
           "frames; the first 64 train, frames 64-111 held out; dev-D 24/24), every model run causally over the whole "
           "movie as one stream. PSNR after the affine fit, mean over the held-out frames; *vs filter*: against the "
           "truth-tuned causal filter (window up to 16 frames or exponential, any Gaussian, chosen on the truth). "
           "*auto*: what `livedenoise train` wrote (its choice in brackets); *selfsup*, *filter*, *N2A*: its candidates "
           "(`--keep`), Noise2Atom also trained alone where it did not train it.", "",
           "| case | raw | causal 5 + Gaussian | truth-tuned filter | best shipped | general | selfsup | filter (score) | N2A | auto | auto vs filter |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in cases.items():
        rows = {r["method"]: r for r in c["rows"]}
        shipped = [r for r in c["rows"] if r["kind"] == "shipped"]
        best = max(shipped, key=lambda r: r["psnr"], default=None)

        def p(m: str, rows: dict = rows) -> str:
            return f(rows[m]["psnr"]) if m in rows else "-"

        auto = rows.get("auto")
        out.append(f"| {name} | {p('raw')} | {p('causal-5+gaussian')} | **{p('truth-tuned')}** | "
                   + (f"{best['method'][8:]} {f(best['psnr'])}" if best else "-") + f" | {p('shipped:general')} | "
                   f"{p('selfsup')} | {p('filter')} | {p('noise2atom')} | "
                   + (f"**{f(auto['psnr'])}** ({c['auto_choice']}) | {auto['vs_filter_db']:+.2f}" if auto else "- | -") + " |")
    f1_cases = [c for c in cases.values() if any("f1" in r for r in c["rows"])]
    if f1_cases:
        out += ["", "Atom F1 (threshold chosen per method on the training frames; columns outside the field dropped):", "",
                "| case | raw | causal 5 + Gaussian | truth-tuned filter | lowdose | hops | selfsup | N2A | auto |", "|---|---|---|---|---|---|---|---|---|"]
        for c in f1_cases:
            rows = {r["method"]: r for r in c["rows"]}
            out.append(f"| {c['case']} | " + " | ".join(f(rows[m].get("f1"), ".3f") if m in rows else "-" for m in
                       ("raw", "causal-5+gaussian", "truth-tuned", "shipped:lowdose", "shipped:hops", "selfsup", "noise2atom", "auto")) + " |")
    out += ["", "The score (gain over raw in dB, estimated without the truth on the held-out frames with two after them) "
            "against the true gain (the same ratio of mean squared errors after the affine fit, against the truth): its "
            "bias (estimated - true) over the methods, and the pairs of methods more than 0.5 dB apart in true PSNR that "
            "it orders the other way, on the case's own noise (in brackets: pairs apart in true gain, misordered):", "",
            "| case | methods | bias mean | bias min .. max | pairs > 0.5 dB | misordered |", "|---|---|---|---|---|---|"]
    for name, c in cases.items():
        bias = [r["est_db"] - r["true_db"] for r in c["rows"] if r["method"] != "raw"]
        est = {r["method"]: r["est_db"] for r in c["rows"]}
        pairs, wrong = misordered({r["method"]: r["psnr"] for r in c["rows"]}, est)
        pairs_g, wrong_g = misordered({r["method"]: r["true_db"] for r in c["rows"]}, est)
        worst = max(wrong, key=lambda w: abs(w["true_gap_db"]), default=None)
        out.append(f"| {name} | {len(c['rows'])} | {f(sum(bias) / len(bias))} | {f(min(bias))} .. {f(max(bias))} | "
                   f"{pairs} ({pairs_g}) | {len(wrong)} ({len(wrong_g)})"
                   + (f"; worst: {worst['a']} vs {worst['b']}, {worst['true_gap_db']:+.2f} true, "
                      f"{worst['est_gap_db']:+.2f} scored" if worst else "") + " |")
    out += ["", "The guard's measured verdict (`MeasuredFit`, serve's rules) over the held-out frames in order; in brackets "
            "the scored frames after which it left \"undecided\" (seconds at serve's default `--score-rate 10`); "
            "✓ where it says what the truth says (fits where the model beats the truth-tuned filter in PSNR), ? where the "
            "held-out stream ended before it decided (the rules take 4 blocks of 8 scored frames at least):", ""]
    models = list(dict.fromkeys(r["method"] for c in cases.values() for r in c["rows"] if "guard" in r))
    out += ["| case | " + " | ".join(m.replace("shipped:", "") for m in models) + " |", "|---|" + "---|" * len(models)]
    for name, c in cases.items():
        rows = {r["method"]: r for r in c["rows"]}
        cells = []
        for m in models:
            r = rows.get(m)
            if r is None:
                cells.append("-")
                continue
            g = r["guard"]
            ok = "?" if g["state"] == "undecided" else "✓" if (g["state"] == "fits") == (r["vs_filter_db"] > 0) else "✗"
            when = f"{g['decided_after_frames']}, {g['decided_after_s_at_score_rate']:.1f} s" if g["decided_after_frames"] else f"{g['frames']} frames, leans {g['lean']}"
            cells.append(f"{g['state']} ({when}) {ok}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "Training (`livedenoise train` wall time on this shared 2-core CPU; the self-supervised candidate's own time from the card):", "",
            "| case | train wall (min) | selfsup (min) | Noise2Atom alone (min) | chosen | candidates' scores on train's held-out frames (dB) |",
            "|---|---|---|---|---|---|"]
    for name, c in cases.items():
        a, n = c["train"].get("auto") or {}, c["train"].get("noise2atom") or {}
        scores = ", ".join(f"{k} {v:+.2f}" for k, v in c["card_scores"].items() if v is not None)
        out.append(f"| {name} | {f((a.get('wall_s') or math.nan) / 60, '.1f')} | {f((c['selfsup_train_s'] or math.nan) / 60, '.1f')} | "
                   f"{f((n.get('wall_s') or math.nan) / 60, '.1f')} | {c['auto_choice'] or '-'} | {scores or '-'} |")
    options = sorted({train_options(c["train"]["auto"]["command"]) for c in cases.values() if c["train"].get("auto")})
    if options:
        out += ["", "Trained with `livedenoise train --frames C/train.tif --out W/C/auto.onnx --keep W/C/candidates "
                + " | ".join(options) + "` (`W/C/auto.run.json` has each command)."]
    out += target_lines(rep["targets"])
    out += markdown_checks(rep)
    return "\n".join(out)


def train_options(command: str) -> str:
    """The options of a recorded ``train`` command after its ``--keep DIR`` (what differs between runs)."""
    words = shlex.split(command)
    return shlex.join(words[words.index("--keep") + 2 :]) if "--keep" in words else ""


def target_lines(tg: list[dict]) -> list[str]:
    """The targets, met or missed with their numbers; the guard's one line per case (the models it got wrong named)."""
    out = ["", f"Targets ({sum(t['met'] is True for t in tg)} met, {sum(t['met'] is False for t in tg)} missed, "
           f"{sum(t['met'] is None for t in tg)} not measured; the guard's counted per model):", ""]
    guard: dict[str, list[dict]] = {}
    for t in tg:
        if t["target"].startswith("guard"):
            guard.setdefault(t["case"].split(" ")[0], []).append(t)
        else:
            out.append(f"- {t['target']}, {t['case']}: {_met(t['met'])}: {t['detail']}")
    for case, ts in guard.items():
        wrong = [t for t in ts if t["met"] is not True]
        judged = [t for t in ts if t["met"] is not None]
        out.append(f"- guard (fits where the shipped model beats the truth-tuned filter in PSNR, else does not fit; decided "
                   f"within 30 s), {case}: {_met(all(t['met'] for t in judged) if judged else None)}: "
                   f"{len(ts) - len(wrong)} of {len(ts)} models right"
                   + "".join(f"; {t['case'].split(' ', 1)[1]} ({_met(t['met'])}): {t['detail']}" for t in wrong))
    return out


def write_report(root: Path, work: Path, json_path: Path | None, write: Path | None, echo: bool = True) -> dict:
    rep = report(root, work)
    (work / "report.json").write_text(json.dumps(rep, indent=1))
    if json_path:
        json_path.write_text(json.dumps(rep, indent=1))
    text = markdown(rep)
    if echo:
        print(text)
    if write:
        replace_section(write, text, BEGIN, END)
    return rep


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    from ._realchecks import add_check_parsers, run_check

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    parsers = {}
    for cmd, text in (("train", "train on each case (livedenoise train, one case at a time)"),
                      ("score", "measure every method on each case and the targets")):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("--dir", type=Path, required=True, help="the cases (benchmarks/cases.py make --out DIR), read only")
        p.add_argument("--work", type=Path, help="trainings and results (default: --dir)")
        p.add_argument("--cases", nargs="*", default=ALL, choices=ALL)
        parsers[cmd] = p
    t = parsers["train"]
    t.add_argument("--steps", type=int, help="the self-supervised model's steps (train --steps)")
    t.add_argument("--minutes", type=float, help="its training budget (train --minutes; default train's 15)")
    t.add_argument("--method", default="auto", choices=("auto", "selfsup", "filter"),
                   help="train's --method for auto.onnx (default auto: the issue's automatic choice)")
    t.add_argument("--noise2atom", action="store_true", help="also Noise2Atom alone where train did not train it (17-27 min each)")
    t.add_argument("--nice", type=int, default=10)
    t.add_argument("--threads", type=int, help="OMP/MKL threads of each training")
    t.add_argument("--dry-run", action="store_true", help="print the commands still to run, run none")
    s = parsers["score"]
    s.add_argument("--fps", type=float, default=FPS, help="the guard's time axis: frames a second of the stream")
    s.add_argument("--force", action="store_true", help="score again even where nothing changed")
    for p in (s, *add_check_parsers(sub)):
        p.add_argument("--json", type=Path, help="also write the whole report here")
        p.add_argument("--write", type=Path, help="docs/quality.md: replace its realsamples section")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    work = args.work or args.dir
    if args.cmd == "train":
        jobs = train_jobs(args.dir, work, args.cases, steps=args.steps, minutes=args.minutes, noise2atom=args.noise2atom,
                          method=args.method)
        for name, cmd, log in jobs:
            print(f"{name}: {' '.join(cmd)}  > {log}")
        if not args.dry_run:
            run_trainings(jobs, args.nice, args.threads)
    elif args.cmd == "score":
        cases = json.loads((args.dir / "cases.json").read_text())
        for name in (n for n in args.cases if n in cases):
            print_case(score_case(args.dir, work, name, args.fps, args.force))
        rep = write_report(args.dir, work, args.json, args.write, echo=False)
        for tg in rep["targets"]:
            print(f"{_met(tg['met']).strip('*'):12s} {tg['target']}, {tg['case']}: {tg['detail']}")
    else:
        run_check(args, work)
        from ._realchecks import markdown_checks

        print("\n".join(markdown_checks(write_report(args.dir, work, args.json, args.write, echo=False))))
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
