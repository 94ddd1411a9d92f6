"""The publishing scripts of docs/acquisition.md against a real daemon on loopback.

Each script (docs/examples/acquisition/) runs inside a vendor's Python, next to an API that cannot
be installed here: Gatan's ``DigitalMicrograph`` module exists only inside DigitalMicrograph, and
Thermo Fisher's ``autoscript_tem_microscope_client`` only with an AutoScript licence. The tests
therefore put a *stand-in* for that module in ``sys.modules`` (written below, limited to the calls
the scripts make, with the semantics the vendors document: a DM image's ``GetNumArray`` is a view
on the image's own memory, DigiScan writes each frame into the image it was given, an AdornedImage
has ``.data`` and ``.metadata.binary_result.pixel_size.x`` in metres). Everything after the vendor
call is real: the script's own core, a ZMQ socket on 127.0.0.1, and ``serve``'s daemon receiving,
denoising (a real ONNX model) and publishing.
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from livedenoise.protocol import Calibration, ImageFrame, SeriesEnd, SeriesStart, decode_detector_message
from livedenoise.testing import free_addr, reference_denoise

SCRIPTS = Path(__file__).resolve().parents[2] / "docs" / "examples" / "acquisition"


def load_script(name: str, monkeypatch: pytest.MonkeyPatch, **vendor_modules: types.ModuleType) -> types.ModuleType:
    """Import ``SCRIPTS/name.py`` under its own name (its ``__main__`` part does not run), with the
    vendor's modules replaced by the stand-ins given."""
    for module_name, module in vendor_modules.items():
        monkeypatch.setitem(sys.modules, module_name, module)
    spec = importlib.util.spec_from_file_location(f"acquisition_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_delivered(raw, denoised, frames, *, series_id, dtype, pixel_size_nm, model) -> list[float]:
    """Every frame arrived once, in order, as sent (ids, shape, dtype, pixels, calibration), and was
    denoised by the model. Returns the frame times the headers carried."""
    ids = list(range(len(frames)))
    assert [m.header["image_id"] for m in raw] == ids
    assert [m.header["image_id"] for m in denoised] == ids
    for r, d, frame in zip(raw, denoised, frames, strict=True):
        assert r.header["series_id"] == d.header["series_id"] == series_id
        assert r.header["dtype"] == dtype and r.data.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(r.data, frame)
        assert isinstance(r.header["start_time"], int) and r.header["start_time"] == d.header["start_time"]
        assert r.header["calibration"] == d.header["calibration"]
        assert r.header["calibration"]["pixel_size_nm"] == pytest.approx(pixel_size_nm)
        np.testing.assert_allclose(d.data, reference_denoise(model, frame), rtol=0, atol=2e-6)
    assert denoised[0].header["css"] is None  # the start message began a series
    assert all(d.header["css"] is not None for d in denoised[1:])
    return [r.header["calibration"].get("frame_time_s") for r in raw]


# --------------------------------------------------------------------------- DigitalMicrograph


class StandinImage:
    """Stands in for DM's ``Py_Image``: ``GetNumArray`` is a view on the image's memory, as in DM."""

    _ids = itertools.count(1)

    def __init__(self, array: np.ndarray, scale: float = 1.0, unit: str = ""):
        self.array, self.scale, self.unit, self.id = array, scale, unit, next(self._ids)

    def GetNumArray(self) -> np.ndarray:
        return self.array

    def GetDimensionScale(self, axis: int) -> float:
        return self.scale

    def GetDimensionUnitString(self, axis: int) -> str:
        return self.unit

    def GetID(self) -> int:
        return self.id


def standin_dm(frames: np.ndarray, scale: float, unit: str) -> types.ModuleType:
    """A stand-in ``DigitalMicrograph`` module: images, the front image, and a DigiScan that writes
    the next of ``frames`` into the image it was given, calibrated, taking width x height x dwell."""
    dm = types.ModuleType("DigitalMicrograph")
    images: dict[int, StandinImage] = {}
    params: dict[int, dict] = {}
    source = iter(frames)
    dm.front = None

    def CreateImage(array):
        image = StandinImage(np.array(array))
        images[image.id] = image
        return image

    def DS_CreateParameters(width, height, rotation, pixel_time_us, line_sync):
        pid = len(params) + 1
        params[pid] = {"width": width, "height": height, "dwell_us": pixel_time_us}
        return pid

    def DS_SetParametersSignal(pid, signal, data_bytes, selected, image_id):
        assert selected and data_bytes == images[image_id].array.itemsize
        params[pid]["image"] = images[image_id]

    def DS_StartAcquisition(pid, continuous, synchronous):
        assert not continuous and synchronous
        p = params[pid]
        frame = next(source)
        assert frame.shape == (p["height"], p["width"])
        image = p["image"]
        image.array[...] = frame  # in place: DigiScan fills the image it was given
        image.scale, image.unit = scale, unit
        time.sleep(p["width"] * p["height"] * p["dwell_us"] * 1e-6)

    def DS_DeleteParameters(pid):
        del params[pid]

    dm.CreateImage, dm.GetFrontImage = CreateImage, lambda: dm.front
    dm.DS_CreateParameters, dm.DS_SetParametersSignal = DS_CreateParameters, DS_SetParametersSignal
    dm.DS_StartAcquisition, dm.DS_DeleteParameters = DS_StartAcquisition, DS_DeleteParameters
    return dm


def test_dm_scan_frames_reach_serve_complete_calibrated_and_denoised(
    conv_model, detector, daemon_factory, subscriber, frames_u2, monkeypatch
):
    frames = frames_u2[:8]
    height, width = frames.shape[1:]
    dm = standin_dm(frames, scale=0.384, unit="\u00c5")  # DM calibrates in Å here: 0.0384 nm on the wire
    script = load_script("dm_publish", monkeypatch, DigitalMicrograph=dm)
    push, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, pull=True)
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()

    dwell_us = 0.5
    assert script.publish_scan(dm, push, width, height, dwell_us, len(frames), series_id=7) == len(frames)

    denoised, raw = sub.collect(len(frames), timeout=20)
    times = check_delivered(
        raw, denoised, frames, series_id=7, dtype="<u4", pixel_size_nm=0.0384, model=conv_model
    )
    scan_s = width * height * dwell_us * 1e-6
    assert times[0] == pytest.approx(scan_s)  # the first frame: the nominal scan time
    assert all(t >= scan_s for t in times[1:])  # then measured, start to start
    stats = sub.stats_until(lambda s: s["denoised"] == len(frames))
    assert stats["malformed"] == 0 and stats["gaps"] == 0


