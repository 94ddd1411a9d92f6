"""The benchmarks' shared test conditions: ``dose300``, ``dose100``, ``dose300-grad`` and ``dev-D``.

One table, so that ``quality``, ``tracks`` and ``atoms_check`` score the same movies: simulated
ones by :mod:`livedenoise.sim` with seeds the shipped models were not trained on (seed 1; seed 3
was their validation movie), and the abTEM multislice movie dev-D, read where it lies beside the
repository (never copied). ``benchmarks/quality.py``'s docstring says why each is there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEV_D = ROOT.parent / "shared/data/dev-D"  # beside the repository, never copied into it
DEFAULT = "dose300,dose100,dose300-grad,dev-D"  # every condition, the order of the reports
PIXEL_NM = 0.04  # the simulators' pixel size
SHIPPED = ("default", "rt", "temporal", "lowdose", "hops")  # the Noise2Atom models under livedenoise/models
DAEMON_THRESHOLD = 0.4  # serve --atoms' default: absolute height above the median on the [0, 1] output


@dataclass(frozen=True)
class Condition:
    key: str
    label: str
    dose: float
    gradient: float = 0.0
    seed: int = 2
    hop_prob: float = 0.02
    dev_d: bool = False


def conditions(gradient: float = 4.0) -> dict[str, Condition]:
    """Every condition by key; ``gradient``: the thickness gradient of ``dose300-grad``."""
    cs = [
        Condition("dose300", "simulated, dose 300 e-/px", 300.0, seed=2),
        Condition("dose100", "simulated, dose 100 e-/px, hop probability 0.1", 100.0, seed=4, hop_prob=0.1),
        Condition("dose300-grad", f"simulated, dose 300 e-/px, thickness gradient {gradient:g}", 300.0,
                  gradient=gradient, seed=5),
        Condition("dev-D", "dev-D (abTEM multislice), dose 300 e-/px", 300.0, dev_d=True),
    ]
    return {c.key: c for c in cs}


@dataclass
class Data:
    noisy: np.ndarray
    truth: np.ndarray
    positions: np.ndarray
    groups: np.ndarray | None
    read2: float  # variance of the Gaussian read noise, independent per pixel, counts^2
    line2: float  # variance of the Gaussian offset per scan line (row), counts^2
    source: str

    @property
    def sigma2(self) -> float:
        """The additive Gaussian variance of one pixel."""
        return self.read2 + self.line2


def load_condition(c: Condition, frames: int, size: int, dev_d: Path = DEV_D) -> Data:
    """The movie of condition ``c``: its first ``frames`` frames (simulated at ``size``^2)."""
    from livedenoise.io import read_movie
    from livedenoise.scoring import load_positions
    from livedenoise.sim import SimConfig, simulate_movie

    if c.dev_d:
        noisy = read_movie(dev_d / "D_noisy.tif").astype("float32")[:frames]
        truth = read_movie(dev_d / "D_truth.tif").astype("float32")[:frames]
        pos, groups = load_positions(dev_d / "D_positions.json")
        # dev-D's README: read noise 0.25, row offset 0.15 counts, the same model as the simulator
        return Data(noisy, truth, pos[:frames], groups, 0.25**2, 0.15**2, f"{dev_d}/D_*.tif, first {len(noisy)} frames")
    cfg = SimConfig(size=size, frames=frames, dose=c.dose, gradient=c.gradient, seed=c.seed, hop_prob=c.hop_prob)
    m = simulate_movie(cfg)
    src = (f"simulate_movie(SimConfig(size={size}, frames={frames}, dose={c.dose:g}, gradient={c.gradient:g},"
           f" seed={c.seed}, hop_prob={c.hop_prob:g}))")
    return Data(m.noisy, m.truth, m.positions, m.groups, cfg.read_noise**2, cfg.line_noise**2, src)
