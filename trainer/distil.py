"""Stage 2, past the paper: distil Ms2c into a single-frame Ms2c with the movie's temporal context.

Why: at a dose where one frame holds more noise than signal, the unpaired objective alone does
not place every atom (``tiny``: atom F1 0.58 on a held-out movie, below the best Gaussian filter's
0.73; docs/training.md). Offline, the training movie has every frame's neighbours, the ones after
it included: the stage-1 Ms2c (the *teacher*) applied to the mean of the K frames centred on a
frame sees K times the dose and places the atoms far better; its outputs are averaged over the 8
flips and rotations of the frame (:func:`dihedral_mean`). A fresh Ms2c (the *student*: the
preset's generator, or its own ``Preset.student`` network, as ``rt``'s) then learns to give that
output from the frame alone: L1 between the student's output and the teacher's on the same random
crops, under the 8 flips and rotations of the square.

Live, the student reads what stage 1's Ms2c read (one frame; for a multi-frame preset the mean of
its causal window): no look-ahead, no added latency.
What it cannot learn from one frame (an atom that just hopped) the teacher's window blurs, so hops
are placed less often than by a per-frame filter (measured in docs/training.md). The whole stage
is still free of ground truth: the teacher is the Noise2Atom Ms2c trained on the user's movie.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .networks import UNet
from .presets import NetConfig


@dataclass(frozen=True, slots=True)
class DistilConfig:
    """``window``: frames of the teacher's centred mean (0: no distillation, the paper's Ms2c is
    exported); ``steps`` of Adam at ``lr`` with a one-cycle schedule, ``batch`` crops each."""

    window: int = 0
    steps: int = 1200
    batch: int = 8
    lr: float = 1e-3


def centred_means(frames: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """``(N, H, W)`` float32: for each frame ``idx``, the mean of the ``k`` frames centred on it
    (``k // 2`` before; clamped at the movie's ends, so an end frame is counted more than once)."""
    t = frames.shape[0]
    lags = np.arange(k) - k // 2
    out = np.empty((len(idx), *frames.shape[1:]), np.float32)
    for n, i in enumerate(np.asarray(idx)):
        out[n] = np.asarray(frames[np.clip(i + lags, 0, t - 1)], np.float32).mean(axis=0)
    return out


def dihedral_mean(fn: Callable[[np.ndarray], np.ndarray], frames: np.ndarray) -> np.ndarray:
    """The mean of ``fn`` over the 8 flips and rotations of ``frames`` ``(T, H, W)``, each output
    turned back: the teacher's targets. Atoms have no preferred orientation, so the 8 views differ
    only in the teacher's own errors, which the mean halves or better (measured in
    docs/training.md: student F1 +0.03 to +0.05, PSNR +0.25 dB)."""
    acc = None
    for code in range(8):
        view = np.rot90(frames, code % 4, axes=(-2, -1))
        view = view[..., ::-1] if code >= 4 else view
        y = np.asarray(fn(np.ascontiguousarray(view)))
        y = y[..., ::-1] if code >= 4 else y
        y = np.rot90(y, -(code % 4), axes=(-2, -1))
        acc = y.astype(np.float32) if acc is None else acc + y
    return np.ascontiguousarray(acc / 8)


def _dihedral(x: torch.Tensor, code: int) -> torch.Tensor:
    """One of the 8 symmetries of the square (``code`` 0..7) on the last two axes."""
    x = torch.rot90(x, code % 4, (-2, -1))
    return x.flip(-1) if code >= 4 else x


def distil(
    net: NetConfig,
    inputs: np.ndarray,
    targets: np.ndarray,
    cfg: DistilConfig,
    *,
    crop: int = 128,
    seed: int = 0,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> tuple[torch.nn.Module, list[float]]:
    """Train a student Ms2c (``net``'s U-Net on one channel) so that ``student(inputs) ~ targets``.

    ``inputs``: normalised single frames ``(T, H, W)`` (a multi-frame preset: their causal window
    means, what its Ms2c reads behind the fixed window mean); ``targets``: the teacher's outputs on the
    same frames' centred means, in Ms2c's tanh range. Returns the student (eval mode) and its L1
    per step. Deterministic for a ``seed`` on the CPU.
    """
    from .loop import progress_bar

    dev = torch.device(device)
    torch.manual_seed(seed + 104729)  # its own stream: the student's start does not depend on stage 1's length
    rng = np.random.default_rng(seed + 104729)
    student = UNet(net, in_channels=1).to(dev)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    x_all = torch.from_numpy(np.ascontiguousarray(inputs, np.float32))
    y_all = torch.from_numpy(np.ascontiguousarray(targets, np.float32))
    t, h, w = x_all.shape
    losses: list[float] = []
    t0 = time.monotonic()
    bar = progress_bar("distil", progress)
    student.train()
    with bar:
        task = bar.add_task("distil", total=cfg.steps, info="")
        for step in range(1, cfg.steps + 1):
            n = rng.integers(0, t, cfg.batch)
            r = rng.integers(0, h - crop + 1, cfg.batch)
            c = rng.integers(0, w - crop + 1, cfg.batch)
            code = int(rng.integers(8))
            xb = torch.stack([x_all[i, a : a + crop, b : b + crop] for i, a, b in zip(n, r, c)])[:, None]
            yb = torch.stack([y_all[i, a : a + crop, b : b + crop] for i, a, b in zip(n, r, c)])[:, None]
            xb, yb = _dihedral(xb, code).to(dev), _dihedral(yb, code).to(dev)
            loss = (student(xb) - yb).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            recent = float(np.mean(losses[-20:]))
            bar.update(task, completed=step, info=f"L1 to teacher {recent:.4f}")
            if not bar.live.is_started and (step % 200 == 0 or step == cfg.steps):
                rate = step / max(time.monotonic() - t0, 1e-9)
                log(f"distil {step}/{cfg.steps}  L1 to teacher {recent:.4f}  {rate:.2f} steps/s  "
                    f"ETA {(cfg.steps - step) / rate / 60:.1f} min")
    return student.eval(), losses
