"""``train-sweep``: several trainings (seeds x presets) as Dask tasks, each model scored on the
same held-out simulated movies, one table. The trainings are :func:`trainer.run.train` as
``livedenoise train`` runs it; the scores are :func:`livedenoise.scoring.evaluate`'s
(PSNR after the affine fit, atom F1, CSS; docs/simulation.md). A task sends back a few numbers:
the models and their logs are written next to each other in the output folder, and each worker
simulates the held-out movies itself from their seeds (no pixels cross the network).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import typer

from ..errors import LivedenoiseError, short_error

app = typer.Typer()

HELD_OUT_SEED = 7000  # held-out movie i is simulated with seed HELD_OUT_SEED + i (never a training seed here)
TRAIN_MOVIE_SEED = 6000


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LivedenoiseError(f"{what} {text!r}: give integers separated by commas, e.g. 1,2,3") from None
    if not values:
        raise LivedenoiseError(f"{what}: give at least one value")
    return values


@app.command("train-sweep", rich_help_panel="Models")
def train_sweep(
    seeds: str = typer.Option("0,1,2", "--seeds", help="Training seeds, comma-separated."),
    presets: str = typer.Option("tiny", "--preset", help="Presets, comma-separated (paper, lite, tiny, rt, temporal)."),
    frames: Path = typer.Option(None, "--frames", help="Noisy movie to train on (default: a simulated 48-frame 128² movie, written to the output folder)."),
    out: Path = typer.Option(Path("sweep"), "--out", "-o", help="Folder for the models (<preset>-seed<N>.onnx), their logs and the training movie."),
    steps: int = typer.Option(None, "--steps", help="Stage-1 steps per run (default: the preset's)."),
    distil_steps: int = typer.Option(None, "--distil-steps", help="Distillation steps (default: the preset's)."),
    teachers: int = typer.Option(None, "--teachers", metavar="N", help="Stage-1 runs per training (default: the preset's)."),
    held_out: int = typer.Option(2, "--held-out", help="Held-out simulated movies each model is scored on."),
    held_out_frames: int = typer.Option(24, "--held-out-frames", help="Frames per held-out movie (128², the simulator's defaults)."),
    scheduler: str = typer.Option(None, "--scheduler", metavar="ADDRESS", help="A running Dask scheduler (tcp://HOST:8786); -o and --frames on storage its workers share."),
    workers: int = typer.Option(None, "--workers", help="Worker processes to start here (default: one per training, at most one per core or GPU)."),
    threads: int = typer.Option(None, "--threads", help="torch and onnxruntime threads per training (default: the worker's share of its cores)."),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cpu (each worker's own GPU where one per GPU is started)."),
) -> None:
    """Train each preset with each seed as Dask tasks; print each model's scores on held-out simulated movies."""
    from rich.console import Console
    from rich.table import Table

    from .. import cluster

    try:
        import torch  # noqa: F401 - only: is the train extra installed?
    except ImportError:
        raise LivedenoiseError('training needs torch: pip install -e ".[train]" (after installing torch)') from None
    try:
        import skimage  # noqa: F401 - only: is the eval extra (scikit-image, for SSIM) installed?
    except ImportError:
        raise LivedenoiseError('train-sweep scores with the eval extra: pip install -e ".[eval]"') from None
    seed_list = _ints(seeds, "--seeds")
    preset_list = [p.strip() for p in presets.split(",") if p.strip()]
    from trainer.presets import get_preset

    for p in preset_list:
        get_preset(p)  # an unknown name is one line now, not one per task
    if held_out < 1 or held_out_frames < 2:
        raise LivedenoiseError("--held-out must be at least 1 movie of --held-out-frames >= 2")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LivedenoiseError(f"cannot write to {out}: {exc.strerror or exc}") from None
    out = out.resolve()
    if frames is None:
        frames = out / "train.tif"
        _simulated_training_movie(frames)
    frames = frames.resolve()
    if not frames.is_file():
        raise LivedenoiseError(f"frames file not found: {frames}")
    jobs = [(p, s) for p in preset_list for s in seed_list]
    gpus = cluster.visible_gpus() if device in ("auto", "cuda") else []
    if scheduler is None and workers is None:
        workers = min(len(jobs), len(gpus)) if gpus else min(len(jobs), cluster.usable_cores())
    pinned = tuple(gpus[:workers]) if workers and len(gpus) >= workers else ()
    spec = cluster.ClusterSpec(scheduler=scheduler, workers=workers or 1, gpus=pinned)
    console = Console(soft_wrap=True, width=max(120, Console().width))
    rows: list[dict] = []
    with cluster.connect(spec) as client:
        n_threads = threads or cluster.worker_threads(client)
        console.print(f"{len(jobs)} trainings on {cluster.worker_count(client)} worker(s), {n_threads} thread(s) each; "
                      f"logs in {out}", markup=False)
        futures = {
            client.submit(
                sweep_run, str(frames), str(out), p, s, steps, distil_steps, teachers, held_out, held_out_frames,
                n_threads, device, pure=False,
            ): (p, s)
            for p, s in jobs
        }
        from distributed import as_completed

        for fut in as_completed(futures, loop=client.loop):
            p, s = futures[fut]
            try:
                row = fut.result()
            except Exception as exc:  # noqa: BLE001 - one training failed: one line, the others go on
                console.print(f"error: {p} seed {s}: {short_error(exc)}", markup=False, style="red")
                rows.append({"preset": p, "seed": s, "error": short_error(exc)})
                continue
            console.print(f"{p} seed {s}: PSNR {row['psnr']:.2f} dB, F1 {row['f1']:.3f} ({row['minutes']:.1f} min)", markup=False)
            rows.append(row)
    table = Table(title=f"train-sweep: scores on {held_out} held-out simulated movies of {held_out_frames} frames")
    for col in ("preset", "seed", "steps", "train min", "PSNR dB", "F1", "CSS", "polarity", "model"):
        table.add_column(col, justify="left" if col in ("preset", "model") else "right")
    for r in sorted(rows, key=lambda r: (r["preset"], r["seed"])):
        if "error" in r:
            table.add_row(r["preset"], str(r["seed"]), "-", "-", "-", "-", "-", "-", "failed: " + r["error"])
            continue
        table.add_row(r["preset"], str(r["seed"]), str(r["steps"]), f"{r['minutes']:.1f}", f"{r['psnr']:.2f}",
                      f"{r['f1']:.3f}", f"{r['css']:.3f}", f"{r['polarity']:+.3f}", Path(r["model"]).name)
    import numpy as np

    for p in preset_list:
        ok = [r for r in rows if r["preset"] == p and "error" not in r]
        if len(ok) > 1:
            table.add_row(p, "mean ± sd", "", "", _pm([r["psnr"] for r in ok], np), _pm([r["f1"] for r in ok], np),
                          _pm([r["css"] for r in ok], np), "", "")
    console.print(table)
    if any("error" in r for r in rows):
        raise typer.Exit(1)


