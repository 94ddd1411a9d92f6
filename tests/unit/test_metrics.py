"""CSS, the paper's consecutive structural similarity: hand-known values and its two forms."""

import numpy as np
import pytest

from livedenoise.analysis import C1, C2, css, css_series


def test_css_of_hand_made_frames() -> None:
    a = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)  # mean 0.5, variance 0.25
    b = 1.0 - a  # same mean and variance, covariance -0.25
    expected = ((2 * 0.25 + C1) * (2 * -0.25 + C2)) / ((0.25 + 0.25 + C1) * (0.25 + 0.25 + C2))
    assert css(a, b) == pytest.approx(expected, rel=1e-12)
    assert css(a, a) == pytest.approx(1.0, abs=1e-12)
    blank = np.zeros((2, 2), np.float32)
    assert css(blank, blank) == pytest.approx(1.0)  # why CSS alone proves nothing
    assert css(blank, a) < 0.1


@pytest.mark.parametrize("size", [16, 128, 512])
def test_one_pass_css_equals_the_vectorised_series(size: int) -> None:
    rng = np.random.default_rng(size)
    a = (rng.random((size, size)) * 0.4).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1).astype(np.float32)
    stack = np.stack([a, b, a, np.zeros_like(a), np.zeros_like(a)])
    pairwise = [css(stack[i], stack[i + 1]) for i in range(len(stack) - 1)]
    assert css_series(stack) == pytest.approx(pairwise, abs=1e-9)


def test_css_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        css(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError):
        css_series(np.zeros((1, 4, 4)))
