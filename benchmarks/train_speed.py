"""Training speed of each preset: Noise2Atom steps per second on one device.

One step is the paper's schedule on one batch (5 critic steps with the gradient penalty, one
adversarial step of Ms2c, one low-frequency cycle step, one clean cycle step; batch 6 of 128 x 128
crops), exactly :meth:`trainer.loop.Trainer.train_step`. The frames are a simulated movie
(:mod:`livedenoise.sim`), so the figures need no data; the losses are printed only to show the
steps did train. A few warm-up steps (cuDNN's algorithm search, the allocator) are left out::

    python -m benchmarks.train_speed --device cuda                 # paper, lite, tiny
    python -m benchmarks.train_speed --device cpu --presets tiny --seconds 60

``--seconds`` bounds each preset's timed run (at least ``--min-steps`` steps are timed).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def measure(preset_name: str, device: str, seconds: float, min_steps: int, warmup: int) -> dict:
    import torch

    from livedenoise.sim import SimConfig, simulate_movie
    from trainer.domains import frame_statistics
    from trainer.loop import Trainer
    from trainer.presets import get_preset

    preset = get_preset(preset_name)
    frames = simulate_movie(SimConfig(frames=24, size=256, dose=300.0, seed=1)).noisy.astype(np.float32)
    trainer = Trainer(preset, frames, frame_statistics(frames), seed=0, device=device, log=lambda _m: None)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        trainer.train_step()
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    n, t0 = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - t0 < seconds:
        rec = trainer.train_step()  # ends in float(loss): one host sync per step, as in training
        n += 1
    sync()
    dt = time.perf_counter() - t0
    out = {
        "preset": preset_name,
        "device": device,
        "steps": n,
        "seconds": round(dt, 2),
        "steps_per_s": round(n / dt, 2),
        "crops_per_s": round(n * preset.batch / dt, 1),
        "default_steps": preset.steps,
        "minutes_for_default_steps": round(preset.steps / (n / dt) / 60, 2),
        "L_cycle": round(rec["cycle"], 4),
        "L_lfc": round(rec["lfc"], 4),
    }
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["paper", "lite", "tiny"])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--seconds", type=float, default=30.0, help="timed seconds per preset (at least --min-steps)")
    ap.add_argument("--min-steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    import torch

    torch.backends.cudnn.benchmark = True  # fixed 128 x 128 crops: let cuDNN pick its algorithms once
    rows = []
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else f", {torch.get_num_threads()} threads"))
    for name in args.presets:
        row = measure(name, args.device, args.seconds, args.min_steps, args.warmup)
        rows.append(row)
        print(f"{name:6s} {row['steps_per_s']:8.2f} steps/s  {row['crops_per_s']:8.1f} crops/s  "
              f"{row['default_steps']} steps in {row['minutes_for_default_steps']:.1f} min"
              + (f"  peak {row['peak_gpu_mib']} MiB" if "peak_gpu_mib" in row else "")
              + f"  (L_cycle {row['L_cycle']:.3f}, L_lfc {row['L_lfc']:.3f} after {row['steps'] + args.warmup} steps)",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
