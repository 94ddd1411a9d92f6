"""The daemon's own ceiling: frames per second that ``serve`` sustains with a model that costs nothing.

A trivial model (one ``Clip`` of the input to [-1, 1], a valid model card) takes inference out of
the picture, so what is left is the daemon's per-frame host work: receiving and decoding, the
queue, normalisation, the session call's overhead, CSS on every frame, encoding and publishing.
For each frame size:

1. **replay alone**: ``livedenoise replay --push --loop`` as fast as it goes into a draining PULL
   socket here: the detector simulator's own rate, which must stay well above the ceiling;
2. **ceiling**: ``replay --push --loop`` -> ``serve --lossless`` -> a subscriber here, counted
   from the daemon's own ``stats`` messages (received, denoised, dropped over a steady window,
   with serve's own clock); the subscriber takes ``stats`` only by default (the daemon still
   encodes and sends every raw and denoised frame; PUB discards what nobody subscribed to), or
   also ``denoised`` and ``raw`` with ``--subscribe all`` (then loopback TCP and the subscriber
   share the two cores too).

Per-thread CPU time of serve, replay and this process comes from ``/proc/<pid>/task/*/stat``
over the same window, as a percentage of one core and as CPU time per frame. serve's stage
threads name themselves in the OS (``ld-receive``, ``ld-infer``, ``ld-publish``); ``ZMQbg/*`` are
libzmq's I/O threads; ``main`` is the process's first thread and ``other`` the rest (onnxruntime's
pool, numpy's BLAS pool).

Placement: ``--pin-serve``/``--pin-replay`` run a whole process on given CPUs (taskset);
``--pin-pipeline CPU`` is ``serve --pipeline-cpus CPU``: serve's three pipeline threads on that
CPU and every other thread of serve (main, libzmq's I/O, onnxruntime) on the others. The pipeline threads take turns on the GIL anyway; on separate CPUs each hand-over is a
wake-up across CPUs (in this VM, 27 % of serve's CPU went to the kernel's wake-up and
context-switch paths under ``perf``)::

    python -m benchmarks.ceiling                        # 128² and 512², ~1 min
    python -m benchmarks.ceiling --sizes 128 --seconds 10 --json
    python -m benchmarks.ceiling --pin-pipeline 0 --pin-replay 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import msgpack
import numpy as np
import zmq

from ._proc import free_addr, machine, stop, wait_until_serving

#: Frames in the replayed stack per side (16 MiB of <u2 either way; the stack loops, one series per pass).
STACK_FRAMES = {128: 512, 512: 32}


CLK_TCK = os.sysconf("SC_CLK_TCK")


def build_identity_model(path: Path, offset: float, scale: float) -> Path:
    """``Clip(noisy, -1, 1)``: ``[N, 1, H, W]`` in, ``[N, 1, H, W]`` out, with a model card."""
    from livedenoise.engine import ModelCard, Normalisation
    from livedenoise.testing import build_onnx_model

    card = ModelCard(preset="ceiling-identity", normalisation=Normalisation(offset=offset, scale=scale), size_multiple=1)
    return build_onnx_model(path, card=card, depth=0)


def write_stack(size: int, directory: Path) -> Path:
    """A ``<u2`` TIFF stack of smooth-ish random frames (content does not matter to the ceiling)."""
    import tifffile

    rng = np.random.default_rng(size)
    frames = rng.poisson(60.0, (STACK_FRAMES.get(size, 16), size, size)).astype("<u2")
    path = directory / f"stack{size}.tif"
    tifffile.imwrite(path, frames)
    return path


def start(args: list[str], cpus: str | None = None) -> subprocess.Popen:
    """``python -m livedenoise ARGS``, on CPUs ``cpus`` only (taskset) if given."""
    pin = ["taskset", "-c", cpus] if cpus else []
    return subprocess.Popen([*pin, sys.executable, "-m", "livedenoise", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def thread_ticks(pid: int) -> dict[str, int]:
    """CPU clock ticks (user + system) per thread name of ``pid``; ``main`` is the first thread,
    ``other`` the unnamed rest (named like the process)."""
    out: dict[str, int] = defaultdict(int)
    task = Path(f"/proc/{pid}/task")
    try:
        tids = os.listdir(task)
    except OSError:
        return {}
    proc_name = None
    for tid in tids:
        try:
            text = (task / tid / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])
        if int(tid) == pid:
            proc_name = name
            name = "main"
        elif name.startswith("ZMQbg/"):
            name = "zmq-io" if "IO" in name else "zmq-other"
        out[name] += ticks
    if proc_name is not None and proc_name in out:  # threads that kept the process's name: onnxruntime's pool
        out["other"] += out.pop(proc_name)
    return dict(out)


def cpu_percent(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, float]:
    return {k: round(100.0 * (after.get(k, 0) - before.get(k, 0)) / CLK_TCK / seconds, 1) for k in after}


def replay_alone(stack: Path, count: int) -> dict:
    """replay's own rate: PUSH as fast as it goes into a PULL socket drained here."""
    addr = free_addr()
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(addr)
    proc = start(["replay", str(stack), "--loop", "--push", "--fps", "10000000", "--bind", addr, "--count", str(count)])
    n, t_first, t_last = 0, None, None
    cpu0 = cpu1 = None
    deadline = time.monotonic() + 120
    try:
        while n < count and time.monotonic() < deadline:
            if not pull.poll(1000):
                if proc.poll() is not None:
                    break
                continue
            while True:
                try:
                    parts = pull.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if len(parts) == 2:
                    n += 1
                    t_last = time.perf_counter()
                    if t_first is None:
                        t_first, cpu0 = t_last, thread_ticks(proc.pid)
                    elif n == count - count // 10:
                        cpu1, t_cpu1 = thread_ticks(proc.pid), t_last
    finally:
        stop(proc)
        pull.close()
    if n < 2 or t_first is None or t_last is None or t_last <= t_first:
        raise SystemExit(f"replay alone: only {n} frames arrived")
    cpu = cpu_percent(cpu0, cpu1, t_cpu1 - t_first) if cpu0 and cpu1 else {}
    return {"frames": n, "fps": (n - 1) / (t_last - t_first), "cpu": cpu}


