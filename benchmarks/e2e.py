"""End-to-end benchmark: replay -> serve -> subscriber on one machine, against a bare onnxruntime loop.

Three measurements in one run, on the same model, provider, batch and frame size:

1. **bare**: ``session.run`` in a loop on pre-normalised ``[max_batch, 1, S, S]`` input (what the
   network alone costs);
2. **saturation**: ``replay --push`` as fast as it can -> ``serve --lossless`` -> a subscriber;
   end-to-end fps = denoised frames received / time, nothing dropped;
3. **live**: ``replay`` (PUB) at the user's rate (150 fps at 128², 15 at 512², 5 at 1024²) ->
   ``serve`` -> subscriber; latency from the detector's send (``start_time``) to the subscriber's
   receipt, p50/p99, plus the daemon's own receipt-to-publish latency.

replay and serve run as separate processes (``python -m livedenoise ...``), like a detector and a
daemon; the subscriber runs here. Usage::

    python benchmarks/e2e.py --size 128 --duration 20
    python benchmarks/e2e.py --size 512 --model livedenoise/models/default.onnx

Without ``--model`` it uses the shipped default model when present, else builds a small
convolutional one (needs ``onnx``: the ``test`` extra).
"""

from __future__ import annotations

import os

# numpy's OpenBLAS pool would otherwise spin on every core after a BLAS call (CSS's dot products,
# the simulator's matrix products) and fight onnxruntime for a small machine's cores. Set for
# this process and, inherited, for replay and serve, before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from _proc import free_addr  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

USER_RATE = {128: 150.0, 512: 15.0, 1024: 5.0}


