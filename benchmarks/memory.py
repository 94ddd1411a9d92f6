"""Resident memory of ``serve``: a real daemon process fed large frames, its RSS sampled from /proc.

replay (``--push --synthetic``) -> serve (``--lossless``, its own process) -> a subscriber here
counting the denoised frames. The daemon's VmRSS is sampled every ``--interval`` seconds and its
peak (VmHWM, the kernel's high-water mark: nothing between samples is missed) read before it is
stopped. A watchdog kills the daemon above ``--kill-above`` GiB, so a runaway setting cannot take
the machine down; the run then reports the limit it crossed.

Engine settings (``--settings``, several allowed, each a separate daemon):

* ``default``: :class:`livedenoise.engine.EngineConfig` as ``serve`` builds it;
* ``as-exported``: the engine before the memory work: no ConvTranspose rewrite, the arena's
  default power-of-two growth, the memory pattern on, batches of ``--max-batch`` whatever the
  frame size;
* ``no-arena``: the defaults with onnxruntime's CPU arena off;
* ``no-rewrite``: the defaults without the ConvTranspose rewrite (the arena then goes off by itself);
* ``pattern``: the defaults with onnxruntime's memory pattern on.

``serve`` has no flags for these (yet), so the daemon is started through this script
(``--child``), which builds the same :class:`livedenoise.daemon.Daemon` with the chosen
:class:`~livedenoise.engine.EngineConfig` and runs it as ``serve`` does::

    python -m benchmarks.memory                                   # paper preset, 1024², 4 frames, default
    python -m benchmarks.memory --settings as-exported default --max-batch 1
    python -m benchmarks.memory --duration 3600 --rate 0.01       # an hour at one frame per 100 s

Without ``--model`` it uses the untrained ``paper`` export (:mod:`export_presets`, needs torch once).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import zmq

from ._proc import free_addr, output_subscriber, rss_mib

SETTINGS = {
    "default": {},
    "as-exported": {"optimise_graph": False, "arena_extend_same": False, "cpu_arena": True, "mem_pattern": True,
                    "max_batch_pixels": 1 << 62},
    "no-arena": {"cpu_arena": False},
    "no-rewrite": {"optimise_graph": False},
    "pattern": {"mem_pattern": True},
}


def hwm_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(argv: list[str]) -> None:
    """``serve`` with an EngineConfig from JSON: ``--child JSON MODEL SOURCE PUBLISH WARMUP MAX_BATCH THREADS``."""
    import logging

    from livedenoise.daemon import Daemon, QueueConfig, ServeConfig
    from livedenoise.engine import EngineConfig

    fields, model, source, publish, warmup, max_batch, threads = argv
    size, max_batch = int(warmup), int(max_batch)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    engine = EngineConfig(
        provider="cpu", max_batch=max_batch, threads=int(threads), shapes=((size, size),), **json.loads(fields)
    )
    cfg = ServeConfig(
        model=Path(model), source=source, publish=publish,
        queue=QueueConfig(lossless=True, capacity=max(2, max_batch)), engine=engine,
    )
    raise SystemExit(Daemon(cfg).run())


def measure(model: Path, setting: str, opts) -> dict:
    source, publish = free_addr(), free_addr()
    serve = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.memory", "--child", json.dumps(SETTINGS[setting]), str(model), source, publish,
         str(opts.warmup_size or opts.size), str(opts.max_batch), str(opts.threads)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    ctx = zmq.Context.instance()
    sub = output_subscriber(ctx, publish)
    limit = opts.kill_above * 1024
    samples: list[tuple[float, float, int]] = []  # (seconds since start, RSS MiB, frames received)
    out = {"setting": setting, "killed": False, "frames": 0}
    replay = None
    t0 = time.monotonic()
    try:
        ready = False
        while not ready:  # warm-up runs before the first stats message
            if serve.poll() is not None:
                raise SystemExit(f"serve exited: {serve.stderr.read()[-3000:]}")
            rss = rss_mib(serve.pid)
            samples.append((time.monotonic() - t0, rss, 0))
            if rss > limit:
                out["killed"] = True
                break
            if sub.poll(int(opts.interval * 1000)):
                ready = sub.recv_multipart()[0] == b"stats"
        out["warmup_s"] = time.monotonic() - t0
        out["rss_after_warmup"] = rss_mib(serve.pid)
        out["peak_after_warmup"] = hwm_mib(serve.pid)
        if not out["killed"]:
            count = opts.frames if opts.duration is None else int(opts.duration * opts.rate) + 1
            fps = 1000.0 if opts.duration is None else opts.rate
            replay = subprocess.Popen(
                [sys.executable, "-m", "livedenoise", "replay", "--synthetic", "--size", str(opts.size), "--push",
                 "--bind", source, "--fps", str(fps), "--count", str(count)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            t_frames = time.monotonic()
            while out["frames"] < count:
                if serve.poll() is not None:
                    break
                if sub.poll(int(opts.interval * 1000)):
                    topic = sub.recv_multipart()[0]
                    out["frames"] += topic == b"denoised"
                rss = rss_mib(serve.pid)
                samples.append((time.monotonic() - t0, rss, out["frames"]))
                if rss > limit:
                    out["killed"] = True
                    break
                if time.monotonic() - t_frames > (opts.timeout or (opts.duration or 0) + 1800.0):
                    break
            out["frames_s"] = time.monotonic() - t_frames
        out["peak"] = hwm_mib(serve.pid)
        out["rss_end"] = rss_mib(serve.pid)
    finally:
        sub.close()
        for proc in (replay, serve):
            if proc is not None and proc.poll() is None:
                proc.kill() if out.get("killed") else proc.terminate()
        err = serve.communicate(timeout=60)[1] if serve else ""
        if replay is not None:
            replay.wait(30)
    out["engine"] = next((line.split("engine: ", 1)[1] for line in err.splitlines() if "engine: " in line), "?")
    out["warmup"] = next((line.split("warm-up: ", 1)[1] for line in err.splitlines() if "warm-up: " in line), "?")
    done = [s for s in samples if s[2] >= 1]
    out["rss_first_frame"] = done[0][1] if done else float("nan")
    out["rss_max_sampled"] = max((s[1] for s in samples), default=float("nan"))
    # growth: the max RSS over the last quarter of the frames against the max over the second quarter
    if len(done) >= 8:
        q = len(done) // 4
        out["growth_mib"] = max(s[1] for s in done[-q:]) - max(s[1] for s in done[q : 2 * q])
    out["samples"] = samples
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    from .export_presets import preset_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="ONNX model (default: the untrained paper preset)")
    ap.add_argument("--preset", default="paper", help="preset exported when no --model (paper, lite, tiny, rt)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--warmup-size", type=int, default=None, help="warm up at this side instead (serve's default: 128)")
    ap.add_argument("--settings", nargs="+", default=["default"], choices=sorted(SETTINGS))
    ap.add_argument("--frames", type=int, default=4, help="frames sent as fast as serve takes them")
    ap.add_argument("--duration", type=float, default=None, help="instead: stream for this many seconds ...")
    ap.add_argument("--rate", type=float, default=0.05, help="... at this many frames per second")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    ap.add_argument("--kill-above", type=float, default=12.0, help="GiB: the watchdog's limit")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds for the frames at most (default: 1800 more than --duration, or 1800)")
    ap.add_argument("--json", type=Path, help="also write the results (with every sample) here")
    opts = ap.parse_args()
    model = opts.model or preset_model(opts.preset)
    import onnxruntime

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.2f}; onnxruntime {onnxruntime.__version__}; model {model}; "
          f"{opts.size}x{opts.size}, warm-up {opts.warmup_size or opts.size}, max batch {opts.max_batch}")
    results = []
    for setting in opts.settings:
        r = measure(model, setting, opts)
        results.append(r)

        def gib(mib: float) -> str:
            return f"{mib / 1024:.2f} GiB"

        print(f"\n[{setting}] engine: {r['engine']}")
        print(f"  warm-up: {r['warmup']} ({r['warmup_s']:.1f} s); RSS after warm-up {gib(r['rss_after_warmup'])}, "
              f"peak so far {gib(r['peak_after_warmup'])}")
        print(f"  frames denoised: {r['frames']} in {r.get('frames_s', 0):.1f} s; peak RSS (VmHWM) {gib(r['peak'])}; "
              f"RSS at the end {gib(r['rss_end'])}"
              + (f"; growth (last vs second quarter) {r['growth_mib']:+.1f} MiB" if "growth_mib" in r else "")
              + (f"; KILLED above {opts.kill_above:g} GiB" if r["killed"] else ""), flush=True)
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
