"""The speed report: replay -> serve -> subscriber, per preset, frame size and provider, against a
bare onnxruntime loop on the same model, batch and size measured in the same run.

For each combination:

1. **bare**: the engine's own session call (``Engine._run``: ``session.run``, or the IOBinding on
   a GPU) in a loop on pre-normalised ``[batch, k, S, S]`` input, ``batch`` = what ``serve`` runs
   at that size (``max_batch``, capped by ``max_batch_pixels``);
2. **saturation**: ``replay --push --loop`` of a simulated TIFF as fast as serve takes it ->
   ``serve --lossless --queue 2*batch`` -> a subscriber here; end-to-end fps from the receipt
   times (the first batch left out), and serve's latency (receipt to publish, queueing included).
   Bare and saturation alternate (bare, stream, bare, stream, bare; one stream where it is long);
   each stream's fps is divided by the mean of the bare loops around it, the **ratio** is the mean
   of those (this machine's other jobs come and go); bare and e2e fps are the means of their phases;
3. **live**: ``replay`` (PUB) at the user's rate (150 fps at 128², 15 at 512², 5 at 1024²), or at
   60 % of what this machine sustains if that is less (above it a live stream can only drop
   frames, and the latency measures the queue bound); latency from the detector's send to the
   subscriber's receipt, p50/p99, and serve's own.

**Live latency** (``--latency``, its own report): ``replay MOVIE.tif --loop --fps RATE`` (PUB) into
``serve --model rt --atoms`` (the guard on, serve's defaults otherwise) for ``--duration`` seconds
(60 s there), a subscriber here on ``denoised``, ``atoms`` and ``stats``. Printed: serve's latency
p99 (receipt to publish) of every ``stats`` window (each covers the last second, one every 0.5 s)
and how many exceed ``--p99-target`` ms, the dropped frames, the latency from the detector's send
to the subscriber, and the atom thread's wall and CPU time per frame (``analysis_ms``,
``analysis_cpu_ms`` of every ``atoms`` message; the targets: p99 <= 2 ms); before and after the
stream, the model's bare rate at batch 1 (the engine's session call, 5 s) on the same machine, so a
slower or busier machine shows. ``--realtime P`` runs serve with ``--realtime P`` and replay under
the same real-time scheduling (a detector does not share the daemon's CPU; a replay starved by
other jobs sends bursts that serve's latency would count). ``--load N`` runs N busy-looping
processes (nice 0, another job on a core each) through the whole measurement, bare loops included:
the stalls of a slower or shared machine reproduced on a faster one. Serve's options can be changed
with ``--serve-args``. Printed, not written: the lines above and one row of the table in
``docs/benchmarks.md``::

    flock /tmp/livedenoise-cpu.lock python -m benchmarks.e2e --latency --duration 60                 # the machine as it is
    flock /tmp/livedenoise-cpu.lock python -m benchmarks.e2e --latency --duration 60 --load 1        # + a busy core
    flock /tmp/livedenoise-cpu.lock python -m benchmarks.e2e --latency --duration 60 --realtime 10   # serve real-time

replay and serve run as separate processes (``python -m livedenoise ...``), like a detector and a
daemon; replay sends frames simulated beforehand (a detector costs this machine nothing). Models:
``tiny`` is the shipped, trained model; ``lite`` and ``paper`` are untrained exports of the
presets' networks (:mod:`export_presets`, needs torch once): the same graphs and cost, meaningless
output. Results go to ``docs/benchmarks.md`` (between the ``e2e`` markers) with the machine and
the versions::

    python -m benchmarks.e2e                                   # everything (9-15 min on 2 shared cores)
    python -m benchmarks.e2e --presets tiny --sizes 128 512    # a subset
    python -m benchmarks.e2e --model m.onnx --sizes 128        # any model (reported as its preset)
    python -m benchmarks.e2e --no-doc                          # print only
"""

from __future__ import annotations

import os

# numpy's OpenBLAS pool would otherwise spin on every core after a BLAS call (CSS's dot products,
# the simulator's matrix products) and fight onnxruntime for a small machine's cores. Set for
# this process and, inherited, for replay and serve, before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from ._e2e_stream import bare_loop, make_engine, make_stack, measure, start, usable_providers
from ._proc import free_addr, output_subscriber, stop, wait_until_serving
from ._report import pct, replace_section

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- e2e:begin (written by benchmarks/e2e.py) -->", "<!-- e2e:end -->"


# ---------------------------------------------------------------------------------- live latency


