"""The Python way in: what a notebook needs, in the words the CLI uses.

>>> import numpy as np, livedenoise
>>> frames = livedenoise.simulate(frames=6, size=128, seed=1)   # a noisy movie of single atoms
>>> clean = livedenoise.denoise(frames, model="rt")            # what `livedenoise denoise` writes
>>> clean.shape, clean.dtype, bool(0.0 <= clean.min() and clean.max() <= 1.0)
((6, 128, 128), dtype('float32'), True)
>>> livedenoise.load_model("general").card.input_frames     # the shipped self-supervised model
8
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .engine import Engine
from .errors import LivedenoiseError


def load_model(model: str | Path | Engine | None = "default", *, provider: str | None = "cpu",
               max_batch: int | None = None, threads: int | None = None) -> Engine:
    """An :class:`~livedenoise.engine.Engine` for a model file or a shipped model's name
    (``default``, ``rt``, ``temporal``, ``lowdose``, ``hops``, ``general``, ``filter``).
    ``provider``: ``cpu`` (default here: a notebook shares its GPU with everything else),
    ``cuda``, ``tensorrt`` or None (the GPU where a session gets one)."""
    if isinstance(model, Engine):
        return model
    return Engine(model if model is not None else "default", provider=provider, max_batch=max_batch, threads=threads)


def denoise(frames: Any, model: str | Path | Engine | None = "default", *, provider: str | None = "cpu",
            max_batch: int | None = None, threads: int | None = None) -> np.ndarray:
    """Denoise a movie ``(T, H, W)`` or one frame ``(H, W)`` (numpy, a movie :func:`open_movie`
    opened, or anything ``np.asarray`` takes: a dask array is computed here) as one series, in
    order, as ``livedenoise denoise``
    does: the same frames give the same float32 in [0, 1], frame for frame. A multi-frame model
    sees each frame with the ones before it (the first frames with the first repeated)."""
    from .io import Movie, to_wire_dtype

    stack = frames.frames(0, len(frames)) if isinstance(frames, Movie) else np.asarray(frames)
    single = stack.ndim == 2
    if single:
        stack = stack[None]
    if stack.ndim != 3:
        raise LivedenoiseError(f"frames of shape {stack.shape}: give (T, H, W) or (H, W)")
    engine = load_model(model, provider=provider, max_batch=max_batch, threads=threads)
    engine.reset_series(0)  # an engine passed in again starts a new series
    out = engine.run_stack(to_wire_dtype(stack, "frames"))
    return out[0] if single else out


def simulate(frames: int = 20, size: int = 256, dose: float = 300.0, seed: int = 0) -> np.ndarray:
    """A noisy movie of single heavy atoms on a light support (``livedenoise simulate movie``'s
    simulator at its defaults otherwise), float32 counts ``(frames, size, size)``."""
    from .sim import SimConfig, simulate_movie

    return simulate_movie(SimConfig(frames=frames, size=size, dose=dose, seed=seed)).noisy.astype(np.float32)
