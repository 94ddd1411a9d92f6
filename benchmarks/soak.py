"""Soak: N 128x128 frames through replay -> serve --lossless -> subscriber; no frame may be lost.

replay (``--push --loop`` over a TIFF of ``--stack`` frames, as fast as the daemon takes them)
and serve (``--lossless``) run as their own processes; the subscriber here checks every denoised
frame arrives, each series' ids contiguous from 0. The daemon's resident memory (VmRSS) and open
file descriptors are sampled from /proc: after warm-up (``--warmup`` frames) and at the end.

    python -m benchmarks.soak                  # 1,000,000 frames
    python -m benchmarks.soak --frames 20000   # a shortened run
    python -m benchmarks.soak --frames 5000 --record   # also record (and check) every denoised frame
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
import zmq

from ._proc import free_addr, output_subscriber, rss_mib


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    import tifffile

    from livedenoise.sim import SimConfig, simulate_movie

    from ._e2e_stream import build_bench_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--warmup", type=int, default=None, help="frames before the baseline sample (default 5%%)")
    ap.add_argument("--stack", type=int, default=200, help="frames in the looped TIFF (one series per pass)")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--record", action="store_true", help="serve --record --record-raw, then check the index")
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else max(1000, args.frames // 20)

    tmp = Path(tempfile.mkdtemp(prefix="ld-soak-"))
    model = args.model or build_bench_model(tmp / "bench.onnx", width=8, depth=3)
    movie = simulate_movie(SimConfig(size=128, frames=args.stack, seed=1))
    tiff = tmp / "stack.tif"
    tifffile.imwrite(tiff, movie.noisy_as("<u2"))
    source, publish = free_addr(), free_addr()
    serve = subprocess.Popen(
        [sys.executable, "-m", "livedenoise", "serve", "--model", str(model), "--source", source, "--publish",
         publish, "--lossless", "--provider", "cpu", "--max-batch", str(args.max_batch), "--log-level", "WARNING",
         *(["--record", str(tmp / "rec"), "--record-raw"] if args.record else [])],
    )
    ctx = zmq.Context()
    sub = output_subscriber(ctx, publish)
    stats: dict = {}
    deadline = time.monotonic() + 60
    while not stats and time.monotonic() < deadline:
        if sub.poll(200):
            topic, header, *_ = sub.recv_multipart()
            stats = msgpack.unpackb(header) if topic == b"stats" else {}
    if not stats:
        serve.kill()
        raise SystemExit("the daemon did not start")
    replay = subprocess.Popen(
        [sys.executable, "-m", "livedenoise", "replay", str(tiff), "--push", "--loop", "--fps", "1000000",
         "--count", str(args.frames), "--bind", source],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    expected: dict[int, int] = {}  # series -> next image id
    lost = received = 0
    samples: dict[str, tuple[float, int]] = {}
    t0 = time.perf_counter()
    last_progress = t0
    last_frame = time.monotonic()
    try:
        while received < args.frames and time.monotonic() - last_frame < 60:
            if not sub.poll(500):
                continue
            topic, header, *_ = sub.recv_multipart()
            h = msgpack.unpackb(header)
            if topic == b"stats":
                stats = h
                continue
            last_frame = time.monotonic()
            sid, iid = h["series_id"], h["image_id"]
            want = expected.get(sid, 0)
            if iid != want:
                lost += abs(iid - want)
            expected[sid] = iid + 1
            received += 1
            if received == warmup:
                samples["warm"] = (rss_mib(serve.pid), fds(serve.pid))
                queue_warm = stats.get("record_queue")
                t_warm = time.perf_counter()
            if time.perf_counter() - last_progress > 30:
                last_progress = time.perf_counter()
                print(f"  {received} frames, RSS {rss_mib(serve.pid):.1f} MiB, fds {fds(serve.pid)}", flush=True)
        t_end = time.perf_counter()
        elapsed = t_end - t0
        samples["end"] = (rss_mib(serve.pid), fds(serve.pid))
        queue_end = stats.get("record_queue")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and stats.get("denoised", 0) < received:
            if sub.poll(200):
                topic, header, *_ = sub.recv_multipart()
                if topic == b"stats":
                    stats = msgpack.unpackb(header)
    finally:
        replay.wait(30) if replay.poll() is None else None
        serve.terminate()
        serve.wait(30)
        sub.close()
        ctx.term()

    rss_w, fd_w = samples.get("warm", (float("nan"), -1))
    rss_e, fd_e = samples["end"]
    growth = (rss_e - rss_w) / rss_w * 100
    print(f"frames: {args.frames} sent, {received} denoised received, {lost} lost, {len(expected)} series")
    print(f"daemon stats: received {stats.get('received')} denoised {stats.get('denoised')} "
          f"dropped {stats.get('dropped')} malformed {stats.get('malformed')} failed {stats.get('failed')}")
    print(f"throughput: {received / elapsed:.0f} fps over {elapsed:.1f} s"
          f" ({(received - warmup) / (t_end - t_warm):.0f} fps after warm-up)" if "warm" in samples else "")
    print(f"daemon RSS: {rss_w:.1f} MiB after {warmup} warm-up frames, {rss_e:.1f} MiB at the end ({growth:+.2f} %)")
    print(f"daemon open fds: {fd_w} after warm-up, {fd_e} at the end")
    print(f"exit codes: serve {serve.returncode}, replay {replay.returncode}")
    recorded_ok = True
    if args.record:
        from livedenoise.recording import summarize

        rows = summarize(tmp / "rec")
        n_den = sum(r.frames for r in rows if r.kind == "denoised")
        n_raw = sum(r.frames for r in rows if r.kind == "raw")
        missing = sum(r.missing for r in rows)
        recorded_ok = n_den == n_raw == args.frames and missing == 0
        size = sum(f.stat().st_size for f in (tmp / "rec").rglob("*.tif")) / 2**20
        print(f"recorder queue (frames waiting, at most 256): {queue_warm} after warm-up, "
              f"{queue_end} at the end")
        print(f"recording: {n_den} denoised + {n_raw} raw frames indexed, {missing} missing, {size:.0f} MiB on disk")
    ok = (recorded_ok and lost == 0 and received == args.frames and stats.get("dropped") == 0 and growth < 5 and fd_e <= fd_w
          and serve.returncode == 0)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
