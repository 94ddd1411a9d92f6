"""How the benchmarks print: numbers in tables, percentiles, a figure of frames side by side, and
generated sections of the docs. One place, so that every report writes a missing figure and a
marker-delimited section the same way.
"""

from __future__ import annotations

import math
import os
import shlex
from pathlib import Path

import numpy as np


def fmt(v: float | None, spec: str) -> str:
    """``v`` formatted by ``spec``; "-" for a figure that is missing (None) or not finite."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def pct(values, q: float) -> float:
    """The ``q``-th percentile of ``values``; NaN for none."""
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else float("nan")


def figure(path: Path, panels: list[tuple[str, list[tuple[str, np.ndarray]]]]) -> None:
    """One row of frames per ``(label, [(title, image), ...])``, each scaled to its own 0.5-99.8 %."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = max(len(p) for _, p in panels)
    fig, axes = plt.subplots(len(panels), ncol, figsize=(1.9 * ncol, 2.05 * len(panels)), squeeze=False)
    for i, (cond, row) in enumerate(panels):
        for j in range(ncol):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(row):
                ax.axis("off")
                continue
            name, img = row[j]
            lo, hi = np.percentile(img, [0.5, 99.8])
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
            ax.set_title(name, fontsize=7)
            if j == 0:
                ax.set_ylabel(cond, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(doc: str, begin: str, end: str) -> str | None:
    """The section of ``doc`` between the markers, markers included; None where there is none."""
    if begin in doc and end in doc:
        return doc[doc.index(begin) : doc.index(end) + len(end)]
    return None


def replace_section(path: Path, text: str, begin: str, end: str) -> None:
    """Put ``text`` between the markers ``begin`` and ``end`` of ``path`` (appended where there are none)."""
    doc = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{text}\n{end}"
    if section(doc, begin, end) is not None:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)


def command(module: str, argv: list[str]) -> str:
    """The command line that ran benchmark ``module`` (its niceness included), for a report to quote."""
    nice = os.nice(0)
    return (f"nice -n {nice} " if nice else "") + shlex.join(["python", "-m", module, *argv])
