"""``livedenoise train``'s default (issue 24): train the candidates, keep the one the ground-truth-free
score puts first on frames none of them trained on, and write every candidate's score in the card.

The candidates:

* ``selfsup``: the causal self-supervised denoiser trained on the movie (:mod:`trainer.selfsup`);
* ``filter``: the classical causal filter, its window and Gaussian chosen by the same score
  (:mod:`livedenoise.analysis`'s :class:`~livedenoise.analysis.CausalFilter`, exported by
  :mod:`trainer.filtermodel`);
* ``noise2atom``: Noise2Atom (:func:`trainer.run.train`) where the content estimate says sparse
  atoms, the world it was made for (17-27 min), or on request (``--method noise2atom``);
* the shipped models, scored as they are (no training): on a movie like the one a shipped model
  was made for, it may well be the best choice, and ``train`` then says so and writes it.

The last quarter of the movie (at least 6 frames) is held out; the score (:func:`livedenoise.
analysis.score`: a causal output against the next raw frame, less the noise two raw frames show)
is computed there. Before anything, the movie is read for what changes the plan: its noise
(analog gain and offset, line noise, noise shared between frames), drift, scene changes, a
constant or saturated field, a single image or too few frames; each finding is one log line and,
where it must, a change of method that the log names.
"""

from __future__ import annotations

import itertools
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from livedenoise.analysis import (
    MAX_WINDOW,
    CausalFilter,
    SampleContent,
    Score,
    drift_per_frame,
    estimate_content,
    filter_grid,
    frame_terms,
    gaussian_blur,
    noise_model,
    scene_changes,
    summarise,
)
from livedenoise.engine import ModelCard, Normalisation, default_model_path, normalise
from livedenoise.errors import LivedenoiseError

from .domains import load_movie, paper_like
from .filtermodel import filter_card, filter_graph
from .onnxfile import with_card, write_model

METHODS = ("auto", "selfsup", "filter", "noise2atom")
SHIPPED = ("default", "rt", "temporal", "lowdose", "hops", "filter", "general")
MIN_HELD = 6  # frames held out for the score (at least)
MIN_TEMPORAL = 16  # frames below which the self-supervised model reads one frame (no held-out split)
SATURATED = 0.5  # share of pixels at the movie's maximum above which it is not trained on
MAX_DRIFT = 1.0  # px per frame a causal window can follow
# Frames the self-supervised model reads, by size. At rt size on a CPU, 8 frames take 0.8 of the
# shipped rt model's time and 16 about as long as rt (benchmarks/selfsup_speed.py), and 16 were
# no better on the real cases tried (docs/selfsupervised.md); a GPU has room for 16.
DEFAULT_WINDOW = {"rt": 8, "large": 16}
FINE_TUNE_LR = 2e-4  # fine-tuning the shipped generalist: a smaller step than training from scratch


@dataclass(frozen=True)
class AutoConfig:
    frames: Path
    out: Path
    method: str = "auto"
    seed: int = 0
    minutes: float = 15.0  # the self-supervised model's training budget
    window: int | None = None  # the self-supervised model's frames (default: DEFAULT_WINDOW by size)
    steps: int | None = None  # the self-supervised model's steps
    signal: str | None = None
    shipped: bool = True  # score the shipped models too
    selfsup: Any = None  # a trainer.selfsup.SelfSupConfig (default: its defaults); frames/steps/minutes above override it
    size: str = "rt"  # the self-supervised network's size (trainer.selfsup.SIZES)
    device: str = "auto"  # where the self-supervised network trains: auto | cuda | cpu
    noise2atom: Any = None  # a trainer.run.TrainConfig for the Noise2Atom candidate (auto: made here)
    keep: Path | None = None  # a folder to write every trained candidate's model into, beside the chosen one
    generalist: bool = True  # also fine-tune the shipped generalist (general.onnx) where its network is this one


@dataclass
class Candidate:
    name: str
    description: str
    score: Score | None = None
    seconds: float = 0.0
    onnx: bytes | None = None  # the model, card to be written
    card: ModelCard | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"description": self.description, "train_seconds": round(self.seconds, 1)}
        if self.score is not None:
            out |= self.score.to_dict()
        if self.note:
            out["note"] = self.note
        return out | self.extra


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class MoviePlan:
    """What the movie allows: held-out frames, restarts at scene changes, the self-supervised
    model's window, and the log lines that say why."""

    train: np.ndarray
    held: np.ndarray
    starts: list[int]
    window: int
    temporal: bool
    notes: list[str]
    fallback: str | None  # a reason to write the causal filter only


