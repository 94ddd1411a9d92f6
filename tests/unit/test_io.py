"""The one movie reader (livedenoise.io) on files written here with the formats' own rules, the
calibration field of the protocol, the model card's pixel size, the recording's calibration and
``export``. Real vendor files: tests/system/test_formats.py."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile

from livedenoise.engine import ModelCard
from livedenoise.errors import LivedenoiseError, MalformedMessage, ModelError
from livedenoise.io import open_movie, read_movie, write_imagej
from livedenoise.protocol import Calibration, decode_detector_message, encode_image, pack

HAVE_RSCIIO = importlib.util.find_spec("rsciio") is not None
HAVE_H5PY = importlib.util.find_spec("h5py") is not None
needs_rsciio = pytest.mark.skipif(not HAVE_RSCIIO, reason='RosettaSciIO not installed (pip install -e ".[formats]")')


# --------------------------------------------------------------------------- protocol field


def test_calibration_travels_in_the_image_header():
    frame = np.arange(12, dtype="<u2").reshape(3, 4)
    msg = decode_detector_message(encode_image(frame, series_id=1, image_id=2, calibration=Calibration(0.0384, 0.25)))
    assert msg.calibration == Calibration(pixel_size_nm=0.0384, frame_time_s=0.25)
    assert decode_detector_message(encode_image(frame, series_id=1, image_id=2)).calibration is None


def _with_calibration(value) -> list:
    header = {"htype": "image", "series_id": 1, "image_id": 0, "shape": [2, 2], "dtype": "<u2", "calibration": value}
    return [pack(header), np.zeros((2, 2), "<u2").tobytes()]


def test_calibration_keys_are_optional_and_unknown_keys_ignored():
    msg = decode_detector_message(_with_calibration({"frame_time_s": 2, "detector": "HAADF"}))
    assert msg.calibration == Calibration(None, 2.0)
    assert decode_detector_message(_with_calibration({})).calibration is None


@pytest.mark.parametrize(
    "value", [[0.1], "0.1 nm", {"pixel_size_nm": -1.0}, {"pixel_size_nm": math.nan},
              {"frame_time_s": math.inf}, {"pixel_size_nm": "1"}, {"pixel_size_nm": True}, {"frame_time_s": 0}],
)
def test_a_bad_calibration_is_a_malformed_message(value):
    with pytest.raises(MalformedMessage, match="calibration"):
        decode_detector_message(_with_calibration(value))


def test_calibration_refuses_nonsense_when_built():
    with pytest.raises(ValueError, match="positive"):
        Calibration(pixel_size_nm=0.0)
    assert Calibration(np.float32(0.5)).pixel_size_nm == 0.5 and type(Calibration(np.float32(0.5)).pixel_size_nm) is float


# --------------------------------------------------------------------------- model card


def test_model_card_keeps_the_training_pixel_size_and_omits_it_when_unknown():
    from livedenoise.engine import Normalisation

    card = ModelCard(preset="p", normalisation=Normalisation(1.0, 2.0), pixel_size_nm=0.0127)
    assert ModelCard.from_json(card.to_json()).pixel_size_nm == 0.0127
    plain = ModelCard(preset="p", normalisation=Normalisation(1.0, 2.0))
    assert "pixel_size_nm" not in json.loads(plain.to_json())  # older readers still take the card
    assert ModelCard.from_json(plain.to_json()).pixel_size_nm is None
    bad = json.loads(card.to_json()) | {"pixel_size_nm": -3}
    with pytest.raises(ModelError, match="pixel_size_nm"):
        ModelCard.from_json(json.dumps(bad))


# --------------------------------------------------------------------------- TIFF


def test_imagej_tiff_keeps_pixel_size_and_frame_interval(tmp_path):
    frames = np.random.default_rng(0).random((3, 16, 12), dtype=np.float32)
    path = tmp_path / "m.tif"
    write_imagej(path, frames, pixel_size_nm=0.384, frame_time_s=0.236, labels=["a", "b", "c"])
    movie = open_movie(path)
    assert movie.shape == (3, 16, 12) and movie.dtype == np.float32
    assert movie.pixel_size_nm == pytest.approx(0.384) and movie.frame_time_s == pytest.approx(0.236)
    with tifffile.TiffFile(path) as tif:  # what Fiji reads: unit, 1 / XResolution, finterval
        num, den = tif.pages[0].tags["XResolution"].value
        assert tif.imagej_metadata["unit"] == "nm" and den / num == pytest.approx(0.384)
        assert tif.imagej_metadata["Labels"] == ["a", "b", "c"]
    np.testing.assert_array_equal(read_movie(path), frames)


def test_ome_tiff_calibration_is_converted_to_nm(tmp_path):
    path = tmp_path / "m.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 8), "<u2"), ome=True,
                     metadata={"axes": "TYX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "TimeIncrement": 0.1})
    movie = open_movie(path)
    assert movie.pixel_size_nm == pytest.approx(500.0) and movie.frame_time_s == pytest.approx(0.1)


def test_plain_tiff_has_no_calibration(tmp_path):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 8), "<u2"), resolution=(72, 72))  # dots per inch: not a pixel size
    assert open_movie(path).calibration is None


# --------------------------------------------------------------------------- Nion


def _ndata(path, data, properties, compression=zipfile.ZIP_STORED):
    import io

    buf = io.BytesIO()
    np.save(buf, data)
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("metadata.json", json.dumps(properties))
        zf.writestr("data.npy", buf.getvalue())
    return path


SEQUENCE = {
    "is_sequence": True, "collection_dimension_count": 0, "datum_dimension_count": 2, "title": "HAADF",
    "dimensional_calibrations": [{"offset": 0, "scale": 0.05, "units": "s"},
                                 {"offset": 0, "scale": 0.2, "units": "Å"}, {"offset": 0, "scale": 0.2, "units": "Å"}],
}


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_nion_ndata_sequence(tmp_path, compression):
    data = np.random.default_rng(1).integers(0, 500, (4, 10, 12)).astype("<u2")
    movie = open_movie(_ndata(tmp_path / "m.ndata", data, SEQUENCE, compression))
    assert movie.shape == (4, 10, 12) and movie.format == "Nion ndata" and movie.signal == "HAADF"
    assert movie.pixel_size_nm == pytest.approx(0.02) and movie.frame_time_s == pytest.approx(0.05)
    assert isinstance(movie.data, np.memmap) == (compression == zipfile.ZIP_STORED)  # large files stay on disk
    np.testing.assert_array_equal(movie.read(), data)


def test_nion_ndata_scan_frame_time_from_pixel_time(tmp_path):
    props = {"is_sequence": False, "datum_dimension_count": 2, "collection_dimension_count": 0,
             "dimensional_calibrations": [{"scale": 0.1, "units": "nm"}, {"scale": 0.1, "units": "nm"}],
             "metadata": {"scan": {"scan_device_parameters": {"pixel_time_us": 2.0}}}}
    movie = open_movie(_ndata(tmp_path / "m.ndata", np.zeros((16, 8), "f4"), props))
    assert movie.shape == (1, 16, 8) and movie.frame_time_s == pytest.approx(2e-6 * 16 * 8)


@pytest.mark.skipif(not HAVE_H5PY, reason="h5py not installed (formats extra)")
def test_nion_h5(tmp_path):
    import h5py

    data = np.arange(3 * 6 * 5, dtype="<f4").reshape(3, 6, 5)
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data).attrs["properties"] = json.dumps(SEQUENCE)
    movie = open_movie(path)
    assert movie.shape == (3, 6, 5) and movie.pixel_size_nm == pytest.approx(0.02)
    np.testing.assert_array_equal(movie.frames(1, 3), data[1:3])


@pytest.mark.parametrize(
    "props, shape, reason",
    [
        ({"datum_dimension_count": 1, "collection_dimension_count": 0}, (3, 100), "1-D signal"),
        ({"datum_dimension_count": 2, "collection_dimension_count": 2}, (3, 3, 8, 8), "not a movie"),
    ],
)
def test_nion_files_without_a_movie_are_refused(tmp_path, props, shape, reason):
    with pytest.raises(LivedenoiseError, match=reason):
        open_movie(_ndata(tmp_path / "m.ndata", np.zeros(shape, "f4"), props))


# --------------------------------------------------------------------------- bad input


def _bad(tmp_path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("movie.xyz", b"whatever", "unknown file type .xyz"),
        ("noext", b"whatever", "unknown file type (no extension)"),
        ("movie.tif", b"not a tiff at all", "as TIFF"),
        ("movie.ndata", b"PK\x03\x04 not really a zip", "Nion .ndata"),
        ("movie.npy", b"\x93NUMPY garbage", "as a .npy array"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, name, content, fragment):
    path = _bad(tmp_path, name, content)
    with pytest.raises(LivedenoiseError) as err:
        open_movie(path)
    assert fragment in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_npy_and_ndata_are_refused(tmp_path):
    full = tmp_path / "full.npy"
    np.save(full, np.zeros((4, 32, 32), "<u2"))
    cut = _bad(tmp_path, "cut.npy", full.read_bytes()[:3000])
    with pytest.raises(LivedenoiseError, match=r"cut\.npy"):
        open_movie(cut)
    nd = _ndata(tmp_path / "m.ndata", np.zeros((4, 32, 32), "<u2"), SEQUENCE)
    cut = _bad(tmp_path, "cut.ndata", nd.read_bytes()[:4000])
    with pytest.raises(LivedenoiseError, match=r"cut\.ndata"):
        open_movie(cut)


@needs_rsciio
@pytest.mark.parametrize("name", ["fake.emd", "fake.dm4", "fake.ser", "fake.hspy", "fake.mrc"])
def test_a_file_that_is_not_what_its_extension_says(tmp_path, name):
    path = _bad(tmp_path, name, b"this is a text file, not a microscope file\n" * 4)
    with pytest.raises(LivedenoiseError) as err:
        open_movie(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_without_the_extra_tiff_and_npy_work_and_vendor_files_say_what_to_install(tmp_path):
    """A fresh interpreter in which RosettaSciIO cannot be imported (as without the extra)."""
    np.save(tmp_path / "m.npy", np.zeros((2, 8, 8), "<u2"))
    tifffile.imwrite(tmp_path / "m.tif", np.zeros((2, 8, 8), "<u2"))
    (tmp_path / "m.dm4").write_bytes(b"\x00" * 64)
    code = (
        "import sys; sys.modules['rsciio'] = None\n"
        "from livedenoise.cli import main\n"
        "sys.argv = ['livedenoise', 'css', sys.argv[1]]\n"
        "main()\n"
    )
    for name in ("m.npy", "m.tif"):
        ok = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and "mean" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.dm4")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ['error: .dm4 files need RosettaSciIO: pip install "livedenoise[formats]"']


# --------------------------------------------------------------------------- recording and export


def _record(tmp_path, calibrations):
    from livedenoise.daemon import Delivered
    from livedenoise.recording import Recorder, RecordingConfig

    rec = Recorder(RecordingConfig(tmp_path / "run", raw=True, chunk_frames=100))
    rec.start()
    for i, cal in enumerate(calibrations):
        raw = np.full((8, 6), i, "<u2")
        rec.submit(Delivered(3, i, raw, np.full((8, 6), i / 10, np.float32), None, 1.0, 10**18 + i, cal))
    rec.close()
    return tmp_path / "run"


def test_recording_keeps_calibration_and_times_and_a_change_closes_the_chunk(tmp_path):
    from livedenoise.recording import read_index

    a, b = Calibration(0.0384, 0.25), Calibration(0.05, 0.25)
    entries = [e for e in read_index(_record(tmp_path, [a, a, b, None])) if e.kind == "denoised"]
    assert [(e.image_ids, e.calibration) for e in entries] == [((0, 1), a), ((2,), b), ((3,), None)]
    assert entries[0].start_times == (10**18, 10**18 + 1)


def test_export_to_imagej_tiff(tmp_path):
    from livedenoise.recording import export_recording

    cal = Calibration(0.0384, 0.25)
    done = export_recording(_record(tmp_path, [cal] * 4), tmp_path / "out.tif")
    assert done.frames == 4 and done.kinds == ("raw", "denoised")
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        data = tif.series[0].asarray()
        meta = tif.imagej_metadata
        num, den = tif.pages[0].tags["XResolution"].value
    assert data.shape == (4, 2, 8, 6) and meta["unit"] == "nm" and den / num == pytest.approx(0.0384)
    assert meta["finterval"] == pytest.approx(0.25) and meta["Labels"][:2] == ["series 3 image 0 raw", "series 3 image 0 denoised"]
    info = json.loads(meta["Info"])
    assert info["image_ids"] == [0, 1, 2, 3] and info["start_times_ns"][3] == 10**18 + 3
    np.testing.assert_array_equal(data[:, 0, 0, 0], [0, 1, 2, 3])


@needs_rsciio
@pytest.mark.parametrize("suffix", [".hspy", ".zspy", ".emd"])
def test_export_to_rosettasciio_formats_reads_back(tmp_path, suffix):
    import importlib

    from livedenoise.recording import export_recording

    out = tmp_path / f"out{suffix}"
    export_recording(_record(tmp_path, [Calibration(0.0384, 0.25)] * 3), out)
    module = {".hspy": "rsciio.hspy", ".zspy": "rsciio.zspy", ".emd": "rsciio.emd"}[suffix]
    (sig,) = importlib.import_module(module).file_reader(str(out))
    assert sig["data"].shape == (3, 2, 8, 6)
    assert sig["axes"][-1]["scale"] == pytest.approx(0.0384) and sig["axes"][-1]["units"] == "nm"
    if suffix != ".emd":
        assert sig["metadata"]["livedenoise"]["image_ids"] == [0, 1, 2]


def test_export_refuses_an_unknown_extension(tmp_path):
    from livedenoise.recording import export_recording

    with pytest.raises(LivedenoiseError, match="export writes"):
        export_recording(_record(tmp_path, [None]), tmp_path / "out.png")
