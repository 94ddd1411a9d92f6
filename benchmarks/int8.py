"""Does int8 help on this CPU? onnxruntime quantisation of a model, its speed and its output against fp32.

Static quantisation (QDQ, per-channel int8 weights, int8 activations calibrated on simulated
frames normalised by the model card, as ``serve`` would feed them) and dynamic quantisation
(weights only, activations quantised per run). For each: session-only speed against fp32,
interleaved in one process (``--sizes``, batch 8 at 128², the engine's batch cap above), and the
published output against fp32 (max and mean abs difference on [0, 1]) and against the truth of a
simulated movie the model was not trained on (PSNR after the affine fit, atom-detection F1;
``livedenoise.scoring``, needs the ``eval`` extra).

    python -m benchmarks.int8                                 # the shipped model
    python -m benchmarks.int8 --model m.onnx --sizes 128 512

Quantised models are written to a temporary folder and deleted; nothing is shipped from here.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def calibration_inputs(card, size: int, frames: int, seed: int) -> list[np.ndarray]:
    from livedenoise.engine import causal_windows, normalise
    from livedenoise.sim import SimConfig, simulate_movie

    movie = simulate_movie(SimConfig(size=size, frames=frames, seed=seed))
    x = normalise(movie.noisy_as("<u2"), card.normalisation)
    win = causal_windows(x, card.input_frames)
    return [np.ascontiguousarray(win[i : i + 1]) for i in range(len(win))]


def quantise(model: Path, out_dir: Path, card, calib: list[np.ndarray]) -> dict[str, Path]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from livedenoise.engine import INPUT_NAME

    pre = out_dir / "pre.onnx"
    quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {INPUT_NAME: x}

    out = {}
    static = out_dir / "int8-static.onnx"
    quantize_static(str(pre), str(static), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "ConvTranspose"],
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    out["int8-static"] = static
    static_u8 = out_dir / "uint8-static.onnx"
    quantize_static(str(pre), str(static_u8), Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv"])
    out["uint8-qoperator"] = static_u8
    dynamic = out_dir / "int8-dynamic.onnx"
    quantize_dynamic(str(pre), str(dynamic), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
    out["int8-dynamic"] = dynamic
    return out


def with_card(path: Path, card) -> None:
    import onnx

    from livedenoise.engine import METADATA_KEY

    m = onnx.load(str(path))
    props = {p.key: p.value for p in m.metadata_props}
    if METADATA_KEY not in props:
        onnx.helper.set_model_props(m, {**props, METADATA_KEY: card.to_json()})
        onnx.save(m, str(path))


def speed(sessions: dict, size: int, batch: int, rounds: int, k: int) -> dict[str, float]:
    """Median ms per frame of ``session.run`` for each session, interleaved round by round."""
    from livedenoise.engine import INPUT_NAME, OUTPUT_NAME

    x = np.random.default_rng(0).normal(0, 0.3, (batch, k, size, size)).astype(np.float32)
    for s in sessions.values():
        s.run([OUTPUT_NAME], {INPUT_NAME: x})
    times = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.run([OUTPUT_NAME], {INPUT_NAME: x})
            times[name].append((time.perf_counter() - t0) * 1e3 / batch)
    return {name: float(np.median(v)) for name, v in times.items()}


def main() -> None:
    import onnxruntime as ort

    from livedenoise.engine import Engine, EngineConfig, default_model_path
    from livedenoise.sim import SimConfig, simulate_movie

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calib-frames", type=int, default=32)
    ap.add_argument("--eval-frames", type=int, default=24)
    args = ap.parse_args()
    model = args.model or default_model_path()
    fp32 = Engine(model, EngineConfig(provider="cpu"))
    card = fp32.card
    print(f"onnxruntime {ort.__version__}, model {model} (preset {card.preset}); "
          f"load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        calib = calibration_inputs(card, 128, args.calib_frames, seed=1)
        paths = quantise(model, Path(tmp), card, calib)
        engines = {"fp32": fp32}
        for name, path in paths.items():
            with_card(path, card)
            engines[name] = Engine(path, EngineConfig(provider="cpu"))

        movie = simulate_movie(SimConfig(size=128, frames=args.eval_frames, seed=2))
        outs = {}
        for name, e in engines.items():
            outs[name] = e.run_stack(movie.noisy_as("<u2"))
        try:
            from livedenoise.scoring import evaluate
        except ImportError:
            evaluate = None
        print(f"\nquality on a simulated movie not trained on ({args.eval_frames} frames 128², seed 2):")
        print(f"{'model':>16} {'max|d|':>8} {'mean|d|':>8} {'PSNR':>7} {'F1':>6}")
        for name, den in outs.items():
            d = np.abs(den - outs["fp32"])
            psnr = f1 = float("nan")
            if evaluate is not None:
                rep = evaluate(den, movie.truth, movie.positions, css_normalise="none", ssim=False)
                psnr, f1 = rep.psnr, rep.f1
            print(f"{name:>16} {d.max():8.4f} {d.mean():8.5f} {psnr:7.2f} {f1:6.3f}")

        print("\nspeed, session.run only, ms per frame (median, interleaved):")
        for size in args.sizes:
            batch = fp32.batch_cap((size, size))
            ms = speed({n: e.session for n, e in engines.items()}, size, batch, args.rounds, card.input_frames)
            row = ", ".join(f"{n} {v:.2f} ms (x{ms['fp32'] / v:.2f})" for n, v in ms.items())
            print(f"  {size}² batch {batch}: {row}", flush=True)
    print("x = fp32 time / int8 time (above 1: int8 faster)")


if __name__ == "__main__":
    main()
