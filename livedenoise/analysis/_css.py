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


#: Pixels per frame that :func:`css_chain` sums at a time: the float64 scratch of a run of 8
#: (640 KiB) stays in a core's L2, a 4096² frame costs no 128 MiB float64 copy, and each dot
#: product stays on the calling thread: OpenBLAS runs a ``ddot`` of up to 10,000 elements there
#: and a longer one on its thread pool (measured here: 16,384 used the pool, 8,192 did not),
#: whose threads would compete with onnxruntime for the cores.
CSS_CHUNK = 8192


def css(previous: np.ndarray, current: np.ndarray) -> float:
    """CSS of two frames of the same shape (:func:`css_chain` of one frame: the same arithmetic,
    so the daemon's published values and this agree to the last bit)."""
    if previous.shape != current.shape:
        raise ValueError(f"CSS needs frames of one shape, got {previous.shape} and {current.shape}")
    return float(css_chain(previous, current[None])[0])


def css_chain(previous: np.ndarray | None, frames: np.ndarray) -> np.ndarray:
    """CSS of each frame of a ``(n, H, W)`` run against the frame before it: the first against
    ``previous`` (NaN where it is None), the others against their predecessor in the run.

    Vectorised over the run, as the daemon's publisher calls it once per batch of a series. Each
    frame's sum, sum of squares and product with its predecessor are float64 dot products (exact
    products of float32 values, float64 accumulation) over column chunks copied into float64
    scratch (:data:`CSS_CHUNK` pixels a frame): three passes per frame instead of the five of a
    pairwise formula. Measured on this project's 2-core CPU, CPU time per frame: 19-21 us at 128²
    in runs of 8 (81-100 us pair by pair with ``einsum``, 28-35 us with ``einsum`` over the run),
    340-560 us at 512² in runs of 4 (790-900 us pair by pair). A frame's value is the same bits
    whatever run it is part of.
    """
    n = frames.shape[0]
    if n == 0:
        return np.empty(0)
    rows = frames.reshape(n, -1)
    m = rows.shape[1]
    first = 0 if previous is None else 1
    k = n + first
    if k < 2:
        return np.full(n, np.nan)
    if previous is not None and previous.size != m:
        raise ValueError(f"CSS needs frames of one shape, got {previous.shape} and {frames.shape[1:]}")
    w = min(CSS_CHUNK, m)
    work = np.empty(k * w, np.float64)
    ones = np.ones(w)
    s1, s2, s12 = np.zeros(k), np.zeros(k), np.zeros(k - 1)
    for c0 in range(0, m, w):
        c1 = min(m, c0 + w)
        x = work[: k * (c1 - c0)].reshape(k, c1 - c0)
        if first:
            np.copyto(x[0], previous.reshape(-1)[c0:c1])
        np.copyto(x[first:], rows[:, c0:c1])
        s1 += np.vecdot(x, ones[: c1 - c0])  # one dot product per row, whatever the number of rows
        s2 += np.vecdot(x, x)
        s12 += np.vecdot(x[:-1], x[1:])
    mu = s1 / m
    var = s2 / m - mu * mu
    a, b = mu[:-1], mu[1:]
    cov = s12 / m - a * b
    values = ((2 * a * b + C1) * (2 * cov + C2)) / ((a * a + b * b + C1) * (var[:-1] + var[1:] + C2))
    return values if first else np.concatenate(([np.nan], values))


def css_series(stack: np.ndarray) -> np.ndarray:
    """CSS between each pair of consecutive frames of a ``(T, H, W)`` stack: ``T - 1`` values
    (offline: ``denoise``, ``css``, ``evaluate``), by the daemon's own :func:`css_chain`."""
    if stack.ndim != 3 or stack.shape[0] < 2:
        raise ValueError("CSS needs a stack of at least two frames")
    return css_chain(None, np.asarray(stack))[1:]


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