def busy_load(n: int) -> list[subprocess.Popen]:
    """``n`` processes that spin on the CPU (nice 0): another job on a core each."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def live_latency(model: Path, size: int, stack: Path, opts) -> dict:
    """bare (batch 1), the live stream with every stats window kept, bare again; see the docstring."""
    load = busy_load(opts.load)
    try:
        engine = make_engine(model, "cpu", opts)
        bare_loop(engine, size, 0.0, min_runs=3, batch=1)  # warm
        bare_before, _ = bare_loop(engine, size, 5.0, batch=1)
        source, publish = free_addr(), free_addr()
        serve = start(["serve", "--model", str(model), "--source", source, "--publish", publish, "--provider", "cpu",
                       "--warmup-size", f"{size}x{size}", "--log-level", "WARNING",
                       *(["--atoms"] if opts.atoms else []), *(["--realtime", str(opts.realtime)] if opts.realtime is not None else []),
                       *opts.serve_args.split()])
        ctx = zmq.Context.instance()
        sub = output_subscriber(ctx, publish, (b"denoised", b"stats", b"atoms"))
        windows, atoms_ms, atoms_cpu, e2e = [], [], [], []
        last: dict = {}
        try:
            wait_until_serving(sub, serve, timeout=600)
            replay = start(["replay", str(stack), "--loop", "--bind", source, "--fps", str(opts.live_rate),
                            "--wait-subscriber", "10"], realtime=opts.realtime)
            t_end = None
            while t_end is None or time.monotonic() < t_end:
                if not sub.poll(1000):
                    if replay.poll() is not None or serve.poll() is not None:
                        break
                    continue
                topic, header, *_ = sub.recv_multipart(copy=True)
                h = msgpack.unpackb(header)
                if topic == b"denoised":
                    if t_end is None:  # the clock starts with the first frame out
                        t_end = time.monotonic() + opts.duration
                    if h.get("start_time"):
                        e2e.append((time.time_ns() - h["start_time"]) / 1e6)
                elif topic == b"atoms":
                    atoms_ms.append(h["analysis_ms"])
                    atoms_cpu.append(h["analysis_cpu_ms"])
                elif t_end is not None:
                    last = h
                    if h.get("latency_ms_p99") is not None:
                        windows.append(h)
            stop(replay)
            err = stop(serve)
        finally:
            sub.close()
            if serve.poll() is None:
                stop(serve)
        if not windows:
            raise SystemExit(f"no stats window with frames; serve said: {err[-2000:]}")
        bare_after, _ = bare_loop(engine, size, 5.0, batch=1)
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
    p99 = [w["latency_ms_p99"] for w in windows]
    return {
        "size": size, "rate": opts.live_rate, "bare1": (bare_before, bare_after), "windows": len(windows),
        "p99": p99, "over": sum(v > opts.p99_target for v in p99), "p50": [w["latency_ms_p50"] for w in windows],
        "received": last.get("received"), "denoised": last.get("denoised"), "dropped": last.get("dropped"),
        "e2e_p50": pct(e2e, 50), "e2e_p99": pct(e2e, 99), "atoms_frames": len(atoms_ms),
        "atoms_skipped": last.get("atoms_skipped"), "atoms_ms": (pct(atoms_ms, 50), pct(atoms_ms, 99)),
        "atoms_cpu": (pct(atoms_cpu, 50), pct(atoms_cpu, 99)),
        "stats_atoms_p99_max": max((w.get("atoms_ms_p99") or 0.0) for w in windows),
        "stats_atoms_cpu_p99_max": max((w.get("atoms_cpu_ms_p99") or 0.0) for w in windows),
    }


def latency_lines(r: dict, opts) -> list[str]:
    p99 = r["p99"]
    lines = [
        f"* bare `{opts.preset}` at batch 1, {r['size']}²: {r['bare1'][0]:.0f} frames/s before the stream,"
        f" {r['bare1'][1]:.0f} after",
        f"* {r['rate']:g} frames/s for {opts.duration:g} s: received {r['received']}, denoised {r['denoised']},"
        f" dropped **{r['dropped']}**",
        f"* serve's latency p99 per stats window ({r['windows']} windows): max **{max(p99):.1f} ms**, median"
        f" {np.median(p99):.1f} ms, **{r['over']}** over {opts.p99_target:g} ms; p50 per window: median"
        f" {np.median(r['p50']):.1f} ms, max {max(r['p50']):.1f} ms",
        f"* detector send to subscriber: p50 {r['e2e_p50']:.1f} ms, p99 {r['e2e_p99']:.1f} ms",
    ]
    if r["atoms_frames"]:
        lines.append(
            f"* atom thread (find + evidence + tracks), all {r['atoms_frames']} frames: wall p50"
            f" {r['atoms_ms'][0]:.2f} / p99 **{r['atoms_ms'][1]:.2f} ms**, CPU p50 {r['atoms_cpu'][0]:.2f} / p99"
            f" **{r['atoms_cpu'][1]:.2f} ms**; per stats window (last 256 frames) p99 at most"
            f" {r['stats_atoms_p99_max']:.2f} ms wall, {r['stats_atoms_cpu_p99_max']:.2f} ms CPU;"
            f" skipped {r['atoms_skipped']}"
        )
    lines.append("* p99 of every window, ms: " + " ".join(f"{v:.0f}" for v in p99))
    return lines


def latency_row(r: dict, opts) -> str:
    """One row of docs/benchmarks.md's live-latency table."""
    p99 = r["p99"]
    label = " ".join(f"--{k} {v}" for k, v in (("realtime", opts.realtime),) if v is not None) or "defaults"
    if opts.serve_args:
        label += f" {opts.serve_args}"
    atoms = (f"{r['atoms_ms'][0]:.2f} / {r['atoms_ms'][1]:.2f} | {r['atoms_cpu'][0]:.2f} / {r['atoms_cpu'][1]:.2f}"
             f" | {r['atoms_skipped']}") if r["atoms_frames"] else "- | - | -"
    return (f"| {label} | {opts.load} | {r['bare1'][0]:.0f} / {r['bare1'][1]:.0f} | {r['dropped']}"
            f" | **{max(p99):.1f}** / {np.median(p99):.1f} | **{r['over']}** of {r['windows']}"
            f" | {np.median(r['p50']):.1f} | {r['e2e_p50']:.1f} / {r['e2e_p99']:.1f} | {atoms} |")


