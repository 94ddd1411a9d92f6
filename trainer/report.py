"""Figures written next to a trained model (matplotlib, Agg backend: no display needed).

* ``<out>.losses.png`` -- L_cycle and L_lfc against training step with the paper's convergence
  thresholds (as the paper's Fig. 1), and the critic's Wasserstein estimate below;
* ``<out>.preview.png`` -- noisy | denoised for a few consecutive frames, with the CSS of each
  consecutive pair (the paper's metric; raw frames scaled to [0, 1] by their 0.1/99.9 percentiles,
  denoised ones through :func:`livedenoise.engine.to_display`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from livedenoise.analysis import css

from .loop import CYCLE_TARGET, LFC_TARGET


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smooth(values: np.ndarray, n: int) -> np.ndarray:
    if len(values) < n or n < 2:
        return values
    kernel = np.ones(n) / n
    head = np.cumsum(values[: n - 1]) / np.arange(1, n)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def loss_curves(histories: list[list[dict[str, float]]], path: Path, title: str = "") -> Path:
    """The paper's Fig. 1 for each stage-1 run (``histories``: one loss history per run; a second
    run is drawn dashed, a third dotted, ...)."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    styles = ("-", "--", ":", "-.")
    for i, history in enumerate(histories):
        steps = np.array([h["step"] for h in history])
        smooth = max(1, len(history) // 100)
        run = f" (run {i + 1})" if len(histories) > 1 else ""
        ls = styles[i % len(styles)]
        for key, label, target, color in (
            ("cycle", r"$\mathcal{L}_{cycle}$", CYCLE_TARGET, "tab:blue"),
            ("lfc", r"$\mathcal{L}_{lfc}$", LFC_TARGET, "tab:orange"),
        ):
            v = np.array([h[key] for h in history])
            if len(histories) == 1:
                ax.plot(steps, v, color=color, alpha=0.25, lw=0.8)
            ax.plot(steps, _smooth(v, smooth), color=color, ls=ls, label=label + run)
            if i == 0:
                ax.axhline(target, color=color, ls="--", lw=0.8)
        w = np.array([h["wdist"] for h in history])
        ax2.plot(steps, _smooth(w, smooth), color="tab:green", ls=ls, label="critic: E[D(c)] - E[D(Ms2c(s))]" + run)
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.legend(title="thin dashed: paper's convergence thresholds", fontsize="small")
    ax.set_title(title or "Noise2Atom training")
    ax2.set_xlabel("step (batch)")
    ax2.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _display_raw(frames: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(frames, [0.1, 99.9])
    return np.clip((frames - lo) / max(hi - lo, 1e-12), 0, 1)


def preview(noisy: np.ndarray, denoised: np.ndarray, path: Path, title: str = "") -> dict[str, float]:
    """``noisy`` raw frames ``(T, H, W)``, ``denoised`` display frames in [0, 1]; returns mean CSS."""
    plt = _pyplot()
    raw = _display_raw(noisy.astype(np.float32))
    t = len(noisy)
    css_raw = [css(raw[i], raw[i + 1]) for i in range(t - 1)]
    css_out = [css(denoised[i], denoised[i + 1]) for i in range(t - 1)]
    fig, axes = plt.subplots(2, t, figsize=(2.6 * t, 5.6), squeeze=False)
    for i in range(t):
        for row, (img, scores, name) in enumerate(((raw, css_raw, "noisy"), (denoised, css_out, "denoised"))):
            ax = axes[row, i]
            ax.imshow(img[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            label = f"{name} {i}" + (f"\nCSS({i - 1},{i}) = {scores[i - 1]:.3f}" if i else "")
            ax.set_title(label, fontsize=8)
    fig.suptitle(title or "noisy | denoised")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"css_noisy": float(np.mean(css_raw)), "css_denoised": float(np.mean(css_out))}
