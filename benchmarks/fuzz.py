"""Fuzz a real daemon: >= 10,000 malformed messages with valid frames interleaved.

Starts ``python -m livedenoise serve --lossless`` (its own process, so its resident memory can be
read from /proc), pushes a seeded mix of every kind in :data:`livedenoise.sim.KINDS` with one
valid frame every ``--every`` messages, and checks: every valid frame is denoised (in order, with
the right ids), every malformed message is counted, the daemon is still alive, and its RSS.

    python -m benchmarks.fuzz --messages 10000
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from ._proc import free_addr, output_subscriber, rss_mib


def main() -> int:
    from livedenoise.protocol import encode_image
    from livedenoise.sim import KINDS, malformed_message

    from ._e2e_stream import build_bench_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000, help="malformed messages to send")
    ap.add_argument("--every", type=int, default=10, help="one valid frame after this many malformed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ld-fuzz-"))
    model = args.model or build_bench_model(tmp / "bench.onnx", width=8, depth=3)
    source, publish = free_addr(), free_addr()
    proc = subprocess.Popen(
        [sys.executable, "-m", "livedenoise", "serve", "--model", str(model), "--source", source, "--publish",
         publish, "--lossless", "--provider", "cpu", "--warmup-size", "32x32", "--log-level", "ERROR"],
    )
    ctx = zmq.Context()
    sub = output_subscriber(ctx, publish)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.bind(source)
    stats: dict = {}
    ids: list[int] = []

    def drain(timeout_ms: int = 0) -> None:
        while sub.poll(timeout_ms):
            topic, header, *_ = sub.recv_multipart()
            h = msgpack.unpackb(header)
            if topic == b"stats":
                stats.update(h)
            elif h["series_id"] == 4242:
                ids.append(h["image_id"])
            timeout_ms = 0

    try:
        deadline = time.monotonic() + 60
        while not stats and time.monotonic() < deadline:
            drain(200)
        if not stats:
            raise SystemExit("the daemon did not start")
        rss_before = rss_mib(proc.pid)
        rng = np.random.default_rng(args.seed)
        valid = rng.integers(0, 500, (16, 32, 32)).astype("<u2")
        kinds = dict.fromkeys(KINDS, 0)
        n_valid = 0
        t0 = time.perf_counter()
        for i in range(args.messages):
            kind, parts = malformed_message(rng)
            kinds[kind] += 1
            push.send_multipart(parts)
            if i % args.every == args.every - 1:
                push.send_multipart(encode_image(valid[n_valid % 16], series_id=4242, image_id=n_valid))
                n_valid += 1
            if i % 500 == 0:
                drain()
        sent_s = time.perf_counter() - t0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
            stats.get("malformed", 0) >= args.messages and len(ids) >= n_valid and stats.get("queue_depth", 1) == 0
        ):
            drain(200)
        rss_after = rss_mib(proc.pid)
        alive = proc.poll() is None
    finally:
        push.close()
        sub.close()
        ctx.term()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)

    print(f"malformed messages sent: {args.messages} in {sent_s:.1f} s; per kind: "
          + ", ".join(f"{k} {v}" for k, v in kinds.items()))
    print(f"valid frames sent: {n_valid}; denoised received: {len(ids)}; in order: {ids == list(range(n_valid))}")
    print(f"daemon stats: malformed {stats.get('malformed')} received {stats.get('received')} denoised "
          f"{stats.get('denoised')} failed {stats.get('failed')} dropped {stats.get('dropped')}")
    print(f"daemon alive at the end: {alive}; exit code after SIGTERM: {proc.returncode}")
    print(f"daemon RSS: {rss_before:.1f} MiB before, {rss_after:.1f} MiB after ({rss_after - rss_before:+.1f} MiB)")
    ok = (
        alive and ids == list(range(n_valid)) and stats.get("malformed") == args.messages
        and stats.get("failed") == 0 and proc.returncode == 0
    )
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