def test_dm_live_view_publishes_each_finished_frame_once(
    conv_model, detector, daemon_factory, subscriber, frames_u2, monkeypatch
):
    """The front image is overwritten top half first, then bottom half, as a scan fills it: the
    script must publish each frame once, whole, never a half-written one."""
    frames = frames_u2[:5]
    dm = standin_dm(frames, scale=0.05, unit="nm")
    dm.front = StandinImage(frames[0].copy(), scale=0.05, unit="nm")
    script = load_script("dm_publish", monkeypatch, DigitalMicrograph=dm)
    push, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, pull=True)
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()

    published: list[int] = []
    thread = threading.Thread(
        target=lambda: published.append(script.publish_live(dm, push, idle_s=10, frames=len(frames), series_id=3))
    )
    thread.start()
    raw, denoised = [], []
    try:
        for i, frame in enumerate(frames):
            if i:
                half = frame.shape[0] // 2
                dm.front.array[:half] = frame[:half]
                time.sleep(0.05)  # ten polls with the old last row: nothing to publish yet
                dm.front.array[half:] = frame[half:]
            d, r = sub.collect(1, timeout=10)
            denoised += d
            raw += r
    finally:
        thread.join(15)
    assert published == [len(frames)] and not thread.is_alive()
    check_delivered(raw, denoised, frames, series_id=3, dtype="<u2", pixel_size_nm=0.05, model=conv_model)


# --------------------------------------------------------------------------- AutoScript TEM


def standin_autoscript(frames: np.ndarray, pixel_size_m: float) -> tuple[types.ModuleType, types.ModuleType]:
    """Stand-ins for ``autoscript_tem_microscope_client`` and its ``enumerations``: a client whose
    ``acquisition.acquire_stem_image(detector, size, dwell_time)`` returns the next of ``frames`` as
    an AdornedImage-like object (``.data``, ``.metadata.binary_result.pixel_size.x`` in metres)."""
    client = types.ModuleType("autoscript_tem_microscope_client")
    enumerations = types.ModuleType("autoscript_tem_microscope_client.enumerations")
    enumerations.DetectorType = SimpleNamespace(HAADF="HAADF", BF="BF")
    source = iter(frames)

    def acquire_stem_image(detector, size, dwell_time):
        assert detector == "HAADF"
        frame = next(source)
        assert frame.shape == (size, size)
        time.sleep(size * size * dwell_time)
        pixel_size = SimpleNamespace(x=pixel_size_m, y=pixel_size_m)
        return SimpleNamespace(data=frame, metadata=SimpleNamespace(binary_result=SimpleNamespace(pixel_size=pixel_size)))

    class TemMicroscopeClient:
        def __init__(self):
            self.acquisition = SimpleNamespace(acquire_stem_image=acquire_stem_image)

    client.TemMicroscopeClient, client.enumerations = TemMicroscopeClient, enumerations
    return client, enumerations


