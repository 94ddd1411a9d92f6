"""Bare CPU inference of the self-supervised model against the shipped ``rt`` model, in one run.

Issue 24 asks that the ``rt``-size self-supervised model run at least as fast as ``rt`` on this
CPU. Both run as ONNX graphs in onnxruntime sessions of the same threads, on the same frame size,
interleaved in rounds so that whatever else the machine does falls on both; the figure is the
ratio of the medians (below 1: the self-supervised model is faster). The self-supervised graph is
exported as ``train`` exports it, with the heaviest post-processing the score can choose (a causal
filter blended in and a Gaussian of 3 px), and untrained weights (speed does not depend on them)::

    python -m benchmarks.selfsup_speed                       # 8 frames, rt size, 256 x 256, 2 threads
    python -m benchmarks.selfsup_speed --frames 16 --size 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _session(model: bytes | str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _time(session, x: np.ndarray, n: int) -> float:
    """Milliseconds per frame, the median of ``n`` runs."""
    name = session.get_inputs()[0].name
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    from trainer.export import to_onnx_bytes
    from trainer.selfsup import SIZES, CausalDenoiser, SelfSupConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=8, help="the self-supervised model's window (train's default at rt size)")
    ap.add_argument("--net", default="rt", choices=sorted(SIZES), help="its size")
    ap.add_argument("--size", type=int, default=256, help="frame side (px)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20, help="runs per model per round")
    args = ap.parse_args(argv)

    model = CausalDenoiser(SelfSupConfig(frames=args.frames, widths=SIZES[args.net]), display=(0.0, 1.0)).eval()
    model.set_post(0.5, np.full(min(5, args.frames), 1 / min(5, args.frames), np.float32), 3.0)
    selfsup = _session(to_onnx_bytes(model, args.frames), args.threads)
    rt = _session(str(ROOT / "livedenoise" / "models" / "rt.onnx"), args.threads)
    rng = np.random.default_rng(0)
    x_rt = rng.random((1, 1, args.size, args.size), np.float32)
    x_ss = rng.random((1, args.frames, args.size, args.size), np.float32)
    _time(rt, x_rt, 5), _time(selfsup, x_ss, 5)  # warm-up
    rounds = []
    for r in range(args.rounds):
        a, b = _time(rt, x_rt, args.runs), _time(selfsup, x_ss, args.runs)
        rounds.append((a, b))
        print(f"round {r + 1}: rt {a:.2f} ms, selfsup {b:.2f} ms per frame", flush=True)
    rt_ms = statistics.median(a for a, _ in rounds)
    ss_ms = statistics.median(b for _, b in rounds)
    result = {"frames": args.frames, "net": args.net, "size": args.size, "threads": args.threads,
              "rt_ms": round(rt_ms, 2), "selfsup_ms": round(ss_ms, 2), "ratio": round(ss_ms / rt_ms, 3)}
    print(f"selfsup ({args.net}, {args.frames} frames) / rt, bare CPU inference at {args.size}x{args.size} on "
          f"{args.threads} threads: {result['ratio']:.2f} ({ss_ms:.2f} ms against {rt_ms:.2f} ms)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
