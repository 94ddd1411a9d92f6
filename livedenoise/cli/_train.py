"""``train`` (owned by the train work): its command group, merged into the app by ``cli/__init__.py``.

``livedenoise train`` trains denoisers on a movie and exports the one the ground-truth-free score
puts first (``--method auto``, :mod:`trainer.auto`), or one method: the self-supervised causal
model, the classical causal filter, or Noise2Atom (``--method noise2atom``, also what ``--preset``
and ``--resume`` imply: their options are Noise2Atom's). torch is imported only inside the command
body (``trainer`` needs the ``train`` extra).
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import LivedenoiseError

app = typer.Typer()


@app.command("train", rich_help_panel="Models")
def train(
    frames: Path = typer.Option(..., "--frames", help="Noisy movie (T, H, W), frames >= 128x128: TIFF, .npy, Nion .ndata/.h5, or (formats extra) any image file RosettaSciIO reads (.emd, .dm3/.dm4, .ser/.emi, .mrc, .hspy, .zspy ...). Its pixel size goes into the model card."),
    signal: str = typer.Option(None, "--signal", help="In a file with several signals (HAADF, BF, EDS ...): the one to train on, by title or index."),
    out: Path = typer.Option(..., "--out", "-o", help="ONNX model to write; checkpoint and figures go next to it."),
    method: str = typer.Option(None, "--method", help="auto (default): train the self-supervised model and choose the causal filter's window and Gaussian, add Noise2Atom where the movie holds sparse atoms, score them and the shipped models on held-out frames, keep the best | selfsup | filter | noise2atom (also implied by any of Noise2Atom's own options: --preset, --resume, --domain ...)."),
    minutes: float = typer.Option(15.0, "--minutes", help="Training budget of the self-supervised model (it also stops at its steps)."),
    size: str = typer.Option("rt", "--size", help="The self-supervised network: rt (runs at least as fast as the shipped rt model on a CPU: live at 150 frames/s on 2 cores) | large (for a GPU)."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="The self-supervised model from scratch only (default: also fine-tuned from the shipped generalist general.onnx, where its window and size match, and the run with the better held-out score kept)."),
    keep: Path = typer.Option(None, "--keep", metavar="DIR", help="Also write every trained candidate (filter.onnx, selfsup.onnx, noise2atom.onnx) into DIR, each with its card."),
    preset: str = typer.Option(None, "--preset", help="paper | lite | tiny | rt (tiny distilled into a 2x faster CPU net) | temporal (tiny on the mean of the current and 2 previous frames); default tiny; on --resume, the checkpoint's (a tiny checkpoint may be distilled anew as rt)."),
    steps: int = typer.Option(None, "--steps", help="Total training steps (batches); default from the preset."),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cpu."),
    seed: int = typer.Option(0, "--seed", help="Random seed (bit-for-bit reproducible on CPU)."),
    resume: Path = typer.Option(None, "--resume", help="Continue exactly from this checkpoint (<out>.ckpt)."),
    flatten: float = typer.Option(None, "--flatten", metavar="SIGMA", help="Subtract a Gaussian low-pass of this sigma (px) first (background gradients; applied identically at serve time)."),
    sample_frames: int = typer.Option(None, "--sample-frames", help="Frames sampled for training (paper: about 120)."),
    norm: str = typer.Option(None, "--norm", help="instance (per channel, paper text) | layer (per sample, released code)."),
    lfc_sigma: float = typer.Option(None, "--lfc-sigma", help="Sigma (px) of Ms2b's fixed 33x33 Gaussian (default from the preset)."),
    peak_variance: tuple[float, float] = typer.Option(
        None,
        "--peak-variance",
        metavar="LO HI",
        help="Variance range (px^2) of domain C's Gaussian peaks, e.g. 0.5 1.5 for atoms of sigma ~0.9 px (default from the preset; paper: 1 10).",
    ),
    domain: str = typer.Option("fitted", "--domain", help="Domain C, Ms2c's picture of a clean image: fitted (estimated from the movie: density, width, brightness, a lattice's cell; the paper's generator where the movie is sparse like the paper's world) | paper (75-150 scattered Gaussian peaks per 256^2 px)."),
    window: int = typer.Option(None, "--window", metavar="K", help="Frames in the causal window the model reads: the current one and K-1 before it (self-supervised: default 8 at --size rt, 16 at large; Noise2Atom's Ms2c: default 3 for temporal, 1 otherwise)."),
    distil: int = typer.Option(None, "--distil", metavar="K", help="Then distil Ms2c (same input: one frame, or the causal window) from the trained one applied to the mean of K frames centred on each frame (default 5 for tiny, 0 = off otherwise)."),
    distil_steps: int = typer.Option(None, "--distil-steps", help="Steps of the distillation (default from the preset: 600 for tiny and rt, else 1200)."),
    teachers: int = typer.Option(None, "--teachers", metavar="N", help="Run stage 1 N times (seeds SEED, SEED+1000, ...) and distil the most upright run (highest polarity): a result that rides less on the seed (default from the preset; needs --distil)."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Steps between checkpoints."),
    parallel: bool = typer.Option(False, "--parallel", rich_help_panel="Cluster", help="Run the --teachers stage-1 runs at once, as Dask tasks on worker processes started here (one per core, or per GPU; distributed extra)."),
    scheduler: str = typer.Option(None, "--scheduler", metavar="ADDRESS", rich_help_panel="Cluster", help="Run the stage-1 runs on this Dask scheduler's workers (tcp://HOST:8786); -o must be on storage they share."),
    workers: int = typer.Option(None, "--workers", rich_help_panel="Cluster", help="With --parallel: worker processes to start (default: one per run, at most one per core or GPU)."),
    threads: int = typer.Option(None, "--threads", rich_help_panel="Cluster", help="With --parallel/--scheduler: torch threads per stage-1 run (default: the worker's share of its machine's cores). A run's weights depend on it on the CPU."),
) -> None:
    """Train denoisers on a noisy movie, keep the best by a score without ground truth, export it to ONNX."""
    try:
        import torch  # noqa: F401 - only: is the train extra installed?
    except ImportError:
        raise LivedenoiseError('training needs torch: pip install -e ".[train]" (after installing torch)') from None
    from trainer.auto import METHODS, AutoConfig, train_auto
    from trainer.run import TrainConfig
    from trainer.run import train as run_training

    noise2atom_only = {  # given, these options say Noise2Atom
        "--preset": preset, "--resume": resume, "--flatten": flatten, "--sample-frames": sample_frames, "--norm": norm,
        "--lfc-sigma": lfc_sigma, "--peak-variance": peak_variance, "--distil": distil, "--distil-steps": distil_steps,
        "--teachers": teachers, "--parallel": parallel or None, "--scheduler": scheduler, "--workers": workers,
        "--threads": threads, "--domain": None if domain == "fitted" else domain,
    }
    given = [name for name, value in noise2atom_only.items() if value is not None]
    if method is None:
        method = "noise2atom" if given else "auto"
    if method not in METHODS:
        raise LivedenoiseError(f"--method {method!r}: choose {', '.join(METHODS)}")
    if method != "noise2atom" and given:
        raise LivedenoiseError(f"{', '.join(given)}: Noise2Atom's option(s), not for --method {method}")
    if method != "noise2atom":
        train_auto(AutoConfig(frames=frames, out=out, method=method, seed=seed, minutes=minutes, window=window,
                              steps=steps, signal=signal, keep=keep, size=size, device=device,
                              generalist=not from_scratch))
        return
    run_training(
        TrainConfig(
            frames=frames,
            out=out,
            preset=preset,
            steps=steps,
            device=device,
            seed=seed,
            resume=resume,
            flatten=flatten,
            sample_frames=sample_frames,
            norm=norm,
            lfc_sigma=lfc_sigma,
            peak_variance=peak_variance,
            window=window,
            distil=distil,
            distil_steps=distil_steps,
            teachers=teachers,
            checkpoint_every=checkpoint_every,
            signal=signal,
            parallel=parallel,
            scheduler=scheduler,
            workers=workers,
            threads=threads,
            domain=domain,
        )
    )