def build_bench_model(path: Path, width: int = 16, depth: int = 5) -> Path:
    """A small real conv net (3x3 convs + ReLU, tanh out) with a model card, dynamic N/H/W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from livedenoise.modelcard import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelCard, Normalisation

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


def bare_loop(model: Path, size: int, batch: int, provider: str | None, threads: int, seconds: float) -> float:
    """Frames per second of ``session.run`` alone, through the daemon's own Engine session."""
    from livedenoise.engine import Engine
    from livedenoise.modelcard import INPUT_NAME, OUTPUT_NAME

    engine = Engine(model, provider=provider, max_batch=batch, threads=threads)
    k = engine.card.input_frames
    x = np.random.default_rng(0).normal(0, 1, (batch, k, size, size)).astype(np.float32)
    for _ in range(3):
        engine.session.run([OUTPUT_NAME], {INPUT_NAME: x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        engine.session.run([OUTPUT_NAME], {INPUT_NAME: x})
        n += batch
    return n / (time.perf_counter() - t0)


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "livedenoise", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""


def run_stream(model: Path, size: int, opts, *, rate: float | None, seconds: float) -> dict:
    """replay -> serve -> subscriber for ``seconds`` of stream; rate None = saturation (lossless)."""
    source, publish = free_addr(), free_addr()
    serve_args = ["serve", "--model", str(model), "--source", source, "--publish", publish,
                  "--max-batch", str(opts.max_batch), "--threads", str(opts.threads), "--log-level", "WARNING",
                  "--warmup-size", f"{size}x{size}"]
    if opts.provider:
        serve_args += ["--provider", opts.provider]
    if rate is None:
        serve_args.append("--lossless")
    serve = start(serve_args)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"denoised")
    sub.setsockopt(zmq.SUBSCRIBE, b"stats")
    sub.connect(publish)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # serve is up and our subscription is in effect
            if sub.poll(200) and sub.recv_multipart()[0] == b"stats":
                break
            if serve.poll() is not None:
                raise SystemExit(f"serve exited: {stop(serve)}")
        fps = rate if rate is not None else 100_000.0
        count = int(seconds * (rate if rate is not None else 1.2 * opts.expected_fps)) + 1
        replay_args = ["replay", "--synthetic", "--size", str(size), "--fps", str(fps), "--bind", source,
                       "--count", str(count)]
        replay_args += ["--push"] if rate is None else ["--wait-subscriber", "10"]
        replay = start(replay_args)
        recv_t, sent_t, daemon_lat, stats = [], [], [], {}
        t_end = time.monotonic() + seconds + 15
        while time.monotonic() < t_end:
            if not sub.poll(3000 if recv_t else 15000):
                break
            topic, header, *_ = sub.recv_multipart(copy=True)
            h = msgpack.unpackb(header)
            if topic == b"stats":
                stats = h
                continue
            recv_t.append(time.time_ns())
            sent_t.append(h.get("start_time", 0))
            daemon_lat.append(h["latency_ms"])
            if len(recv_t) >= count:
                break
        stop(replay)
        err = stop(serve)
    finally:
        sub.close()
        if serve.poll() is None:
            stop(serve)
    if len(recv_t) < 10:
        raise SystemExit(f"only {len(recv_t)} frames came back; serve said: {err[-2000:]}")
    recv = np.array(recv_t, np.float64) / 1e9
    skip = min(len(recv) // 10, 50)  # leave out the start-up transient
    recv_s = recv[skip:]
    e2e = (np.array(recv_t[skip:], np.float64) - np.array(sent_t[skip:], np.float64)) / 1e6
    return {
        "frames": len(recv_t),
        "fps": (len(recv_s) - 1) / (recv_s[-1] - recv_s[0]),
        "lat_p50": float(np.percentile(e2e, 50)),
        "lat_p99": float(np.percentile(e2e, 99)),
        "daemon_p50": float(np.percentile(daemon_lat[skip:], 50)),
        "daemon_p99": float(np.percentile(daemon_lat[skip:], 99)),
        "dropped": stats.get("dropped"),
        "provider": stats.get("provider"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs="+", default=[128], help="frame sides (128, 512, 1024)")
    ap.add_argument("--model", type=Path, help="ONNX model (default: shipped, else a built conv net)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per measurement phase")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    ap.add_argument("--provider", default=None, help="cpu, cuda, tensorrt (default: as serve picks)")
    ap.add_argument("--rate", type=float, default=None, help="live-phase input fps (default: the user's rate)")
    opts = ap.parse_args()

    model = opts.model
    tmp = None
    if model is None:
        shipped = Path(__file__).resolve().parents[1] / "livedenoise" / "models" / "default.onnx"
        if shipped.is_file():
            model = shipped
        else:
            tmp = tempfile.TemporaryDirectory()
            model = build_bench_model(Path(tmp.name) / "bench.onnx")
    import onnxruntime

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; "
          f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}")
    print(f"model: {model}; max batch {opts.max_batch}; {opts.duration:g} s per phase")
    print(f"{'size':>6} {'provider':>22} {'bare fps':>9} {'e2e fps':>9} {'ratio':>6} | "
          f"{'rate':>6} {'e2e p50':>8} {'e2e p99':>8} {'serve p50':>9} {'serve p99':>9} {'dropped':>7}")
    for size in opts.size:
        bare_s = min(opts.duration, 5.0)
        bare_before = bare_loop(model, size, opts.max_batch, opts.provider, opts.threads, bare_s)
        opts.expected_fps = bare_before
        sat = run_stream(model, size, opts, rate=None, seconds=opts.duration)
        # measured before and after the stream, so a change in machine load shows and averages out
        bare_after = bare_loop(model, size, opts.max_batch, opts.provider, opts.threads, bare_s)
        bare = (bare_before + bare_after) / 2
        # the user's rate, or 60 % of what this machine sustains (batch 8) if that is less: beyond
        # it a live stream can only drop frames, and near it (small batches cost more per frame)
        # the latency measures the queue bound, not the daemon
        rate = min(opts.rate or USER_RATE.get(size, 15.0), 0.6 * min(bare, sat["fps"]))
        live = run_stream(model, size, opts, rate=rate, seconds=opts.duration)
        print(f"{size:>4}^2 {sat['provider']:>22} {bare:9.1f} {sat['fps']:9.1f} {sat['fps'] / bare:6.2f} | "
              f"{rate:6.1f} {live['lat_p50']:7.1f}m {live['lat_p99']:7.1f}m "
              f"{live['daemon_p50']:8.1f}m {live['daemon_p99']:8.1f}m {live['dropped']!s:>7}", flush=True)
        print(f"       bare fps before/after the stream: {bare_before:.1f} / {bare_after:.1f}")
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    print("ratio = end-to-end fps at saturation (lossless) / bare onnxruntime fps; latencies in ms "
          "(e2e: detector send -> subscriber receipt; serve: receipt -> publish) at the live rate")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
