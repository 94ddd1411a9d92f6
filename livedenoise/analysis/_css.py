"""CSS, the paper's consecutive structural similarity (Noise2Atom, section "Evaluation").

CSS(I_n, I_n+1) is SSIM's formula with *global* statistics (mean, variance and covariance over
the whole frame, no sliding window) between two consecutive frames, with C1 = 1e-4 and
C2 = 9e-4, i.e. for intensities in [0, 1]. It needs no ground truth: the sample barely changes
within a frame time, so a good denoiser gives nearly the same frame twice.

Alone it proves little (a blank output scores 1.0); ``livedenoise evaluate`` adds ground-truth
metrics where a simulation provides them.

>>> import numpy as np
>>> a = np.random.default_rng(0).random((64, 64), dtype=np.float32)
>>> round(css(a, a), 6)
1.0
"""

from __future__ import annotations

import numpy as np

C1 = 1e-4
C2 = 9e-4


def css(previous: np.ndarray, current: np.ndarray) -> float:
    """CSS of two frames of the same shape: one pass, float64 accumulation, no float64 copies.

    ``einsum`` rather than ``np.dot``: a BLAS dot starts OpenBLAS's thread pool, whose threads
    then compete with onnxruntime for the cores (measured on a 2-core machine: 12 ms per 512x512
    pair against 1.6 ms here, and ~30 % slower inference beside it). This runs per frame in
    the daemon's publisher thread.
    """
    if previous.shape != current.shape:
        raise ValueError(f"CSS needs frames of one shape, got {previous.shape} and {current.shape}")
    a, b = previous.reshape(-1), current.reshape(-1)
    n = a.size
    mu_a, mu_b = float(a.mean(dtype=np.float64)), float(b.mean(dtype=np.float64))
    var_a = float(np.einsum("i,i->", a, a, dtype=np.float64)) / n - mu_a * mu_a
    var_b = float(np.einsum("i,i->", b, b, dtype=np.float64)) / n - mu_b * mu_b
    cov = float(np.einsum("i,i->", a, b, dtype=np.float64)) / n - mu_a * mu_b
    return ((2 * mu_a * mu_b + C1) * (2 * cov + C2)) / ((mu_a**2 + mu_b**2 + C1) * (var_a + var_b + C2))


def css_series(stack: np.ndarray) -> np.ndarray:
    """CSS between each pair of consecutive frames of a ``(T, H, W)`` stack: ``T - 1`` values.

    Vectorised over the frames (offline use: ``denoise``, ``css``, ``evaluate``).
    """
    if stack.ndim != 3 or stack.shape[0] < 2:
        raise ValueError("CSS needs a stack of at least two frames")
    x = np.asarray(stack, np.float64).reshape(stack.shape[0], -1)
    mu = x.mean(axis=1)
    dx = x - mu[:, None]
    var = (dx * dx).mean(axis=1)
    cov = (dx[:-1] * dx[1:]).mean(axis=1)
    a, b = mu[:-1], mu[1:]
    return ((2 * a * b + C1) * (2 * cov + C2)) / ((a**2 + b**2 + C1) * (var[:-1] + var[1:] + C2))


def scale_to_unit(stack: np.ndarray) -> np.ndarray:
    """``stack`` as float32 mapped to [0, 1] by its own minimum and maximum (a constant stack
    becomes zeros): CSS's constants assume that range, and a raw stack is in counts.

    >>> scale_to_unit(np.array([[2, 4], [6, 10]])).tolist()
    [[0.0, 0.25], [0.5, 1.0]]
    """
    lo, hi = float(stack.min()), float(stack.max())
    out = np.asarray(stack, dtype=np.float32) - np.float32(lo)
    if hi > lo:
        out /= np.float32(hi - lo)
    return out
