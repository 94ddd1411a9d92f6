"""Noise2Void (careamics) for ``benchmarks/quality.py``, in a virtual environment of its own.

careamics needs torch (and pins torchvision), which would break the project's environment, so
``quality`` runs this file *by path* with the venv's python (``--n2v-python``): it imports only
numpy and careamics there, never the project. :data:`RECIPE` is how that venv is made.

    benchmarks/.venv-n2v/bin/python -m benchmarks._n2v IN.npy OUT.npy [--seconds 240] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RECIPE = ("\n\nThe venv (careamics pins torchvision <= 0.26, whose wheels need CUDA torch 2.11 and pull GBs of "
          "CUDA libraries, so it is installed by hand around the CPU torch):\n\n```bash\n"
          "python3 -m venv benchmarks/.venv-n2v && . benchmarks/.venv-n2v/bin/activate\n"
          "pip install torch==2.13.0                      # the CPU wheel\n"
          "pip install --no-deps careamics==0.3.5\n"
          "echo 'torch==2.13.0+cpu' > /tmp/c.txt && pip install -c /tmp/c.txt 'bioimageio-core>=0.9,<=0.11' "
          "'lightning>=2.2,<=2.6.6,!=2.6.2,!=2.6.3' 'matplotlib<=3.11.2' 'microssim<=0.0.5' 'numpy<=2.4.6' "
          "'pillow<=13.0.0' 'psutil<=7.2.2' 'pydantic>=2.11,<=2.14.1' 'pyyaml<=6.0.3' 'scikit-image<=0.26.0' "
          "'tifffile<=2026.3.3' 'torchmetrics<1.9' 'zarr>=3,<4'\n```\n\n"
          "torchvision is left out: careamics imports it only for its BioImage Model Zoo export and its LVAE "
          "models, and the worker gives it a stub of those names (none is used by N2V).")


def worker(inp: str, outp: str, seconds: float, seed: int) -> None:
    """Runs inside the careamics venv: train N2V on the movie in ``inp`` for at most ``seconds``, predict it into ``outp``."""
    import importlib.util
    import types

    if importlib.util.find_spec("torchvision") is None:
        # careamics imports torchvision for its BioImage-Model-Zoo export and LVAE code only, and
        # PyPI's torchvision wheels need CUDA torch: without torchvision, import torchmetrics and
        # lightning first (they see it is absent), then give careamics a stub of the names it imports.
        import importlib.machinery

        import lightning.pytorch  # noqa: F401 - only: is Noise2Void's stack installed?
        import torchmetrics  # noqa: F401 - only: is Noise2Void's stack installed?

        for mod in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
            m = types.ModuleType(mod)
            m.__spec__ = importlib.machinery.ModuleSpec(mod, None)
            sys.modules[mod] = m
        sys.modules["torchvision"].__version__ = "absent"
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    import careamics
    import torch
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config

    x = np.load(inp).astype(np.float32)
    cfg = create_advanced_n2v_config(
        experiment_name="n2v",
        data_type="array",
        axes="SYX",
        patch_size=[64, 64],
        batch_size=16,
        num_epochs=1000,  # bounded by max_time below
        num_steps=20,
        num_workers=0,
        seed=seed,
        logger="none",
        trainer_params={
            "accelerator": "cpu",
            "max_time": f"00:00:{int(seconds) // 60:02d}:{int(seconds) % 60:02d}",
            "enable_model_summary": False,
        },
    )
    with tempfile.TemporaryDirectory() as work:
        c = CAREamist(cfg, work_dir=work, enable_progress_bar=False)
        t0 = time.perf_counter()
        c.train(train_data=x)
        train_s = time.perf_counter() - t0
        epochs = int(c.trainer.current_epoch)
        steps = int(c.trainer.global_step)
        final = Path(work) / "final.ckpt"  # the weights at the stop, not the last epoch's checkpoint
        c.trainer.save_checkpoint(final)
        t0 = time.perf_counter()
        pred, _ = c.predict(x, batch_size=8, checkpoint=final)
        pred_s = time.perf_counter() - t0
    den = np.asarray(pred[0] if isinstance(pred, list) else pred, np.float32).reshape(x.shape)
    np.save(outp, den)
    Path(outp).with_suffix(".json").write_text(json.dumps({
        "train_s": train_s, "predict_s": pred_s, "epochs": epochs, "steps": steps,
        "careamics": careamics.__version__, "torch": torch.__version__,
        "config": "N2V UNet depth 2, 32 channels, patches 64x64, batch 16, 20 steps/epoch, Adam",
    }))


def run_n2v(python: str, noisy: np.ndarray, seconds: float, seed: int) -> tuple[np.ndarray | None, dict]:
    """N2V's output for ``noisy`` from a worker in the venv of ``python``; None and the reason where it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, outp = Path(tmp) / "noisy.npy", Path(tmp) / "n2v.npy"
        np.save(inp, noisy)
        cmd = [python, str(Path(__file__).resolve()), str(inp), str(outp), "--seconds", str(seconds), "--seed", str(seed)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 3 + 600)
        except subprocess.TimeoutExpired:
            return None, {"reason": f"worker timed out after {seconds * 3 + 600:.0f} s"}
        except OSError as exc:
            return None, {"reason": f"cannot start {python}: {exc}"}
        if p.returncode != 0 or not outp.is_file():
            tail = [ln for ln in (p.stderr or "").strip().splitlines() if ln.strip()][-1:] or ["no output"]
            return None, {"reason": f"worker failed (exit {p.returncode}): {tail[0][:200]}"}
        return np.load(outp), json.loads(outp.with_suffix(".json").read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inp", metavar="IN.npy")
    ap.add_argument("outp", metavar="OUT.npy")
    ap.add_argument("--seconds", type=float, default=240.0, help="training time")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    worker(args.inp, args.outp, args.seconds, args.seed)


if __name__ == "__main__":
    main()
