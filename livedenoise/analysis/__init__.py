"""What is measured on frames without ground truth, live and offline: the atoms of a denoised frame
(:func:`find_atoms`) and CSS, the paper's consecutive structural similarity (:func:`css`).

numpy only: the daemon uses both. Scoring against ground truth (PSNR, SSIM, atom F1, hops) is
:mod:`livedenoise.analysis.evaluate`, which the daemon never imports.
"""

from ._atoms import Atoms, find_atoms, local_maxima
from ._css import C1, C2, css, css_chain, css_series, scale_to_unit

__all__ = ["C1", "C2", "Atoms", "css", "css_chain", "css_series", "find_atoms", "local_maxima", "scale_to_unit"]
