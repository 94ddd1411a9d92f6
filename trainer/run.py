"""``livedenoise train`` end to end: frames -> statistics -> training -> ONNX + card + figures."""

from __future__ import annotations

import datetime as _dt
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from livedenoise.analysis import SampleContent, estimate_content
from livedenoise.engine import ModelCard, Normalisation, causal_windows, normalise, to_display
from livedenoise.errors import LivedenoiseError

from .domains import DOMAINS, clean_domain, frame_statistics, gather, load_movie, sample_frames
from .presets import Preset, get_preset
from .stage1 import run_stage1


@dataclass(frozen=True)
class TrainConfig:
    frames: Path
    out: Path
    preset: str | None = None  # None: "tiny" for a new training, the checkpoint's on --resume
    steps: int | None = None
    device: str = "auto"
    seed: int = 0
    resume: Path | None = None
    flatten: float | None = None
    sample_frames: int | None = None
    norm: str | None = None
    lfc_sigma: float | None = None
    peak_variance: tuple[float, float] | None = None  # domain C kernel variance range (px^2)
    window: int | None = None  # frames in a multi-frame preset's causal window
    distil: int | None = None  # frames of the distillation teacher's centred window (0: off)
    distil_steps: int | None = None
    teachers: int | None = None  # stage-1 runs; stage 2 learns from the most upright (default: the preset's)
    checkpoint_every: int = 100
    check_every: int = 100
    progress: bool = True
    figures: bool = True
    signal: str | None = None  # the signal to train on, in a file that holds several
    # stage-1 runs as Dask tasks (livedenoise.archive): on worker processes started here
    # (``parallel``, ``workers`` of them) or on the cluster of ``scheduler``
    parallel: bool = False
    scheduler: str | None = None
    workers: int | None = None
    threads: int | None = None  # torch threads per parallel run (default: the worker's share of its cores)
    domain: str = "fitted"  # Domain C: "fitted" to what the movie holds, or the "paper"'s generator


def artefact_paths(out: Path) -> dict[str, Path]:
    stem = out.with_suffix("")
    return {
        "checkpoint": stem.with_name(stem.name + ".ckpt"),
        "losses": stem.with_name(stem.name + ".losses.png"),
        "preview": stem.with_name(stem.name + ".preview.png"),
    }