def plan_movie(frames: np.ndarray, single_image: bool, window: int | None) -> tuple[MoviePlan, dict[str, Any]]:
    """Read the movie for what changes the plan (module text); returns the plan and the findings
    for the card."""
    t = frames.shape[0]
    notes: list[str] = []
    fallback = None
    sample = frames[: min(t, 64)].astype(np.float32)
    noise = noise_model(sample[:1] if single_image else sample)  # tiles are not frames: no noise from their differences
    drift = drift_per_frame(sample) if t >= 4 and not single_image else 0.0
    starts = [] if single_image else scene_changes(frames)
    top = float(sample.max())
    saturated = float(np.mean(sample >= top)) if float(np.ptp(sample)) > 0 else 1.0
    findings = {"noise": noise.to_dict(), "drift_px_per_frame": round(drift, 4), "scene_changes": starts,
                "saturated_share": round(saturated, 4)}
    if float(np.ptp(sample)) == 0.0:
        fallback = "the movie is constant: there is nothing to learn"
    elif saturated > SATURATED:
        fallback = f"{saturated:.0%} of the pixels sit at the movie's maximum ({top:g}): saturated, nothing to learn there"
    notes.append(f"movie: {t} {'tiles of one image' if single_image else 'frames'} {frames.shape[1]}x{frames.shape[2]}; "
                 f"{noise.describe()}" + (f"; drift {drift:.2f} px/frame" if not single_image else ""))
    if starts:
        notes.append(f"scene change at frame {', '.join(map(str, starts))}: causal windows restart there, as serve's do at a new series")
    if drift > MAX_DRIFT:
        notes.append(f"drift {drift:.2f} px/frame is more than a causal window can follow ({MAX_DRIFT:g}): the models are "
                     "trained on it, the score says what they make of it")
    temporal = not single_image and t >= MIN_TEMPORAL and not noise.shared
    if single_image:
        notes.append("one image: no time axis, so the self-supervised model reads one frame (a blind scan line, "
                     "no temporal window) and no held-out score can be made")
    elif t < MIN_TEMPORAL:
        notes.append(f"{t} frames are too few for temporal self-supervision with frames held out (at least "
                     f"{MIN_TEMPORAL}): the self-supervised model reads one frame; the score is on frames it trained on")
    elif noise.shared:
        notes.append(f"consecutive frames share noise (difference correlation {noise.diff_corr:+.2f}, -0.5 when "
                     "independent): the frames were averaged or smoothed in time before they were saved. A temporal "
                     "model would learn that noise, so the self-supervised model reads one frame; the score, which "
                     "needs independent frames, favours methods that keep the shared noise")
    if temporal:
        n_held = max(MIN_HELD, t // 4)
        train_idx = np.arange(0, t - n_held)
        held = np.arange(t - n_held, t - 2)
    else:
        train_idx = np.arange(t)
        held = np.arange(0, max(t - 2, 0)) if not single_image else np.arange(0)
    k = (window or DEFAULT_WINDOW["rt"]) if temporal else 1
    return MoviePlan(train_idx, held, starts, k, temporal, notes, fallback), findings


def _score_output(frames: np.ndarray, den: np.ndarray, held: np.ndarray, raw_terms) -> Score | None:
    if held.size < 3 or raw_terms is None:
        return None
    return summarise(frame_terms(frames, den, held), raw_terms)


def _run_onnx(data_or_path: bytes | Path, frames: np.ndarray, starts: list[int]) -> np.ndarray:
    """A model's output on every frame, causally, through the engine (series restart at scene changes)."""
    from livedenoise.engine import Engine

    with tempfile.TemporaryDirectory(prefix="livedenoise-score-") as tmp:
        path = data_or_path
        if isinstance(data_or_path, bytes):
            path = Path(tmp) / "model.onnx"
            path.write_bytes(data_or_path)
        eng = Engine(path, provider="cpu")
        series = np.zeros(len(frames), np.int64)
        for s in starts:
            series[s:] += 1
        out = eng.infer(list(frames), series=series.tolist())
    if out.errors:
        raise LivedenoiseError(f"model failed on frame {out.errors[0][0]}: {out.errors[0][2]}")
    return np.stack(out.outputs)


def _best_filter(frames: np.ndarray, plan: MoviePlan, raw_terms, log, max_window: int = MAX_WINDOW) -> Candidate:
    """The causal filter the score puts first on the held-out frames (on all frames where none are
    held out), of at most ``max_window`` frames."""
    t0 = time.monotonic()
    held = plan.held if plan.held.size >= 3 else np.arange(max(frames.shape[0] - 2, 0))
    best: tuple[float, CausalFilter | None, Score | None] = (-math.inf, None, None)
    segments = _segments(frames.shape[0], plan.starts)
    for flt in filter_grid(max_window):
        den = np.concatenate([flt.apply(frames[a:b]) for a, b in segments])
        s = _score_output(frames, den, held, raw_terms)
        if s is not None and s.gain_db > best[0]:
            best = (s.gain_db, flt, s)
    flt = best[1] or CausalFilter()
    cand = Candidate("filter", flt.describe(), best[2], time.monotonic() - t0, extra={"filter": flt.to_dict()})
    log(f"candidate filter: {flt.describe()}" + (f", {best[2].gain_db:+.2f} dB over raw" if best[2] else ""))
    return cand


def _filter_candidate(frames: np.ndarray, plan: MoviePlan, raw_terms, log, single_image: bool, tuned: bool = True) -> Candidate:
    """The causal filter as a candidate: chosen by the score, or fixed where it cannot be (one image:
    a Gaussian alone; a fallback: a mean of 5 frames and a 1 px Gaussian)."""
    if tuned and not single_image:
        return _best_filter(frames, plan, raw_terms, log)
    fixed = CausalFilter(1 if single_image else 5, 1.0)
    return Candidate("filter", fixed.describe(), extra={"filter": fixed.to_dict()})


def _segments(t: int, starts: list[int]) -> list[tuple[int, int]]:
    cuts = [0, *[s for s in sorted(starts) if 0 < s < t], t]
    return list(itertools.pairwise(cuts))


def movie_normalisation(frames: np.ndarray) -> Normalisation:
    """Offset (median) and scale (1 / standard deviation) that bring the training frames to about
    unit spread: what the engine applies before the filter's or the self-supervised model's graph."""
    offset = float(np.median(frames))
    spread = float(frames.std())
    return Normalisation(offset=offset, scale=1.0 / spread if spread > 0 else 1.0)


def _display(values: np.ndarray) -> tuple[float, float]:
    """Raw units that become 0 and 1 in the engine's output: the background and the brightest features."""
    lo, hi = np.percentile(values, [1.0, 99.9])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _selfsup(frames: np.ndarray, plan: MoviePlan, cfg: AutoConfig, raw_terms, blend: CausalFilter | None, log) -> Candidate:
    """Train the self-supervised model, choose its post-processing by the score (a share of the
    causal filter ``blend`` blended in, a Gaussian over the blend), export it and score it."""
    from .export import to_onnx_bytes, verify
    from .run import pick_device
    from .selfsup import (
        SIZES,
        CausalDenoiser,
        SelfSupConfig,
        TrainingDiverged,
        causal_index,
        denoise_counts,
        train_selfsup,
    )

    device = pick_device(cfg.device)
    sc = replace(cfg.selfsup or SelfSupConfig(widths=SIZES[cfg.size]), frames=plan.window, seconds=cfg.minutes * 60.0)
    if cfg.steps:
        sc = replace(sc, steps=cfg.steps, eval_every=min(sc.eval_every, cfg.steps))
    m = sc.size_multiple
    t, h, w = frames.shape
    log(f"candidate selfsup: {sc.frames}-frame causal U-Net {tuple(sc.widths)} on {sc.shuffle}x{sc.shuffle} phases, "
        f"blind to each frame's own scan line; {len(plan.train)} training frames, at most {sc.steps} steps or "
        f"{cfg.minutes:g} min, scored every {sc.eval_every} steps on {len(plan.held)} held-out frames")
    t0 = time.monotonic()
    init = _generalist(sc) if cfg.generalist else None
    runs = [("scratch", sc, None)]
    if init is not None:  # a third of the budget: it starts where simulated movies of every kind left it
        runs = [("scratch", replace(sc, seconds=sc.seconds * 2 / 3), None),
                ("generalist", replace(sc, steps=max(1, sc.steps // 2), lr=FINE_TUNE_LR, seconds=sc.seconds / 3), init)]
    results, failures = {}, []
    for start, run_cfg, weights in runs:
        if init is not None:
            log(f"selfsup {'from scratch' if weights is None else 'fine-tuned from the shipped generalist'}: "
                f"at most {run_cfg.steps} steps")
        try:
            results[start] = train_selfsup(frames, plan.train, plan.held, run_cfg, starts=plan.starts, seed=cfg.seed,
                                           log=log, device=device, init=weights)
        except TrainingDiverged as exc:
            failures.append(str(exc))
    if not results:
        return Candidate("selfsup", "self-supervised causal U-Net", None, time.monotonic() - t0,
                         note=f"{'; '.join(failures)}: not a candidate")
    held_best = {k: max((g for _, g in r.curve), default=-math.inf) for k, r in results.items()}
    start = max(results, key=lambda k: held_best[k])
    result = results[start]
    if len(results) > 1:
        log("selfsup: kept the run " + ("from scratch" if start == "scratch" else "fine-tuned from the generalist")
            + " (held-out gain " + ", ".join(f"{k} {g:+.2f} dB" for k, g in held_best.items()) + ")")
    seconds = time.monotonic() - t0
    windows = causal_index(t, sc.frames, plan.starts)
    padded = np.pad(frames, ((0, 0), (0, (-h) % m), (0, (-w) % m)), mode="reflect")  # as the engine pads
    den = np.zeros_like(frames)
    sel = plan.held if plan.held.size else plan.train
    den[sel] = denoise_counts(result.model, padded, windows[sel])[:, :h, :w]
    if not np.isfinite(den).all():
        return Candidate("selfsup", "self-supervised causal U-Net", None, seconds, note="non-finite output: not a candidate")
    post = {"weight": 1.0, "filter": None, "sigma": 0.0}
    if raw_terms is not None and blend is not None:
        filtered = np.concatenate([blend.apply(frames[a:b]) for a, b in _segments(t, plan.starts)])
        best = -math.inf
        for weight in (1.0, 0.75, 0.5):
            mixed = weight * den + (1 - weight) * filtered
            for sigma in (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0):  # the filter grid's sigmas
                gain = summarise(frame_terms(frames, gaussian_blur(mixed, sigma), plan.held), raw_terms).gain_db
                if gain > best:
                    best, post = gain, {"weight": weight, "filter": blend.to_dict() if weight < 1 else None, "sigma": sigma}
        log(f"selfsup post-processing by the score: {post['weight']:g} of the network"
            + (f", {1 - post['weight']:g} of the causal filter ({blend.describe()})" if post["weight"] < 1 else "")
            + (f", then Gaussian {post['sigma']:g} px" if post["sigma"] else ""))
    exported = CausalDenoiser(sc, display=_display(den[sel]))
    exported.load_state_dict(result.model.state_dict())
    exported.set_post(post["weight"], blend.weights() if post["filter"] else None, post["sigma"])
    exported.eval()
    den[sel] = denoise_counts(exported, padded, windows[sel])[:, :h, :w]
    raw = to_onnx_bytes(exported, sc.frames)
    check = np.ascontiguousarray(padded[windows[sel[:2]]], np.float32)
    diff = verify(exported, raw, [check])
    if not diff < 1e-3:
        raise LivedenoiseError(f"exported self-supervised model differs from torch by {diff:.3g}; not written")
    return Candidate(
        "selfsup", f"self-supervised causal U-Net, {sc.frames} frames", _score_output(frames, den, plan.held, raw_terms),
        seconds, onnx=raw,
        extra={"config": sc.to_dict(), "start": start, "steps": result.steps, "best_step": result.best_step,
               "curve": result.curve, "size_multiple": m, "post": post,
               "held_out_gain_by_start": {k: round(g, 3) for k, g in held_best.items()}},
    )


def _generalist(sc):
    """The shipped generalist's weights where its network is ``sc``'s, else None."""
    from .selfsup import weights_of

    path = default_model_path().parent / "general.onnx"
    return weights_of(path, sc) if path.is_file() else None


def _noise2atom(cfg: AutoConfig, raw: np.ndarray, x: np.ndarray, plan: MoviePlan, raw_terms, pixel_size_nm, log) -> Candidate:
    """Noise2Atom (trainer.run.train, its defaults: preset temporal, 5 frames) on the training frames."""
    from livedenoise.io import write_imagej

    from .run import TrainConfig, train

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="livedenoise-n2a-") as tmp:
        movie = Path(tmp) / "train.tif"
        write_imagej(movie, raw[plan.train], pixel_size_nm=pixel_size_nm)
        n2a = cfg.noise2atom or TrainConfig(frames=movie, out=Path(tmp) / "n2a.onnx", preset="temporal", window=5,
                                            seed=cfg.seed, figures=False, progress=False)
        n2a = replace(n2a, frames=movie, out=Path(tmp) / "n2a.onnx", figures=False)
        log(f"candidate noise2atom: preset {n2a.preset}, on the {len(plan.train)} training frames")
        try:
            train(n2a, log=lambda msg: log(f"  noise2atom: {msg}"))
        except LivedenoiseError as exc:
            return Candidate("noise2atom", "Noise2Atom", None, time.monotonic() - t0, note=f"not trained: {exc}")
        data = n2a.out.read_bytes()
    den = _run_onnx(data, raw, plan.starts)
    return Candidate("noise2atom", f"Noise2Atom, preset {n2a.preset}", _score_output(x, den, plan.held, raw_terms),
                     time.monotonic() - t0, onnx=data)


def _shipped(raw: np.ndarray, x: np.ndarray, plan: MoviePlan, raw_terms, log) -> list[Candidate]:
    out = []
    models = default_model_path().parent
    for name in SHIPPED:
        path = models / f"{name}.onnx"
        if not path.is_file():
            continue
        t0 = time.monotonic()
        try:
            den = _run_onnx(path, raw, plan.starts)
        except LivedenoiseError as exc:
            log(f"shipped {name}: not scored ({exc})")
            continue
        out.append(Candidate(f"shipped:{name}", f"the shipped model {name!r}, as it is",
                             _score_output(x, den, plan.held, raw_terms), time.monotonic() - t0, onnx=path.read_bytes()))
    return out


def _sparse_atoms(content: SampleContent) -> bool:
    """Noise2Atom's world: scattered atoms, no lattice (the content estimate's own rule for the paper's Domain C)."""
    return bool(content.reliable and paper_like(content))


def train_auto(cfg: AutoConfig, log=_log) -> dict[str, Any]:
    """Train and choose (module text); returns the summary written into the card's ``training``."""
    from livedenoise import __version__

    if cfg.method not in METHODS:
        raise LivedenoiseError(f"--method {cfg.method!r}: choose {', '.join(METHODS)}")
    if cfg.minutes <= 0:
        raise LivedenoiseError("--minutes must be a positive number")
    if cfg.window is not None and not (1 <= cfg.window <= 16):
        raise LivedenoiseError(f"--window {cfg.window}: choose 1 to 16 frames")
    if cfg.size not in ("rt", "large"):
        raise LivedenoiseError(f"--size {cfg.size!r}: choose rt (CPU, live at 150 frames/s) or large (GPU)")
    from .run import check_writable, pick_device

    check_writable(Path(cfg.out))
    pick_device(cfg.device)  # a device that is not there: one line before anything runs
    frames_all, pixel_size_nm, single_image = load_movie(cfg.frames, cfg.signal)
    raw = np.asarray(frames_all, np.float32)
    plan, findings = plan_movie(raw, single_image, cfg.window or DEFAULT_WINDOW.get(cfg.size))
    for note in plan.notes:
        log(note)
    content = estimate_content(raw[0] if single_image else raw, pixel_size_nm)
    # The filter and the self-supervised model read frames scaled to about unit spread (the card's
    # normalisation: float32 sums of raw analog values of 10^4 lose digits); scores are in those units.
    norm = movie_normalisation(raw[plan.train])
    frames = normalise(raw, norm)
    raw_terms = frame_terms(frames, frames, plan.held) if plan.held.size >= 3 else None
    candidates: list[Candidate] = []
    method = cfg.method
    if plan.fallback:
        log(f"{plan.fallback}: writing the causal filter (causal mean of 5, Gaussian 1 px) instead of training")
        method = "fallback"
    if single_image and method == "auto":
        method = "selfsup"  # tiles are not a time axis: neither a temporal filter nor a score across them
    if method in ("auto", "filter", "fallback"):
        candidates.append(_filter_candidate(frames, plan, raw_terms, log, single_image, tuned=method != "fallback"))
    if method in ("auto", "selfsup"):
        flt = next((c for c in candidates if c.name == "filter"), None)
        if raw_terms is not None and (flt is None or flt.extra["filter"]["window"] > plan.window):
            # for the blend only, not a candidate: the graph blends in a filter of its own window's frames
            flt = _best_filter(frames, plan, raw_terms, lambda m: None, max_window=plan.window)
        cand = _selfsup(frames, plan, cfg, raw_terms, CausalFilter(**flt.extra["filter"]) if flt else None, log)
        if cand.onnx is None:
            log(f"selfsup: {cand.note}; the causal filter is kept instead")
            if not any(c.name == "filter" for c in candidates):
                candidates.append(_filter_candidate(frames, plan, raw_terms, log, single_image))
        candidates.append(cand)
    sparse = _sparse_atoms(content)
    if method == "noise2atom" or (method == "auto" and sparse and plan.temporal):
        candidates.append(_noise2atom(cfg, raw, frames, plan, raw_terms, pixel_size_nm, log))
    elif method == "auto":
        candidates.append(Candidate("noise2atom", "Noise2Atom", note="not trained: the movie does not look like sparse atoms "
                                    "(its world); --method noise2atom trains it anyway"))
        log(f"candidate noise2atom: {candidates[-1].note}")
    if method == "auto" and cfg.shipped and raw_terms is not None:
        candidates += _shipped(raw, frames, plan, raw_terms, log)
    usable = [c for c in candidates if c.onnx is not None or c.name == "filter"]
    scored = [c for c in usable if c.score is not None]
    if scored:
        chosen = max(scored, key=lambda c: c.score.gain_db)
    else:
        chosen = next((c for c in usable if c.name != "filter"), usable[0])
    for c in candidates:
        if c.score is not None:
            log(f"  {c.name:18s} {c.score.gain_db:+6.2f} dB over raw  ({c.description})")
    reason = (f"{chosen.score.gain_db:+.2f} dB over raw by the ground-truth-free score on {chosen.score.frames} held-out frames"
              if chosen.score is not None else "no held-out frames to score on")
    others = ", ".join(f"{c.name} {c.score.gain_db:+.2f} dB" for c in scored if c is not chosen)
    log(f"picked {chosen.name}: {reason}" + (f" ({others})" if others else ""))
    training = {
        "method": chosen.name,
        "picked_by": "ground-truth-free score (uMSE against the next frame), gain over raw on held-out frames",
        "candidates": {c.name: c.to_dict() for c in candidates},
        "movie": findings | {"frames": int(frames.shape[0]), "frame_shape": [int(frames.shape[1]), int(frames.shape[2])],
                             "held_out": [int(plan.held[0]), int(plan.held[-1]) + 3] if plan.held.size else None,  # [first, end)
                             "single_image": bool(single_image)},
        "frames_file": Path(cfg.frames).name,
        "seed": cfg.seed,
        "version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    scores = {c.name: round(c.score.gain_db, 3) for c in scored}
    data = _finish(chosen, frames, norm, plan, training, scores, content, pixel_size_nm)
    write_model(cfg.out, data)
    log(f"wrote {cfg.out} ({chosen.name})")
    if cfg.keep is not None:  # every trained candidate too, each with its card (the benchmarks compare them)
        Path(cfg.keep).mkdir(parents=True, exist_ok=True)
        for c in candidates:
            if c.name in ("filter", "selfsup", "noise2atom") and (c.onnx is not None or c.name == "filter"):
                path = Path(cfg.keep) / f"{c.name}.onnx"
                write_model(path, _finish(c, frames, norm, plan, training, scores, content, pixel_size_nm))
        log(f"candidates written to {cfg.keep}")
    return training


def _finish(chosen: Candidate, frames, norm, plan, training, scores, content, pixel_size_nm) -> bytes:
    """The chosen model's ONNX with its card (``frames``: the movie as ``norm`` makes it)."""
    import onnx

    card_extra = {"pixel_size_nm": pixel_size_nm, "expects": content.to_dict(), "scores": scores}
    if chosen.name == "filter":
        flt = CausalFilter(**chosen.extra["filter"])
        den = np.concatenate([flt.apply(frames[a:b]) for a, b in _segments(frames.shape[0], plan.starts)])
        sel = plan.held if plan.held.size else np.arange(frames.shape[0])
        card = filter_card(flt, training, normalisation=norm, **card_extra)
        return with_card(filter_graph(flt, _display(den[sel])), card)
    if chosen.name == "selfsup":
        card = ModelCard(preset="selfsup", normalisation=norm, input_frames=plan.window,
                         size_multiple=chosen.extra["size_multiple"], training=training, **card_extra)
        return with_card(chosen.onnx, card)
    # noise2atom or a shipped model: its own card, with this training's choice and scores added
    model = onnx.load_from_string(chosen.onnx)
    old = ModelCard.from_metadata({p.key: p.value for p in model.metadata_props}, source=chosen.name)
    card = replace(old, training={**old.training, "chosen": training}, scores=scores,
                   pixel_size_nm=old.pixel_size_nm or pixel_size_nm)
    return with_card(chosen.onnx, card)