def test_autoscript_stem_frames_reach_serve_calibrated_and_denoised(
    conv_model, detector, daemon_factory, subscriber, frames_u2, monkeypatch
):
    frames = frames_u2[:6]
    client, enumerations = standin_autoscript(frames, pixel_size_m=3.84e-11)
    script = load_script(
        "autoscript_publish",
        monkeypatch,
        autoscript_tem_microscope_client=client,
        **{"autoscript_tem_microscope_client.enumerations": enumerations},
    )
    push, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, pull=True)
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()

    size, dwell_s = frames.shape[1], 1e-6
    microscope = client.TemMicroscopeClient()
    assert script.publish_stem(microscope, push, script.DETECTOR, size, dwell_s, len(frames), series_id=11) == len(frames)

    denoised, raw = sub.collect(len(frames), timeout=20)
    times = check_delivered(
        raw, denoised, frames, series_id=11, dtype="<u2", pixel_size_nm=0.0384, model=conv_model
    )
    assert times[0] == pytest.approx(size * size * dwell_s)
    assert all(t >= size * size * dwell_s for t in times[1:])


# --------------------------------------------------------------------------- any system: generic_publish


def test_generic_publisher_from_a_callback_thread_reaches_serve(
    conv_model, detector, daemon_factory, subscriber, frames_u2, monkeypatch
):
    """A vendor's frame callback runs on the vendor's thread: the publisher is fed from one."""
    script = load_script("generic_publish", monkeypatch)
    frames = frames_u2[:6].astype(np.float64)  # a type serve does not take: sent as float32
    push, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, pull=True)
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()

    publisher = script.FramePublisher(push, series_id=5, pixel_size_nm=0.1, source="callback test")
    camera = threading.Thread(target=lambda: [publisher.send(f) for f in frames])  # the vendor's thread
    camera.start()
    camera.join(10)
    publisher.close()

    denoised, raw = sub.collect(len(frames), timeout=20)
    check_delivered(
        raw, denoised, frames.astype("<f4"), series_id=5, dtype="<f4", pixel_size_nm=0.1, model=conv_model
    )


def test_generic_publisher_messages_decode_as_the_protocol_says(frames_u2, monkeypatch):
    """Message by message through livedenoise's own decoder: start, images of every pixel type
    (converted where serve needs it), calibration, end."""
    script = load_script("generic_publish", monkeypatch)
    ctx = zmq.Context.instance()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        for s in (push, pull):
            s.setsockopt(zmq.LINGER, 0)
        push.bind("tcp://127.0.0.1:*")
        pull.connect(push.getsockopt_string(zmq.LAST_ENDPOINT))
        frame = frames_u2[0]
        sent = [
            (frame.astype("|u1"), "|u1"),
            (frame.astype(">u2"), "<u2"),  # big-endian: swapped, values kept
            (frame.astype("<i2"), "<i2"),
            (frame.astype("<u4"), "<u4"),
            (frame.astype("<i4"), "<f4"),  # int32: float32
            (np.asfortranarray(frame.astype("<f4")), "<f4"),  # column-major: sent in C order
        ]
        with script.FramePublisher(push, pixel_size_nm=0.02, mode="test") as publisher:
            with pytest.raises(ValueError, match="2-D"):
                publisher.send(np.zeros((2, 3, 4)))  # refused before anything is sent
            for f, _ in sent:
                publisher.send(f, start_time=time.time_ns())
                time.sleep(0.002)
        messages = []
        while pull.poll(2000):
            messages.append(decode_detector_message(pull.recv_multipart()))
            if isinstance(messages[-1], SeriesEnd):
                break
    finally:
        push.close()
        pull.close()

    start, *images, end = messages
    assert isinstance(start, SeriesStart) and start.header["mode"] == "test"
    assert isinstance(end, SeriesEnd) and start.series_id == end.series_id == publisher.series_id
    assert abs(publisher.series_id - time.time()) < 60  # a new series number each run: the time
    assert [type(m) for m in images] == [ImageFrame] * len(sent)
    for i, (m, (f, dtype)) in enumerate(zip(images, sent, strict=True)):
        assert (m.series_id, m.image_id, m.data.dtype.str) == (publisher.series_id, i, dtype)
        np.testing.assert_array_equal(m.data, f.astype(dtype))
        assert isinstance(m.calibration, Calibration) and m.calibration.pixel_size_nm == 0.02
        assert (m.calibration.frame_time_s is None) == (i == 0)  # measured from the second frame
    gaps = np.diff([m.start_time for m in images]) / 1e9
    np.testing.assert_allclose([m.calibration.frame_time_s for m in images[1:]], gaps)


def test_generic_publish_script_runs_against_a_real_daemon(conv_model, daemon_factory, subscriber):
    """The whole script, as a process (PUB, its own demo frames), to `serve` (SUB)."""
    address = free_addr()  # the script binds the address on its command line and reports nothing
    daemon = daemon_factory(model=conv_model, source=address)
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    n = 20
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "generic_publish.py"), address, str(n)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    denoised, raw = sub.collect(n, timeout=20)
    assert [m.header["image_id"] for m in denoised] == list(range(n))
    assert all(m.header["calibration"]["pixel_size_nm"] == 0.05 for m in raw)
    assert all(m.data.shape == (128, 128) and m.data.dtype == np.float32 for m in denoised)
