"""Untrained ``paper`` / ``lite`` / ``tiny`` / ``rt`` generators exported to ONNX, for speed and memory only.

The weights are the networks' random initialisation (seeded): the denoised frames mean nothing,
but the graph, its operators and its cost are exactly what ``livedenoise train --preset NAME``
exports (same :mod:`trainer.export` path: TorchScript exporter, one ``InstanceNormalization``
per norm, the model card in the metadata). The normalisation in the card is the shipped model's,
so synthetic frames land in the same input range.

The files go to a cache folder outside the repository (never commit them: ``paper`` is 45 MB)::

    python -m benchmarks.export_presets                  # paper, lite, tiny, rt -> $TMPDIR/livedenoise-bench-models
    python -m benchmarks.export_presets --presets paper --out /tmp/models

Needs torch (the ``train`` extra). :func:`preset_model` is what ``e2e.py`` and ``memory.py`` call:
it exports on first use and reuses the file afterwards.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

DEFAULT_DIR = Path(os.environ.get("LIVEDENOISE_BENCH_MODELS", Path(tempfile.gettempdir()) / "livedenoise-bench-models"))
MODELS = Path(__file__).resolve().parents[1] / "livedenoise" / "models"
SHIPPED = MODELS / "default.onnx"
TRAINED = {"tiny": SHIPPED, "rt": MODELS / "rt.onnx"}  # presets with a shipped, trained model


def export_preset(name: str, out: Path, seed: int = 0) -> Path:
    """Export preset ``name``'s Ms2c with untrained (seeded) weights to ``out``; return ``out``."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from livedenoise.engine import ModelCard
    from trainer.export import export_model
    from trainer.networks import UNet
    from trainer.presets import get_preset

    preset = get_preset(name)
    torch.manual_seed(seed)
    gen = preset.student_net if preset.distil_window else preset.generator  # what train exports
    net = UNet(gen).eval()
    sess = ort.InferenceSession(str(SHIPPED), providers=["CPUExecutionProvider"])
    shipped = ModelCard.from_metadata(sess.get_modelmeta().custom_metadata_map)
    card = ModelCard(
        preset=name,
        normalisation=shipped.normalisation,
        input_frames=gen.input_frames,
        size_multiple=gen.size_multiple,
        training={"untrained": True, "seed": seed, "conv": gen.conv,
                  "purpose": "speed and memory benchmarks only"},
    )
    check = [np.random.default_rng(seed).normal(0, 1, (1, card.input_frames, 64, 64)).astype(np.float32)]
    out.parent.mkdir(parents=True, exist_ok=True)
    export_model(net, out, card, check, log=lambda msg: print(f"{name}: {msg}"))
    return out


def preset_model(name: str, directory: Path = DEFAULT_DIR) -> Path:
    """The benchmark model for preset ``name``: ``tiny`` and ``rt`` are the shipped (trained) models,
    the others are exported untrained into ``directory`` on first use."""
    if name in TRAINED and TRAINED[name].is_file():
        return TRAINED[name]
    path = Path(directory) / f"{name}-untrained.onnx"
    if not path.is_file():
        export_preset(name, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["paper", "lite", "tiny"])
    ap.add_argument("--out", type=Path, default=DEFAULT_DIR, help="folder for the ONNX files")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for name in args.presets:
        export_preset(name, args.out / f"{name}-untrained.onnx", seed=args.seed)


if __name__ == "__main__":
    main()
