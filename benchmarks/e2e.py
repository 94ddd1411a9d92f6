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

replay and serve run as separate processes (``python -m livedenoise ...``), like a detector and a
daemon; replay sends frames simulated beforehand (a detector costs this machine nothing). Models:
``tiny`` is the shipped, trained model; ``lite`` and ``paper`` are untrained exports of the
presets' networks (:mod:`export_presets`, needs torch once): the same graphs and cost, meaningless
output. Results go to ``docs/benchmarks.md`` (between the ``e2e`` markers) with the machine and
the versions::

    python benchmarks/e2e.py                                   # everything (9-15 min on 2 shared cores)
    python benchmarks/e2e.py --presets tiny --sizes 128 512    # a subset
    python benchmarks/e2e.py --model m.onnx --sizes 128        # any model (reported as its preset)
    python benchmarks/e2e.py --no-doc                          # print only
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
from _proc import free_addr, output_subscriber, stop, wait_until_serving

USER_RATE = {128: 150.0, 512: 15.0, 1024: 5.0}
STACK_FRAMES = {128: 64, 512: 16, 1024: 8}
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- e2e:begin (written by benchmarks/e2e.py) -->", "<!-- e2e:end -->"


def build_bench_model(path: Path, width: int = 16, depth: int = 5) -> Path:
    """A small real conv net (3x3 convs + ReLU, tanh out) with a model card, dynamic N/H/W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from livedenoise.engine import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelCard, Normalisation

    rng = np.random.default_rng(0)
    chans = [1] + [width] * (depth - 1) + [1]
    nodes, inits, x = [], [], INPUT_NAME
    for i in range(depth):
        w = rng.normal(0, 1 / np.sqrt(9 * chans[i]), (chans[i + 1], chans[i], 3, 3)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(chans[i + 1], np.float32), f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        x = f"c{i}"
        if i < depth - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Tanh", [x], [OUTPUT_NAME]))
    graph = helper.make_graph(
        nodes, "bench",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1, "H", "W"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    card = ModelCard(preset=f"bench-conv{depth}x{width}", normalisation=Normalisation(offset=70.0, scale=0.02))
    helper.set_model_props(model, {METADATA_KEY: card.to_json()})
    onnx.save(model, str(path))
    return path


# ---------------------------------------------------------------------------------- measurements


def make_engine(model: Path, provider: str, opts):
    from livedenoise.engine import Engine, EngineConfig

    return Engine(model, EngineConfig(provider=provider, max_batch=opts.max_batch, threads=opts.threads))


def usable_providers(model: Path, wanted: list[str] | None, opts) -> list[str]:
    """``cpu`` and each GPU provider a session really gets on this machine (or those asked for)."""
    import onnxruntime as ort

    from livedenoise.errors import LivedenoiseError

    names = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}
    candidates = wanted
    if candidates is None:
        candidates = ["cpu"]
        if make_engine(model, None, opts).provider != "CPUExecutionProvider":  # a GPU session (probed quietly)
            candidates += [n for p, n in names.items() if p in ort.get_available_providers()]
    out = []
    for p in candidates:
        try:
            make_engine(model, p, opts)
            out.append(p)
        except LivedenoiseError as exc:
            print(f"provider {p}: not usable here ({exc})")
    return out


def bare_loop(engine, size: int, seconds: float, min_runs: int = 2) -> tuple[float, int]:
    """Frames per second of the engine's session call alone at ``size``, at serve's batch for it."""
    batch = engine.batch_cap((size, size))
    hp, wp = engine.padded_shape((size, size))
    x = np.random.default_rng(0).normal(0, 0.3, (batch, engine.card.input_frames, hp, wp)).astype(np.float32)
    engine._run(x)  # warm (the arena, cuDNN)
    runs, t0 = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - t0 < seconds:
        engine._run(x)
        runs += 1
    return runs * batch / (time.perf_counter() - t0), runs


def make_stack(size: int, directory: Path) -> Path:
    """A simulated noisy TIFF stack for replay (frames made before the clock starts)."""
    import tifffile

    from livedenoise.sim import SimConfig, simulate_movie

    path = directory / f"stack{size}.tif"
    if not path.is_file():
        movie = simulate_movie(SimConfig(size=size, frames=STACK_FRAMES.get(size, 8), seed=5))
        tifffile.imwrite(path, movie.noisy_as("<u2"))
    return path


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "livedenoise", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def burst_fps(recv: np.ndarray, gap: float) -> float:
    """Frames per second from receipt times where a batch's frames arrive together: the frames
    after the first burst over the time from its end to the last one (a burst: receipts less than
    ``gap`` seconds apart)."""
    if len(recv) < 2:
        return float("nan")
    breaks = np.flatnonzero(np.diff(recv) > gap)
    if breaks.size == 0:  # one burst: no interval to measure, or frames faster than gap apart
        return (len(recv) - 1) / (recv[-1] - recv[0]) if recv[-1] > recv[0] else float("nan")
    first_end = breaks[0]  # index of the first burst's last frame
    return (len(recv) - 1 - first_end) / (recv[-1] - recv[first_end])


def run_stream(model: Path, size: int, stack: Path, provider: str, batch: int, opts, *, rate: float | None,
               count: int, timeout: float, gap: float = 0.02) -> dict:
    """replay -> serve -> subscriber for ``count`` frames; ``rate`` None = saturation (lossless).
    ``gap``: receipts closer than this (seconds) belong to one published batch."""
    source, publish = free_addr(), free_addr()
    serve_args = ["serve", "--model", str(model), "--source", source, "--publish", publish,
                  "--max-batch", str(opts.max_batch), "--threads", str(opts.threads), "--log-level", "WARNING",
                  "--warmup-size", f"{size}x{size}", "--provider", provider]
    if rate is None:
        serve_args += ["--lossless", "--queue", str(2 * batch)]
    serve = start(serve_args)
    ctx = zmq.Context.instance()
    sub = output_subscriber(ctx, publish)
    err = ""
    try:
        wait_until_serving(sub, serve, timeout=600)
        replay_args = ["replay", str(stack), "--loop", "--bind", source, "--count", str(count)]
        if rate is None:
            replay_args += ["--push", "--fps", "100000"]
        else:
            replay_args += ["--fps", str(rate), "--wait-subscriber", "10"]
        replay = start(replay_args)
        recv_t, sent_t, daemon_lat, stats = [], [], [], {}
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end and len(recv_t) < count:
            if not sub.poll(1000):
                if replay.poll() is not None and recv_t and time.monotonic() - recv_t[-1] / 1e9 > 60:
                    break
                continue
            topic, header, *_ = sub.recv_multipart(copy=True)
            h = msgpack.unpackb(header)
            if topic == b"stats":
                stats = h
                continue
            recv_t.append(time.time_ns())
            sent_t.append(h.get("start_time", 0))
            daemon_lat.append(h["latency_ms"])
        stop(replay)
        err = stop(serve)
    finally:
        sub.close()
        if serve.poll() is None:
            stop(serve)
    if len(recv_t) < 2:
        raise SystemExit(f"only {len(recv_t)} frames came back; serve said: {err[-2000:]}")
    recv = np.array(recv_t, np.float64) / 1e9
    if os.environ.get("E2E_DEBUG"):
        print("receipt times", np.round(recv - recv[0], 3).tolist())
    fps = burst_fps(recv, gap)
    skip = min(len(recv) // 10, 50)  # leave out the start-up transient
    e2e = (np.array(recv_t[skip:], np.float64) - np.array(sent_t[skip:], np.float64)) / 1e6
    return {
        "frames": len(recv_t),
        "fps": fps,
        "lat_p50": float(np.percentile(e2e, 50)),
        "lat_p99": float(np.percentile(e2e, 99)),
        "daemon_p50": float(np.percentile(daemon_lat[skip:], 50)),
        "daemon_p99": float(np.percentile(daemon_lat[skip:], 99)),
        "dropped": stats.get("dropped"),
        "provider": stats.get("provider"),
    }


def measure(preset: str, model: Path, size: int, provider: str, stack: Path, opts) -> dict:
    """bare, saturation, bare[, saturation, bare], live: the bare loop and the saturated stream
    alternate (twice where a stream phase is short); each stream is compared with the mean of the
    bare loops just before and after it, and the ratio is the mean over streams, so a change of
    load from elsewhere on the machine evens out instead of deciding it."""
    engine = make_engine(model, provider, opts)
    batch = engine.batch_cap((size, size))
    t0 = time.perf_counter()
    est, _ = bare_loop(engine, size, 0.0, min_runs=1)  # also the warm-up
    run_s = batch / est
    bare_s = max(min(opts.duration / 2, 5.0), 0.0)
    bares, sats = [bare_loop(engine, size, bare_s)], []
    sat_count = max(int(opts.duration * bares[0][0]), 4 * batch)  # at least 3 batches after the first
    rounds = opts.rounds if sat_count / bares[0][0] < 20 else 1
    for _ in range(rounds):
        sats.append(run_stream(model, size, stack, provider, batch, opts, rate=None, count=sat_count,
                               timeout=60 + 4 * sat_count / bares[0][0], gap=min(0.02, 0.3 * run_s)))
        bares.append(bare_loop(engine, size, bare_s))
    # each stream against the bare loops just before and after it, then the mean over streams
    ratio = float(np.mean([r["fps"] / ((bares[i][0] + bares[i + 1][0]) / 2) for i, r in enumerate(sats)]))
    bare = float(np.mean([b[0] for b in bares]))
    sat = dict(max(sats, key=lambda r: r["fps"]), fps=float(np.mean([r["fps"] for r in sats])))
    user = USER_RATE.get(size, 15.0)
    rate = min(opts.rate or user, 0.6 * min(bare, sat["fps"]))
    live_count = max(int(opts.duration * rate), 3)
    live = run_stream(model, size, stack, provider, batch, opts, rate=rate, count=live_count,
                      timeout=60 + live_count / rate + 4 * live_count / bare)
    del engine
    return {
        "preset": preset, "size": size, "provider": sat["provider"] or provider, "batch": batch,
        "bare": bare, "bares": [b[0] for b in bares], "bare_runs": sum(b[1] for b in bares), "ratio": ratio,
        "sat": sat, "sats": [r["fps"] for r in sats], "live": live, "user_rate": user, "rate": rate,
        "seconds": time.perf_counter() - t0, "run_ms": run_s * 1e3,
    }


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
        BEGIN,
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
        END,
    ]
    text = DOC.read_text() if DOC.is_file() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + "\n".join(section) + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(section) + "\n"
    DOC.write_text(text)
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
    opts = ap.parse_args()

    from export_presets import preset_model

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
        write_doc(rows, info, (load0, load1), "python benchmarks/e2e.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
