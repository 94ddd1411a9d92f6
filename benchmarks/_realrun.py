"""The methods of benchmarks/realsamples.py on a case's movie, its trainings, and what is cached.

A case's work folder (``WORK/C``) holds what ``train`` made (``auto.onnx``, ``candidates/``,
``noise2atom.onnx``, each training's log and ``*.run.json``: command, exit code, wall time) and
what ``score`` measured (``baselines.json``: the truth-tuned filter and the best Gaussians, tuned
once on the case's own noise; ``score.json``: the case's rows, with the signature of every input
file, so a model replaced since is scored again and nothing else is).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livedenoise.analysis import CausalFilter
from livedenoise.engine import default_model_path

from ._casefilter import Scorer, best_sigma, temporal_mean
from ._proc import run_jobs
from .cases import Case, baselines_of
from .dense import run_model

MODELS = default_model_path().parent


@dataclass
class Method:
    """One method's causal output on every frame of a movie (``den``), in its own units."""

    name: str
    kind: str  # baseline | shipped | trained
    den: np.ndarray
    note: str = ""


def cli() -> list[str]:
    return [sys.executable, "-m", "livedenoise"]


def shipped_models(models: Path = MODELS) -> dict[str, Path]:
    """Every shipped model there is now (the lead adds ``filter`` and ``general``): name -> path."""
    return {p.stem: p for p in sorted(models.glob("*.onnx"))}


def trained_models(d: Path) -> dict[str, Path]:
    """The models trained on a case: its candidates (``--keep``), Noise2Atom trained alone, the automatic choice."""
    paths = {"selfsup": d / "candidates/selfsup.onnx", "filter": d / "candidates/filter.onnx",
             "noise2atom": d / "candidates/noise2atom.onnx", "auto": d / "auto.onnx"}
    if not paths["noise2atom"].is_file():
        paths["noise2atom"] = d / "noise2atom.onnx"
    return {k: p for k, p in paths.items() if p.is_file()}


def signature(paths: list[Path]) -> list[list]:
    """What a cached result depends on: each file's name, size and modification time."""
    return [[str(p), p.stat().st_size, int(p.stat().st_mtime)] for p in sorted(paths) if p.is_file()]


# ---------------------------------------------------------------------------- trainings


def train_jobs(root: Path, work: Path, names: list[str], *, steps: int | None, minutes: float | None,
               noise2atom: bool, method: str = "auto") -> list[tuple[str, list[str], Path]]:
    """The training commands still to run, one per case and method (a case already trained is left out)."""
    jobs = []
    for name in names:
        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        frames = root / name / "train.tif"
        if not _done(d / "auto.run.json"):
            cmd = [*cli(), "train", "--frames", str(frames), "--out", str(d / "auto.onnx"), "--keep", str(d / "candidates")]
            if method != "auto":
                cmd += ["--method", method]
            cmd += [*(["--steps", str(steps)] if steps else []), *(["--minutes", str(minutes)] if minutes else [])]
            jobs.append((f"{name}/auto", cmd, d / "auto.log"))
        if noise2atom and not _done(d / "noise2atom.run.json") and not (d / "candidates/noise2atom.onnx").is_file():
            # trainer/auto.py's own recipe for the Noise2Atom candidate
            cmd = [*cli(), "train", "--frames", str(frames), "--out", str(d / "noise2atom.onnx"), "--method", "noise2atom",
                   "--preset", "temporal", "--window", "5", "--seed", "0"]
            jobs.append((f"{name}/noise2atom", cmd, d / "noise2atom.log"))
    return jobs


def _done(record: Path) -> bool:
    return record.is_file() and json.loads(record.read_text()).get("rc") == 0


def run_trainings(jobs: list[tuple[str, list[str], Path]], nice: int, threads: int | None) -> None:
    """Each job one at a time (``nice``), its log kept, its command, exit code and wall time in ``*.run.json``."""
    for name, cmd, log in jobs:
        t0 = time.time()
        load = os.getloadavg()[0]
        res = run_jobs([(name, cmd, log)], 1, nice=nice, threads=threads)[name]
        record = {"command": shlex.join(cmd), "rc": res["rc"], "wall_s": res["wall_s"], "started": t0,
                  "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}
        log.with_suffix(".run.json").write_text(json.dumps(record, indent=1))


def train_record(d: Path, which: str) -> dict[str, Any] | None:
    p = d / f"{which}.run.json"
    return json.loads(p.read_text()) if p.is_file() else None


# ---------------------------------------------------------------------------- methods


def tuned_baselines(case: Case, work: Path) -> dict[str, Any]:
    """The truth-tuned causal filter (cases.py) and the best Gaussians alone and after the causal
    5-frame mean, tuned on the case's held-out frames once and cached."""
    path = work / case.name / "baselines.json"
    if path.is_file():
        return json.loads(path.read_text())
    held = case.held
    score = Scorer(case.truth[held])
    b = baselines_of(case)
    tuned = next(r for r in b["rows"] if r["method"] == "truth-tuned")
    out = {"truth_tuned": tuned["filter"], "truth_tuned_psnr": tuned["psnr"],
           "gaussian_sigma": best_sigma(case.movie[held], score)[1],
           "causal5_sigma": best_sigma(temporal_mean(case.movie, held, 5, 0.0), score)[1], "rows": b["rows"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def baseline_filters(tuned: dict[str, Any]) -> dict[str, CausalFilter]:
    return {"raw": CausalFilter(1, 0.0), "gaussian": CausalFilter(1, tuned["gaussian_sigma"]),
            "causal-5+gaussian": CausalFilter(5, tuned["causal5_sigma"]),
            "truth-tuned": CausalFilter(**tuned["truth_tuned"])}


def methods_on(movie: np.ndarray, tuned: dict[str, Any], models: dict[str, tuple[str, Path]],
               extra: dict[str, CausalFilter] | None = None) -> tuple[list[Method], dict[str, Any]]:
    """Every method's output on ``movie``, one stream from its first frame (as serve would see it:
    no restart at a scene change the operator did not announce); the models' cards by name."""
    out = [Method(n, "baseline", f.apply(movie)) for n, f in baseline_filters(tuned).items()]
    out += [Method(n, "bank", f.apply(movie)) for n, f in (extra or {}).items()]
    cards = {}
    for name, (kind, path) in models.items():
        den, card = run_model(path, movie)
        out.append(Method(name, kind, den))
        cards[name] = card
    return out, cards


def case_models(work: Path, name: str) -> dict[str, tuple[str, Path]]:
    """The shipped models as ``shipped:NAME``, the case's trained ones by candidate name."""
    out = {f"shipped:{n}": ("shipped", p) for n, p in shipped_models().items()}
    out |= {n: ("trained", p) for n, p in trained_models(work / name).items()}
    return out


def chosen_candidate(card) -> str | None:
    """Which candidate ``train`` wrote as auto.onnx (a shipped model's card keeps the choice under ``chosen``)."""
    t = card.training or {}
    return (t.get("chosen") or {}).get("method") or t.get("method")