def check_writable(out: Path) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise LivedenoiseError(f"cannot write {out}: directory {parent} does not exist")
    if out.is_dir():
        raise LivedenoiseError(f"cannot write {out}: it is a directory")
    try:
        fd, name = tempfile.mkstemp(dir=parent, prefix=".livedenoise-write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise LivedenoiseError(f"cannot write {out}: {exc.strerror or exc}") from None


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise LivedenoiseError("--device cuda: no CUDA GPU is available to torch here; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise LivedenoiseError(f"--device {name!r}: choose auto, cuda or cpu")
    return name


def denoise(
    model, frames: np.ndarray, norm: Normalisation, multiple: int, device: str = "cpu", batch: int = 4, input_frames: int = 1
) -> np.ndarray:
    """Ms2c on consecutive raw ``(T, H, W)`` frames the way serve does it: normalise, reflect-pad
    to ``multiple``, causal windows for a multi-frame model, run, crop back, :func:`to_display`.
    Returns ``(T, H, W)`` in [0, 1]."""
    import torch

    x = normalise(np.asarray(frames, np.float32), norm)
    t, h, w = x.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    x = causal_windows(x, input_frames)  # (T, k, H, W); k = 1: the frames themselves
    model.eval()
    out = np.empty((t, h, w), np.float32)
    with torch.no_grad():
        for i in range(0, t, batch):
            y = model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch])).to(device)).cpu().numpy()
            out[i : i + batch] = y[:, 0, :h, :w]
    return to_display(out)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(cfg: TrainConfig, log=_log) -> dict:
    """Run a whole training; returns a summary (also stored in the model card's ``training``)."""
    out = Path(cfg.out)
    check_writable(out)
    if cfg.steps is not None and cfg.steps < 1:
        raise LivedenoiseError("--steps must be at least 1")
    if cfg.sample_frames is not None and cfg.sample_frames < 2:
        raise LivedenoiseError("--sample-frames must be at least 2")
    if cfg.flatten is not None and not cfg.flatten > 0:
        raise LivedenoiseError("--flatten SIGMA must be a positive number of pixels")
    if cfg.norm not in (None, "instance", "layer"):
        raise LivedenoiseError(f"--norm {cfg.norm!r}: choose instance or layer")
    if cfg.window is not None and not (1 <= cfg.window <= 16):
        raise LivedenoiseError(f"--window {cfg.window}: choose 1 to 16 frames")
    if cfg.distil is not None and not (0 <= cfg.distil <= 64):
        raise LivedenoiseError(f"--distil {cfg.distil}: choose 0 (off) to 64 frames")
    if cfg.distil_steps is not None and cfg.distil_steps < 1:
        raise LivedenoiseError("--distil-steps must be at least 1")
    if cfg.teachers is not None and not (1 <= cfg.teachers <= 16):
        raise LivedenoiseError(f"--teachers {cfg.teachers}: choose 1 to 16 stage-1 runs")
    if cfg.peak_variance is not None:
        lo, hi = cfg.peak_variance
        if not 0 < lo <= hi:
            raise LivedenoiseError(f"--peak-variance {lo:g} {hi:g}: need 0 < LO <= HI (px^2)")
    if cfg.domain not in DOMAINS:
        raise LivedenoiseError(f"--domain {cfg.domain!r}: choose {' or '.join(DOMAINS)}")
    frames_all, pixel_size_nm, single_image = load_movie(cfg.frames, cfg.signal)
    # What the movie's clean images hold (one image: its first tile, as an image): Domain C is
    # fitted to it, and the card keeps it for the guard of serve and denoise
    content = estimate_content(frames_all[0] if single_image else frames_all, pixel_size_nm)
    device = pick_device(cfg.device)

    import torch

    from .checkpoint import load_checkpoint
    from .export import export_model

    paths = artefact_paths(out)
    ckpt = None
    if cfg.resume is not None:
        ckpt = load_checkpoint(Path(cfg.resume))
        base = get_preset(ckpt["preset"]["name"])
        if cfg.preset is not None and cfg.preset != base.name:
            # Another preset with the same stage 1 (``rt`` from a ``tiny`` run) only distils anew.
            other = get_preset(cfg.preset)
            if (other.generator, other.critic, other.distil_window > 0) != (base.generator, base.critic, True):
                raise LivedenoiseError(
                    f"checkpoint was trained with preset {base.name!r}, not {cfg.preset!r} (only a preset with the same "
                    f"stage 1 and a distillation can continue it)"
                )
            base = other
        preset = base.with_norm(ckpt["preset"]["generator"]["norm"])
        preset = replace(preset, generator=replace(preset.generator, input_frames=ckpt["preset"]["generator"].get("input_frames", 1)))
        preset = replace(
            preset,
            sample_frames=ckpt["preset"]["sample_frames"],
            lfc_sigma=ckpt["preset"]["lfc_sigma"],
            clean_variance=tuple(ckpt["preset"].get("clean_variance", (1.0, 10.0))),
            ema=ckpt["preset"].get("ema", 0.0),
            domain=ckpt["preset"].get("domain", "paper"),
            clean_content=ckpt["preset"].get("clean_content"),
        )
        if base.name == ckpt["preset"]["name"]:
            preset = replace(
                preset,
                distil_window=ckpt["preset"].get("distil_window", 0),
                distil_steps=ckpt["preset"].get("distil_steps", 1200),
                teachers=ckpt["preset"].get("teachers", 1),
            )
        norm = Normalisation(**ckpt["normalisation"])
        idx = np.asarray(ckpt["frame_indices"])
        if idx.max() >= len(frames_all):
            raise LivedenoiseError(f"checkpoint {cfg.resume} was made from another movie (frame {idx.max()} missing)")
        frames = gather(frames_all, idx, preset.generator.input_frames)
        seed = ckpt.get("base_seed", ckpt["seed"])  # the training's seed (its stage-1 runs have their own)
        log(f"resuming from {cfg.resume} at step {ckpt['state']['step']}")
    else:
        preset: Preset = get_preset(cfg.preset or "tiny")
        if cfg.norm:
            preset = preset.with_norm(cfg.norm)
        if cfg.sample_frames:
            preset = replace(preset, sample_frames=cfg.sample_frames)
        if cfg.lfc_sigma:
            preset = replace(preset, lfc_sigma=cfg.lfc_sigma)
        if cfg.peak_variance is not None:
            preset = replace(preset, clean_variance=(float(cfg.peak_variance[0]), float(cfg.peak_variance[1])))
        if cfg.window is not None:
            preset = replace(preset, generator=replace(preset.generator, input_frames=cfg.window))
        preset = replace(preset, domain=cfg.domain, clean_content=content.to_dict())
        seed = cfg.seed
        frames, idx = sample_frames(frames_all, preset.sample_frames, np.random.default_rng(seed), preset.generator.input_frames)
    if cfg.distil is not None:
        preset = replace(preset, distil_window=cfg.distil)
    if cfg.distil_steps is not None:
        preset = replace(preset, distil_steps=cfg.distil_steps)
    if cfg.teachers is not None:
        preset = replace(preset, teachers=cfg.teachers)
    elif not preset.distil_window:
        preset = replace(preset, teachers=1)  # --distil 0: the paper's Ms2c of one run is exported
    if single_image:
        if preset.generator.input_frames > 1:
            raise LivedenoiseError(
                f"{cfg.frames} holds one image: preset {preset.name!r} reads {preset.generator.input_frames} "
                "consecutive frames; train a single-frame preset (tiny, paper) on it, or give a movie"
            )
        if preset.distil_window:
            log(f"{cfg.frames} holds one image (trained as its {len(frames_all)} tiles): no distillation, which "
                "averages consecutive frames; one stage-1 run, its Ms2c exported")
            preset = replace(preset, distil_window=0, teachers=1)
    if preset.teachers > 1 and not preset.distil_window:
        raise LivedenoiseError(f"--teachers {preset.teachers}: several stage-1 runs need the distillation (--distil 5)")
    k = preset.generator.input_frames
    latest = frames[:, -1] if k > 1 else frames  # the sampled frames themselves, without their history
    # What Ms2c is trained on: a multi-frame preset's Ms2c reads the mean of each causal window.
    inputs = frames.mean(axis=1, dtype=np.float32) if k > 1 else frames
    if ckpt is None:
        norm = frame_statistics(inputs, cfg.flatten)
    steps = cfg.steps or preset.steps
    torch.manual_seed(seed)
    stored = SampleContent.from_dict(preset.clean_content) if preset.clean_content else None
    domain_line = clean_domain(preset.domain, stored, preset.crop, preset.clean_variance)[1]
    log(domain_line)
    log(
        f"preset {preset.name} ({preset.generator.norm} norm) on {device}: {len(frames)} of {len(frames_all)} frames "
        f"{frames.shape[-2]}x{frames.shape[-1]}" + (f" ({k}-frame causal windows)" if k > 1 else "") + f", normalisation offset {norm.offset:.4g} scale {norm.scale:.4g}"
        + (f" flatten sigma {norm.flatten_sigma:g}" if norm.flatten_sigma else "")
        + f", Ms2b sigma {preset.lfc_sigma:g}, domain C peak variance {preset.clean_variance[0]:g}-{preset.clean_variance[1]:g}"
        + f", {steps} steps, seed {seed}"
        + (f" ({preset.teachers} runs)" if preset.teachers > 1 else "")
        + (f", then distilled from a {preset.distil_window}-frame view ({preset.distil_steps} steps)" if preset.distil_window else "")
    )
    runs = run_stage1(cfg, preset, inputs, norm, idx, seed, steps, device, ckpt, paths, log)
    upright = [r for r in runs if r["upright"]]
    if not upright:
        last = runs[-1]["state"]
        raise LivedenoiseError(
            f"Ms2c is still inverted (polarity {last['polarity']:+.3f}) after {last['reinits']} re-initialisations "
            f"(paper failure case 1): not exported; try another --seed"
        )
    from .domains import NoisyDomain
    from .loop import generator_from_state, mean_recent, polarity, probe_batch

    # One probe batch for every run (the training seed's): their polarities are then comparable.
    probe = probe_batch(NoisyDomain(inputs, norm, preset.crop), preset, seed).to(device)
    ms2cs = [generator_from_state(preset, r["ms2c"], device) if r["upright"] else None for r in runs]
    for r, ms2c in zip(runs, ms2cs):
        r["probe_polarity"] = polarity(ms2c, probe) if ms2c is not None else None
    chosen = max(upright, key=lambda r: r["probe_polarity"])
    if len(runs) > 1:
        log("stage 1: polarity of each run's Ms2c on one probe batch: "
            + ", ".join(f"run {r['index'] + 1} " + (f"{r['probe_polarity']:+.3f}" if r["upright"] else "inverted") for r in runs)
            + f"; stage 2 learns from run {chosen['index'] + 1}, the most upright (it predicts the distilled "
            "model's atom F1 across seeds, docs/training.md)")
    teacher = ms2cs[runs.index(chosen)]
    model, net, distilled = teacher, preset.generator, None
    if preset.distil_window:
        model, distilled = _distil(
            cfg, preset, teacher, probe, chosen["probe_polarity"], frames_all, idx, inputs, norm,
            net.size_multiple, device, seed, paths, log,
        )
        if distilled["used"]:
            net = preset.student_net
    m = net.size_multiple  # of the exported Ms2c

    from livedenoise import __version__

    def final(state: dict) -> dict[str, float]:
        return {name: mean_recent(state["history"], key) for name, key in
                (("L_cycle", "cycle"), ("L_lfc", "lfc"), ("adv", "adv"), ("wdist", "wdist"))}

    per_run = [
        {"seed": r["seed"], "steps": r["state"]["step"], "final_losses": final(r["state"]),
         "converged_at": r["state"]["converged_at"], "polarity": r["state"]["polarity"],
         "probe_polarity": r["probe_polarity"], "reinitialisations": r["state"]["reinits"],
         "train_seconds": round(r["state"]["elapsed_s"], 1), "chosen": r is chosen}
        for r in runs
    ]
    mine = per_run[runs.index(chosen)]
    training = {
        "steps": sum(r["steps"] for r in per_run),  # all stage-1 runs together
        "seed": seed,
        "norm": preset.generator.norm,
        "conv": preset.generator.conv,
        "lfc_sigma": preset.lfc_sigma,
        "peak_variance": list(preset.clean_variance),
        "domain_c": {"choice": preset.domain, "generator": domain_line},
        "ema": preset.ema,
        "frames_file": Path(cfg.frames).name,
        "frames_used": len(frames),
        "frame_shape": [int(frames.shape[-2]), int(frames.shape[-1])],
        "frame_stats": {
            "median": float(np.median(latest)),
            "mean": float(latest.mean()),
            "std": float(latest.std()),
            "p0.1": float(np.percentile(latest, 0.1)),
            "p99.9": float(np.percentile(latest, 99.9)),
        },
        # of the stage-1 run the exported model comes from (all runs: "teachers")
        "final_losses": mine["final_losses"],
        "converged_at": mine["converged_at"],
        "polarity": distilled["polarity"] if distilled and distilled["used"] else mine["probe_polarity"],
        "distil": distilled,
        "teachers": per_run,
        "reinitialisations": sum(r["reinitialisations"] for r in per_run),
        "events": [(f"run {r['index'] + 1}: " if len(runs) > 1 else "") + e for r in runs for e in r["state"]["events"]]
        + ([distilled["event"]] if distilled and "event" in distilled else []),
        "train_seconds": round(sum(r["state"]["elapsed_s"] for r in runs), 1),
        "device": device,
        "version": __version__,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    card = ModelCard(
        preset=preset.name,
        normalisation=norm,
        input_frames=preset.generator.input_frames,
        size_multiple=m,
        training=training,
        pixel_size_nm=pixel_size_nm,  # serve warns when a stream's pixels differ
        expects=content.to_dict(),  # serve and denoise warn when a stream does not look like it
    )
    check = normalise(frames[: min(2, len(frames))], norm)
    check = check if k > 1 else check[:, None]
    h, w = check.shape[-2:]
    check_inputs = [check[:, :, : h - h % m, : w - w % m], check[:1, :, :128, :128]]
    result = export_model(model, out, card, check_inputs, log=log)
    summary = dict(training, export=result, out=str(out), checkpoint=str(paths["checkpoint"]))
    if cfg.figures:
        from .report import loss_curves, preview

        loss_curves([r["state"]["history"] for r in runs], paths["losses"], title=f"Noise2Atom {preset.name}: {out.name}")
        shown = np.asarray(frames_all[: min(4, len(frames_all))], np.float32)
        den = denoise(model, shown, norm, m, device, input_frames=k)
        scores = preview(shown, den, paths["preview"], title=f"{out.name}: noisy (top) | denoised (bottom)")
        summary["preview_css"] = scores
        log(f"figures: {paths['losses']}, {paths['preview']} (CSS noisy {scores['css_noisy']:.3f} -> denoised {scores['css_denoised']:.3f})")
    losses_ = training["final_losses"]
    log(
        f"done: {training['steps']} steps in {training['train_seconds'] / 60:.1f} min"
        + (f" ({len(runs)} stage-1 runs; losses of run {chosen['index'] + 1})" if len(runs) > 1 else "")
        + f", L_cycle {losses_['L_cycle']:.4f} (paper: < {0.05}), L_lfc {losses_['L_lfc']:.4f} (paper: < {0.1}), "
        f"polarity {training['polarity']:+.3f}"
        + (f"; distilled in {distilled['seconds'] / 60:.1f} min, L1 to teacher {distilled['l1']:.4f}" if distilled else "")
    )
    return summary


def _distil(cfg, preset, teacher, probe, teacher_polarity, frames_all, idx, inputs, norm, multiple, device, seed, paths, log):
    """Stage 2 (:mod:`trainer.distil`): the stage-1 Ms2c on centred window means -> targets -> a
    student reading what stage 1 read (``inputs``: the frames, or a multi-frame preset's causal
    window means). Returns ``(model to export, card entry)``; the teacher is exported if the
    student comes out inverted."""
    import time

    import torch

    from .distil import DistilConfig, centred_means, dihedral_mean, distil
    from .loop import polarity
    from .networks import WindowMean

    k = preset.distil_window
    t0 = time.monotonic()
    log(f"distillation: teacher = stage-1 Ms2c on the mean of {k} frames centred on each of {len(idx)} frames, averaged over 8 flips and rotations")
    dcfg = DistilConfig(window=k, steps=preset.distil_steps)
    try:
        means = centred_means(frames_all, idx, k)
        targets = dihedral_mean(lambda f: denoise(teacher, f, norm, multiple, device), means) * 2.0 - 1.0
        student, losses = distil(
            preset.student_net, normalise(inputs, norm), targets, dcfg,
            crop=preset.crop, seed=seed, device=device, log=log, progress=cfg.progress,
        )
    except KeyboardInterrupt:
        raise LivedenoiseError(
            f"interrupted during distillation; stage 1 is saved: --resume {paths['checkpoint']} repeats the distillation"
        ) from None
    corr = polarity(student, probe)
    net = preset.student_net
    entry = {
        "window": k, "steps": dcfg.steps, "lr": dcfg.lr, "batch": dcfg.batch, "teacher_views": 8,
        "network": {"widths": list(net.widths), "xception": list(net.xception), "n_res": net.n_res, "shuffle": net.shuffle},
        "l1": float(np.mean(losses[-20:])), "polarity": corr, "teacher_polarity": teacher_polarity,
        "seconds": round(time.monotonic() - t0, 1),
    }
    if corr < 0:
        msg = f"WARNING distilled Ms2c inverted (polarity {corr:+.3f}); exporting the stage-1 Ms2c instead"
        log(msg)
        entry["used"] = False
        entry["event"] = msg
        return teacher, entry
    entry["used"] = True
    if preset.generator.input_frames > 1:
        student = torch.nn.Sequential(WindowMean(), student)  # reads the causal window, as stage 1's Ms2c
    return student, entry
