"""``benchmarks/e2e.py``'s measurements: the bare engine loop, and replay -> serve -> subscriber at
a rate or saturated, the frames timed at the subscriber; the small real conv net that ``fuzz``
and ``soak`` serve too (:func:`build_bench_model`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from ._proc import free_addr, output_subscriber, stop, wait_until_serving

USER_RATE = {128: 150.0, 512: 15.0, 1024: 5.0}
STACK_FRAMES = {128: 64, 512: 16, 1024: 8}


def build_bench_model(path: Path, width: int = 16, depth: int = 5) -> Path:
    """A small real conv net (3x3 convs + ReLU, tanh out) with a model card, dynamic N/H/W."""
    from livedenoise.engine import ModelCard, Normalisation
    from livedenoise.testing import build_onnx_model

    card = ModelCard(preset=f"bench-conv{depth}x{width}", normalisation=Normalisation(offset=70.0, scale=0.02))
    return build_onnx_model(path, card=card, width=width, depth=depth)


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


def bare_loop(engine, size: int, seconds: float, min_runs: int = 2, batch: int | None = None) -> tuple[float, int]:
    """Frames per second of the engine's session call alone at ``size``, at serve's batch cap for
    it (or ``batch``)."""
    batch = engine.batch_cap((size, size)) if batch is None else batch
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


def start(args: list[str], realtime: int | None = None) -> subprocess.Popen:
    """``python -m livedenoise ARGS`` as a child; ``realtime``: under SCHED_RR at that priority (Linux)."""
    rr = None if realtime is None else (lambda: os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(realtime)))
    return subprocess.Popen([sys.executable, "-m", "livedenoise", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=rr)


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
