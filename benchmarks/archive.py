"""Archives and trainings past one process (livedenoise.archive, docs/distributed.md), in one run.

1. **Archive**: ``--movies`` simulated 128² movies of ``--frames`` frames (uint16 ImageJ TIFFs),
   denoised by the shipped ``--model`` (default ``rt``, the CPU model) in each of these ways,
   interleaved ``--repeats`` times (the machine's other jobs come and go):

   * ``cli``: the one-movie ``livedenoise denoise f.tif -o out.tif`` per movie, one process after
     another (what a user scripts today; process start and the CSS of input and output included);
   * ``here-1t``: the archive job in this process (no Dask), onnxruntime on one thread: **one
     process** that does not use both cores, the baseline of the ratios; ``here``: the same at
     onnxruntime's default threads (one per core): how much of the machine one process can use;
   * ``1 worker``, ``2 workers``: a Dask LocalCluster (started beforehand, not timed), one
     onnxruntime thread per worker on the CPU (the session's default on a GPU).

   frames/s of each, the ratio to ``here-1t`` and to ``cli``, and for the clusters the share of the
   workers' time not spent inside tasks (scheduling, transfers, idle at the end: "overhead") and
   that time per task in ms. Every output is checked equal, byte for byte, to the ``cli`` one.
   ``--provider cuda`` runs the same on a GPU and samples its utilisation (nvidia-smi).

2. **Training**: ``livedenoise train --teachers 3`` (preset ``tiny``, ``--steps`` per run, one
   distillation step), the stage-1 runs one after another against ``--parallel`` (2 and 3
   workers on the CPU, one torch thread each; one per GPU with ``--device cuda``), wall time of
   the whole training each.

    python -m benchmarks.archive                  # both (about 10 min on 2 shared cores)
    python -m benchmarks.archive --no-train --repeats 3
    python -m benchmarks.archive --provider cuda --device cuda
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from livedenoise.archive import DenoiseSpec, denoise_files, output_paths
from livedenoise.cluster import ClusterSpec, connect, usable_cores
from livedenoise.engine import default_model_path

from ._proc import machine


def simulate(folder: Path, movies: int, frames: int) -> list[Path]:
    from livedenoise.io import write_imagej
    from livedenoise.sim import SimConfig, simulate_movie

    paths = []
    for i in range(movies):
        sim = simulate_movie(SimConfig(frames=frames, seed=100 + i))
        p = folder / f"movie{i}.tif"
        write_imagej(p, sim.noisy_as("<u2"), pixel_size_nm=0.04, frame_time_s=0.05)
        paths.append(p)
    return paths


class GpuSampler:
    """nvidia-smi's utilisation.gpu every 0.2 s while running (mean of the samples)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.split()
                self.samples.append(float(out[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            self._stop.wait(0.2)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def archive_bench(args) -> None:
    model = default_model_path().with_name(f"{args.model}.onnx")
    cores = usable_cores()
    with tempfile.TemporaryDirectory(prefix="archive-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        movies = simulate(root, args.movies, args.frames)
        print(f"simulated {args.movies} movies of {args.frames} frames 128² in {time.perf_counter() - t0:.0f} s", flush=True)
        ref = root / "cli"
        ref.mkdir()
        total = args.movies * args.frames
        rates: dict[str, list[float]] = {}
        overheads: dict[str, list[tuple[float, float]]] = {}
        gpu: dict[str, list[float]] = {}
        provider = ["--provider", args.provider] if args.provider else []

        def cli() -> float:
            t = time.perf_counter()
            for m in movies:
                subprocess.run([sys.executable, "-m", "livedenoise", "denoise", str(m), "-o", str(ref / m.name),
                                "--model", str(model), *provider], check=True, capture_output=True)
            return total / (time.perf_counter() - t)

        def job(name: str, client, threads: int, workers: int) -> float:
            out = root / name.replace(" ", "-")
            out.mkdir(exist_ok=True)
            spec = DenoiseSpec(model=str(model), provider=args.provider, threads=threads)
            with GpuSampler() if args.provider else _Null() as sampler:
                report = denoise_files(movies, output_paths(movies, out, "tif"), spec, client=client)
            if report.failed:
                raise SystemExit(f"{name}: {[f.error for f in report.failed]}")
            if client is not None:
                per_task = report.overhead * report.wall_s * workers / max(1, report.tasks) * 1e3
                overheads.setdefault(name, []).append((report.overhead, per_task))
            if args.provider and sampler.mean is not None:
                gpu.setdefault(name, []).append(sampler.mean)
            for m in movies:
                if (out / m.name).read_bytes() != (ref / m.name).read_bytes():
                    raise SystemExit(f"{name}: {m.name} differs from the one-process output")
            return report.fps

        clusters = {}
        stack = []
        for n in (1, 2):
            cm = connect(ClusterSpec(workers=n))
            clusters[n] = cm.__enter__()
            stack.append(cm)
        try:
            for r in range(args.repeats):
                load = os.getloadavg()[0]
                rates.setdefault("cli", []).append(cli())
                if not args.provider:
                    rates.setdefault("here-1t", []).append(job("here-1t", None, 1, 1))
                rates.setdefault("here", []).append(job("here", None, 0, 1))
                for n in (1, 2):
                    threads = 0 if args.provider else 1
                    rates.setdefault(f"{n} worker{'s' * (n > 1)}", []).append(job(f"{n} worker{'s' * (n > 1)}", clusters[n], threads, n))
                print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items())
                      + f" frames/s (load {load:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)
        finally:
            for cm in stack:
                cm.__exit__(None, None, None)
    base = rates["here" if args.provider else "here-1t"]
    print(f"\n## archive: {args.movies} x {args.frames} frames 128², model {args.model}, provider {args.provider or 'cpu'}, "
          f"{cores} cores; {machine()}")
    print("| run | frames/s (mean of repeats) | x one process (`here-1t`; GPU: `here`) | x `cli` | overhead (share; ms/task) |" + (" GPU util % |" if gpu else ""))
    print("|---|---|---|---|---|" + ("---|" if gpu else ""))
    for k, v in rates.items():
        ratio = statistics.mean(a / b for a, b in zip(v, base))
        to_cli = statistics.mean(a / b for a, b in zip(v, rates["cli"]))
        ov = overheads.get(k)
        ovs = f"{100 * statistics.mean(o for o, _ in ov):.1f} %; {statistics.mean(t for _, t in ov):.0f} ms" if ov else "-"
        g = f" {statistics.mean(gpu[k]):.0f} |" if k in gpu else (" - |" if gpu else "")
        print(f"| {k} | {statistics.mean(v):.0f} ({', '.join(f'{x:.0f}' for x in v)}) | {ratio:.2f} | {to_cli:.2f} | {ovs} |{g}")


class _Null:
    mean = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def train_bench(args) -> None:
    import tifffile
    import torch

    from livedenoise.sim import SimConfig, simulate_movie
    from trainer.run import TrainConfig, train

    with tempfile.TemporaryDirectory(prefix="teachers-bench-") as tmp:
        root = Path(tmp)
        frames = root / "movie.tif"
        tifffile.imwrite(frames, simulate_movie(SimConfig(frames=16, seed=5)).noisy, photometric="minisblack")
        common = {"frames": frames, "preset": "tiny", "teachers": 3, "steps": args.steps, "distil_steps": 1,
                  "check_every": 0, "figures": False, "progress": False, "device": args.device, "seed": 2}
        runs = [("sequential", {})]
        if args.device == "cuda":
            runs.append(("parallel, one worker per GPU", {"parallel": True}))
        else:
            runs += [("parallel, 2 workers x 1 thread", {"parallel": True, "workers": 2, "threads": 1}),
                     ("parallel, 3 workers x 1 thread", {"parallel": True, "workers": 3, "threads": 1})]
        walls: dict[str, list[float]] = {}
        for r in range(args.train_repeats):
            load = os.getloadavg()[0]
            for name, extra in runs:
                t = time.perf_counter()
                train(TrainConfig(out=root / f"{len(walls)}.onnx", **common, **extra), log=lambda m: None)
                walls.setdefault(name, []).append(time.perf_counter() - t)
            print(f"train repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} s" for k, v in walls.items())
                  + f" (load {load:.2f} -> {os.getloadavg()[0]:.2f}; torch threads here {torch.get_num_threads()})", flush=True)
    seq = walls["sequential"]
    print(f"\n## --teachers 3, tiny, {args.steps} steps per run, device {args.device}, {usable_cores()} cores")
    print("| run | wall s (repeats) | x sequential |")
    print("|---|---|---|")
    for k, v in walls.items():
        print(f"| {k} | {statistics.mean(v):.0f} ({', '.join(f'{x:.0f}' for x in v)}) | "
              f"{statistics.mean(a / b for a, b in zip(v, seq)):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--movies", type=int, default=4)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--model", default="rt")
    ap.add_argument("--provider", default=None, help="cuda: the GPU (default: the CPU)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-archive", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--steps", type=int, default=4, help="stage-1 steps per run (training)")
    ap.add_argument("--train-repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(machine(), f"load {os.getloadavg()}", flush=True)
    if not args.no_archive:
        archive_bench(args)
    if not args.no_train:
        train_bench(args)


if __name__ == "__main__":
    main()