def ceiling(model: Path, stack: Path, size: int, opts) -> dict:
    """replay -> serve --lossless -> subscriber; rates from serve's stats over a steady window."""
    source, publish = free_addr(), free_addr()
    serve = start([
        "serve", "--model", str(model), "--source", source, "--publish", publish, "--lossless",
        "--queue", str(opts.queue), "--max-batch", str(opts.max_batch), "--threads", str(opts.threads),
        "--warmup-size", f"{size}x{size}", "--provider", "cpu", "--log-level", "WARNING",
        *(["--pipeline-cpus", opts.pin_pipeline] if opts.pin_pipeline else []),
    ], cpus=opts.pin_serve)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    topics = [b"stats"] + ([b"denoised", b"raw"] if opts.subscribe == "all" else [])
    for t in topics:
        sub.setsockopt(zmq.SUBSCRIBE, t)
    sub.connect(publish)
    replay = None
    frames = {b"denoised": 0, b"raw": 0}
    css_none = 0
    try:
        wait_until_serving(sub, serve, timeout=120)
        replay = start(["replay", str(stack), "--loop", "--push", "--fps", "10000000", "--bind", source],
                       cpus=opts.pin_replay)
        samples = []  # (stats, serve ticks, replay ticks, own ticks, perf_counter)
        t_begin = None
        deadline = time.monotonic() + opts.warmup + opts.seconds + 60
        while time.monotonic() < deadline:
            if not sub.poll(1000):
                if replay.poll() is not None or serve.poll() is not None:
                    break
                continue
            parts = sub.recv_multipart(copy=False)
            topic = parts[0].bytes
            if topic != b"stats":
                frames[topic] += 1
                if topic == b"denoised" and msgpack.unpackb(parts[1].buffer).get("css") is None:
                    css_none += 1
                continue
            stats = msgpack.unpackb(parts[1].buffer)
            now = time.perf_counter()
            if t_begin is None:
                if stats["denoised"] > 0:
                    t_begin = now  # frames flow: the warm-up window starts
                continue
            if now - t_begin < opts.warmup:
                continue
            samples.append((stats, thread_ticks(serve.pid), thread_ticks(replay.pid), thread_ticks(os.getpid()), now))
            if samples[-1][0]["uptime_s"] - samples[0][0]["uptime_s"] >= opts.seconds:
                break
    finally:
        if replay is not None:
            stop(replay)
        err = stop(serve)
        sub.close()
    if len(samples) < 2:
        raise SystemExit(f"no steady window measured; serve said: {err[-2000:]}")
    (s0, sv0, rp0, own0, t0), (s1, sv1, rp1, own1, t1) = samples[0], samples[-1]
    dt = s1["uptime_s"] - s0["uptime_s"]
    wall = t1 - t0
    return {
        "size": size,
        "seconds": round(dt, 2),
        "received_fps": (s1["received"] - s0["received"]) / dt,
        "denoised_fps": (s1["denoised"] - s0["denoised"]) / dt,
        "dropped": s1["dropped"] - s0["dropped"],
        "failed": s1["failed"] - s0["failed"],
        "queue_depth": [s["queue_depth"] for s, *_ in samples],
        "css": s1["css"],
        "latency_ms_p50": s1["latency_ms_p50"],
        "latency_ms_p99": s1["latency_ms_p99"],
        "subscribed": [t.decode() for t in topics],
        "frames_seen": frames,
        "css_none_seen": css_none,
        "serve_cpu": cpu_percent(sv0, sv1, wall),
        "replay_cpu": cpu_percent(rp0, rp1, wall),
        "subscriber_cpu": round(sum(cpu_percent(own0, own1, wall).values()), 1),
    }