# ---------------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    mem = next((int(line.split()[1]) / 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), float("nan"))
    versions = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                "numpy": np.__version__, "pyzmq": zmq.__version__}
    try:
        import onnx

        versions["onnx"] = onnx.__version__
    except ImportError:
        pass
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores, {mem:.1f} GiB RAM ({platform.system()} {platform.release()})",
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


def table(rows: list[dict]) -> list[str]:
    out = [
        "| preset | size | provider | batch | bare fps | e2e fps | ratio | sat. serve p50/p99 ms "
        "| live rate (user) | live e2e p50/p99 ms | live serve p50/p99 ms | dropped |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    short = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA", "TensorrtExecutionProvider": "TensorRT"}
    for r in rows:
        s, lv = r["sat"], r["live"]
        out.append(
            f"| {r['preset']} | {r['size']}² | {short.get(r['provider'], r['provider'])} | {r['batch']} "
            f"| {r['bare']:.3g} | {s['fps']:.3g} | **{r['ratio']:.2f}** "
            f"| {s['daemon_p50']:.0f} / {s['daemon_p99']:.0f} "
            f"| {r['rate']:.3g} ({r['user_rate']:g}) | {lv['lat_p50']:.0f} / {lv['lat_p99']:.0f} "
            f"| {lv['daemon_p50']:.0f} / {lv['daemon_p99']:.0f} | {lv['dropped']} |"
        )
    return out


