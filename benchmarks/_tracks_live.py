"""``python -m benchmarks.tracks --live``: the daemon itself, ``serve --atoms`` fed by ``replay
--synthetic``, both as child processes like a detector and a daemon (the module docstring of
``benchmarks/tracks.py`` says what is printed and the targets).
"""

from __future__ import annotations

import subprocess
import sys
import time

import msgpack
import zmq

from ._proc import free_addr, output_subscriber, stop, wait_until_serving
from ._report import pct

#: ``--live-variants``: what serve runs beside denoising
LIVE_VARIANTS = {
    "none": [],
    "atoms": ["--atoms", "--no-atoms-evidence", "--no-atoms-tracks"],
    "full": ["--atoms"],  # evidence and tracks are on by default
}


def live(size: int, fps: float, seconds: float, model: str = "rt", variant: str = "full") -> dict:
    """serve (children: serve and replay --synthetic) at ``fps``; stats and the atom thread's per-frame times."""
    source, publish = free_addr(), free_addr()
    py = [sys.executable, "-m", "livedenoise"]
    serve_cmd = [*py, "serve", "--model", model, *LIVE_VARIANTS[variant], "--source", source, "--publish", publish,
                 "--warmup-size", f"{size}x{size}", "--log-level", "WARNING"]
    replay_cmd = [*py, "replay", "--synthetic", "--fps", f"{fps:g}", "--size", str(size), "--bind", source,
                  "--count", str(int(fps * seconds)), "--wait-subscriber", "10"]
    print(f"$ {' '.join(serve_cmd[1:])}\n$ {' '.join(replay_cmd[1:])}", flush=True)
    serve = subprocess.Popen(serve_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sub = output_subscriber(zmq.Context.instance(), publish, (b"stats", b"atoms", b"hops"))
    replay = None
    ms, cpu, hops_msgs, last = [], [], 0, {}
    try:
        wait_until_serving(sub, serve, 120)
        replay = subprocess.Popen(replay_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        quiet_since = None
        deadline = time.monotonic() + seconds + 60
        while time.monotonic() < deadline:
            if not sub.poll(200):
                continue
            topic, head = sub.recv_multipart()[:2]
            h = msgpack.unpackb(head)
            if topic == b"atoms":
                ms.append(h["analysis_ms"])
                cpu.append(h["analysis_cpu_ms"])
            elif topic == b"hops":
                hops_msgs += 1
            else:
                last = h
                done = replay.poll() is not None and h["queue_depth"] == 0 and h["fps_out"] == 0
                quiet_since = (quiet_since or time.monotonic()) if done else None
                if quiet_since is not None and time.monotonic() - quiet_since > 1.0:
                    break
    finally:
        if replay is not None:
            stop(replay)
        err = stop(serve)
        sub.close(linger=0)
    if not ms and variant != "none":
        raise SystemExit(f"no atoms messages from serve: {err[-2000:]}")
    ms, cpu = ms or [float("nan")], cpu or [float("nan")]
    keys = ("received", "denoised", "dropped", "failed", "atoms_frames", "atoms_skipped", "atoms_failed",
            "atoms_capped", "hops", "tracks_resets", "tracks_live", "atoms_last", "atoms_weak_last")
    return {"size": size, "fps": fps, "variant": variant, "sent": int(fps * seconds),
            "stats": {k: last.get(k) for k in keys},
            "analysis_ms_p50": pct(ms, 50), "analysis_ms_p99": pct(ms, 99), "analysis_ms_max": max(ms),
            "analysis_cpu_ms_p50": pct(cpu, 50), "analysis_cpu_ms_p99": pct(cpu, 99),
            "atoms_messages": len(ms), "hops_messages": hops_msgs, "zmq": zmq.zmq_version()}
