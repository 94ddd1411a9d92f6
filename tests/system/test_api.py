"""The Python API (``livedenoise.denoise`` and friends) against the CLI it mirrors: the same frames
give the same output as ``livedenoise denoise`` writes, for a one-frame and a multi-frame shipped
model; shipped names resolve in the engine; bad input is one clear error."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

import livedenoise
from livedenoise.errors import LivedenoiseError
from livedenoise.io import write_imagej


@pytest.fixture(scope="module")
def movie() -> np.ndarray:
    return livedenoise.simulate(frames=12, size=128, seed=4)


@pytest.mark.parametrize("model", ["rt", "lowdose", "general"])  # 1 frame; 5 frames; 8 frames
def test_denoise_returns_what_the_cli_writes(model, movie, tmp_path):
    src, out = tmp_path / "movie.tif", tmp_path / "clean.tif"
    write_imagej(src, movie)
    proc = subprocess.run([sys.executable, "-m", "livedenoise", "denoise", str(src), "-o", str(out), "--model", model,
                           "--provider", "cpu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = tifffile.imread(out)
    api = livedenoise.denoise(movie, model=model)
    assert api.dtype == np.float32 and api.shape == movie.shape
    np.testing.assert_array_equal(api, written)
    # a movie opened from the file, and a loaded engine used twice (a new series each time), agree too
    engine = livedenoise.load_model(model)
    np.testing.assert_array_equal(livedenoise.denoise(livedenoise.open_movie(src), model=engine), written)
    np.testing.assert_array_equal(livedenoise.denoise(movie, model=engine), written)


def test_one_frame_in_one_frame_out_and_bad_input_is_one_error(movie):
    one = livedenoise.denoise(movie[0], model="rt")
    np.testing.assert_array_equal(one, livedenoise.denoise(movie[:1], model="rt")[0])
    with pytest.raises(LivedenoiseError, match=r"frames of shape \(2, 3, 4, 5\)"):
        livedenoise.denoise(np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(LivedenoiseError, match="not supported"):
        livedenoise.denoise(np.zeros((2, 64, 64), np.complex64))
    with pytest.raises(LivedenoiseError, match="not found: no-such-model"):
        livedenoise.load_model("no-such-model")


def test_the_api_loads_nothing_until_used():
    code = ("import sys, livedenoise; heavy = [m for m in ('livedenoise.engine', 'onnxruntime', 'livedenoise.analysis') "
            "if m in sys.modules]; assert not heavy, heavy; livedenoise.denoise; assert 'livedenoise.engine' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
