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
    """CSS of two frames of the same shape (float64 accumulation, O(H*W), no temporaries kept)."""
    a = np.asarray(previous, dtype=np.float64).ravel()
    b = np.asarray(current, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"CSS needs frames of one shape, got {previous.shape} and {current.shape}")
    mu_a, mu_b = a.mean(), b.mean()
    da, db = a - mu_a, b - mu_b
    var_a, var_b = np.dot(da, da) / a.size, np.dot(db, db) / b.size
    cov = np.dot(da, db) / a.size
    return float(
        ((2 * mu_a * mu_b + C1) * (2 * cov + C2))
        / ((mu_a**2 + mu_b**2 + C1) * (var_a + var_b + C2))
    )


def css_series(stack: np.ndarray) -> np.ndarray:
    """CSS between each pair of consecutive frames of a ``(T, H, W)`` stack: ``T - 1`` values."""
    if stack.ndim != 3 or stack.shape[0] < 2:
        raise ValueError("CSS needs a stack of at least two frames")
    return np.array([css(stack[i], stack[i + 1]) for i in range(stack.shape[0] - 1)])