def _pm(values: list[float], np) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _simulated_training_movie(path: Path) -> None:
    from ..io import write_imagej
    from ..sim import SimConfig, simulate_movie

    sim = simulate_movie(SimConfig(frames=48, seed=TRAIN_MOVIE_SEED))
    write_imagej(path, sim.noisy_as("<u2"), pixel_size_nm=0.04)


def sweep_run(frames: str, out: str, preset: str, seed: int, steps: int | None, distil_steps: int | None,
              teachers: int | None, held_out: int, held_out_frames: int, threads: int, device: str) -> dict:
    """On a worker: one training (its log in ``<out>/<preset>-seed<N>.log``), then its model on
    the held-out movies. Returns the scores."""
    import time

    import numpy as np
    import torch

    from trainer.run import TrainConfig, train

    from ..engine import Engine
    from ..scoring import evaluate
    from ..sim import SimConfig, simulate_movie

    torch.set_num_threads(max(1, threads))
    name = f"{preset}-seed{seed}"
    model = Path(out) / f"{name}.onnx"
    t0 = time.monotonic()
    with open(Path(out) / f"{name}.log", "w") as logf, contextlib.redirect_stderr(logf):
        def log(message: str) -> None:
            print(message, file=logf, flush=True)

        summary = train(
            TrainConfig(frames=Path(frames), out=model, preset=preset, seed=seed, steps=steps, distil_steps=distil_steps,
                        teachers=teachers, device=device, figures=False, progress=False),
            log=log,
        )
    minutes = (time.monotonic() - t0) / 60
    engine = Engine(model, provider="cpu", threads=max(1, threads))
    psnrs, f1s, csss = [], [], []
    for i in range(held_out):
        sim = simulate_movie(SimConfig(frames=held_out_frames, seed=HELD_OUT_SEED + i))
        engine.reset_series(0)
        den = np.stack(engine.infer(list(sim.noisy_as("<u2")), [0] * held_out_frames, [True] + [False] * (held_out_frames - 1)).outputs)
        rep = evaluate(den, sim.truth, sim.positions, ssim=False, groups=sim.groups)
        psnrs.append(rep.psnr)
        f1s.append(rep.f1)
        csss.append(rep.css_mean)
    print(f"{name}: done", file=sys.stderr, flush=True)
    return {
        "preset": preset, "seed": seed, "steps": summary["steps"], "minutes": minutes, "model": str(model),
        "psnr": float(np.mean(psnrs)), "f1": float(np.mean(f1s)), "css": float(np.mean(csss)),
        "polarity": float(summary["polarity"] or 0.0),
    }