THREADS = ["ld-receive", "ld-infer", "ld-publish", "zmq-io", "other"]


def table(rows: list[dict]) -> list[str]:
    """One line per size: rates, then serve's CPU per thread as % of a core and as CPU time per
    frame (the robust figure on a shared machine: it moves less with other load than fps do)."""
    out = [
        "| size | replay alone fps | received fps | denoised fps | dropped | queue depth "
        "| serve CPU % (receive / infer / publish / zmq-io / other = total) "
        "| serve CPU us per frame (same order) | replay CPU % | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = dict(r["serve_cpu"])
        cpu["other"] = sum(v for k, v in cpu.items() if k not in THREADS[:-1])
        fps = max(r["denoised_fps"], 1e-9)
        pct = " / ".join(f"{cpu.get(k, 0):.0f}" for k in THREADS)
        per = " / ".join(f"{1e4 * cpu.get(k, 0) / fps:.0f}" for k in THREADS)
        total = sum(cpu.get(k, 0) for k in THREADS)
        out.append(
            f"| {r['size']}² | {r['replay_alone']['fps']:,.0f} | {r['received_fps']:,.0f} | **{r['denoised_fps']:,.0f}** "
            f"| {r['dropped']} | {min(r['queue_depth'])}-{max(r['queue_depth'])} "
            f"| {pct} = {total:.0f} | {per} = {1e4 * total / fps:.0f} | {sum(r['replay_cpu'].values()):.0f} "
            f"| {r['load'][0]:.1f}-{r['load'][1]:.1f} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--seconds", type=float, default=6.0, help="steady window measured per size")
    ap.add_argument("--warmup", type=float, default=1.5, help="seconds of stream before the window")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--queue", type=int, default=64, help="serve --queue (lossless: frames held at most)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (a Clip needs one)")
    ap.add_argument("--subscribe", choices=["stats", "all"], default="stats",
                    help="what the subscriber takes: stats only, or also every denoised and raw frame")
    ap.add_argument("--replay-frames", type=int, default=0, help="frames for the replay-alone phase (0: 4 s worth)")
    ap.add_argument("--pin-serve", metavar="CPUS", help="run serve on these CPUs only (taskset -c), e.g. 0")
    ap.add_argument("--pin-replay", metavar="CPUS", help="run replay on these CPUs only (taskset -c), e.g. 1")
    ap.add_argument("--pin-pipeline", metavar="CPUS",
                    help="serve's receive, infer and publish threads on these CPUs, its other threads on the rest")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    opts = ap.parse_args()

    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ld-ceiling-") as tmp:
        model = build_identity_model(Path(tmp) / "identity.onnx", offset=60.0, scale=1 / 60.0)
        for size in opts.sizes:
            stack = write_stack(size, Path(tmp))
            count = opts.replay_frames or max(200, int(6e8 / (size * size)))  # 36,600 at 128², 2,290 at 512²
            load0 = os.getloadavg()[0]
            alone = replay_alone(stack, count)
            row = ceiling(model, stack, size, opts)
            row["replay_alone"] = alone
            row["load"] = (load0, os.getloadavg()[0])
            rows.append(row)
            print(table([row])[-1], flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print()
    print("\n".join(table(rows)))
    for r in rows:
        print(f"{r['size']}²: serve CPU % by thread {r['serve_cpu']}; replay {r['replay_cpu']}; "
              f"replay alone {r['replay_alone']['fps']:,.0f} fps (CPU {r['replay_alone']['cpu']}); "
              f"latency p50/p99 {r['latency_ms_p50']}/{r['latency_ms_p99']} ms; subscriber CPU {r['subscriber_cpu']} %; "
              f"subscribed {r['subscribed']}, frames seen {r['frames_seen']}, CSS None {r['css_none_seen']}")
    if opts.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