def write_doc(rows: list[dict], info: dict, load: tuple, command: str) -> None:
    section = [
        "",
        f"Run {datetime.date.today().isoformat()}: `{command}`",
        "",
        f"* machine: {info['cpu']}",
        f"* versions: {info['versions']}",
        f"* load average (1 min) at the start {load[0]:.2f}, at the end {load[1]:.2f}",
        "",
        *table(rows),
        "",
        "Each row: the bare loop and the saturated stream alternate (bare, stream, bare, stream, bare; one stream"
        " where it takes 20 s or more); the ratio is each stream's fps over the mean of the bare loops around"
        " it, averaged; bare and e2e fps are the means of their phases. Per row, the fps of every phase"
        " (bare | e2e) and the frames of one saturation / live phase: "
        + "; ".join(f"{r['preset']} {r['size']}² " + " ".join(f"{v:.3g}" for v in r["bares"]) + " | "
                    + " ".join(f"{v:.3g}" for v in r["sats"]) + f", {r['sat']['frames']}/{r['live']['frames']}"
                    for r in rows) + ".",
        "",
    ]
    if not DOC.is_file():
        DOC.write_text("# Benchmarks\n")
    replace_section(DOC, "\n".join(section), BEGIN, END)
    print(f"wrote {DOC}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "lite", "paper"])
    ap.add_argument("--sizes", "--size", type=int, nargs="+", default=[128, 512, 1024], help="frame sides")
    ap.add_argument("--providers", nargs="+", default=None, help="cpu, cuda, tensorrt (default: each usable one)")
    ap.add_argument("--model", type=Path, help="one ONNX model instead of the presets")
    ap.add_argument("--duration", type=float, default=6.0, help="seconds of stream per phase (more frames where fast)")
    ap.add_argument("--rounds", type=int, default=2, help="saturation phases per row where one is short (< 20 s)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    ap.add_argument("--rate", type=float, default=None, help="live-phase input fps (default: the user's rate)")
    ap.add_argument("--no-doc", action="store_true", help=f"do not write {DOC.name}")
    lat = ap.add_argument_group("live latency (--latency)")
    lat.add_argument("--latency", action="store_true", help="the live-latency run instead of the speed report")
    lat.add_argument("--preset", default="rt", help="model of the latency run")
    lat.add_argument("--live-rate", type=float, default=150.0, help="replay's frames/s")
    lat.add_argument("--no-atoms", dest="atoms", action="store_false", help="serve without --atoms")
    lat.add_argument("--load", type=int, default=0, help="busy-looping processes beside the run (nice 0)")
    lat.add_argument("--realtime", type=int, default=None,
                     help="serve --realtime P, and replay (the detector, not on this CPU at a microscope) under SCHED_RR too")
    lat.add_argument("--p99-target", type=float, default=20.0, help="ms; windows above it are counted")
    lat.add_argument("--serve-args", default="", help="more serve options, one string")
    opts = ap.parse_args()
    if opts.latency:
        latency_main(opts)
        return

    from .export_presets import preset_model

    models = {}
    if opts.model:
        from livedenoise.engine import Engine

        models[Engine(opts.model, provider="cpu").name] = opts.model
    else:
        for preset in opts.presets:
            models[preset] = preset_model(preset)
    info = machine()
    load0 = os.getloadavg()[0]
    print(f"machine: {info['cpu']}\nversions: {info['versions']}\nload average {load0:.2f}")
    for line in table([])[:1]:
        print(line)
    rows = []
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ld-e2e-") as tmp:
        stacks = {size: make_stack(size, Path(tmp)) for size in opts.sizes}
        for preset, model in models.items():
            for provider in usable_providers(model, opts.providers, opts):
                for size in opts.sizes:
                    r = measure(preset, model, size, provider, stacks[size], opts)
                    rows.append(r)
                    phases = (" / ".join(f"{v:.3g}" for v in r["bares"]), " / ".join(f"{v:.3g}" for v in r["sats"]))
                    print(table([r])[-1], f"({r['seconds']:.0f} s; bare fps {phases[0]}; e2e fps {phases[1]})", flush=True)
    load1 = os.getloadavg()[0]
    print(f"total {time.monotonic() - t_all:.0f} s; load average at the end {load1:.2f}")
    print("ratio = end-to-end fps at saturation (lossless) / bare fps; latencies in ms (e2e: detector send -> "
          "subscriber receipt; serve: receipt -> publish)")
    if not opts.no_doc and not opts.model:
        write_doc(rows, info, (load0, load1), "python -m benchmarks.e2e " + " ".join(sys.argv[1:]))


def latency_main(opts) -> None:
    from .export_presets import preset_model

    size = opts.sizes[0] if opts.sizes != [128, 512, 1024] else 128
    info = machine()
    load0 = os.getloadavg()[0]
    print(f"machine: {info['cpu']}\nversions: {info['versions']}\nload average {load0:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ld-e2e-") as tmp:
        r = live_latency(preset_model(opts.preset), size, make_stack(size, Path(tmp)), opts)
    print("\n".join(latency_lines(r, opts)) + f"\nload average at the end {os.getloadavg()[0]:.2f}")
    print("| serve | busy processes | bare batch-1 fps before / after | dropped | p99 per window max / median ms"
          f" | windows over {opts.p99_target:g} ms | p50 (median of windows) ms | send to subscriber p50 / p99 ms"
          " | atom thread wall p50 / p99 ms | CPU p50 / p99 ms | skipped |")
    print(latency_row(r, opts))


if __name__ == "__main__":
    main()
