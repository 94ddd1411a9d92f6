"""Thermo Fisher AutoScript TEM -> `livedenoise serve`: STEM frames, one acquisition after another.

Run it with the Python that has AutoScript's TEM client (`autoscript_tem_microscope_client`), on the
microscope PC or on any PC that reaches its AutoScript server (HOST below), with pyzmq and msgpack
installed there (`pip install pyzmq msgpack`). Set up STEM imaging as usual first (STEM mode, beam,
detector inserted): the script only acquires. On the livedenoise machine:
`livedenoise serve --source tcp://THIS-PC:5555` (or `tcp://127.0.0.1:5555` when serve runs here too).

Each frame is `microscope.acquisition.acquire_stem_image(DETECTOR, SIZE, DWELL_S)`, which returns
once the frame is scanned: about SIZE * SIZE * DWELL_S per frame plus AutoScript's own time per call
(the script prints the rate it got). Each frame carries its calibration (the image's pixel size,
`metadata.binary_result.pixel_size.x` in metres, sent in nm; the measured time from one frame to the
next) and the series is framed by start/end messages (docs/protocol.md).
"""

import time

import msgpack
import numpy as np
import zmq
from autoscript_tem_microscope_client import TemMicroscopeClient
from autoscript_tem_microscope_client.enumerations import DetectorType

ADDRESS = "tcp://127.0.0.1:5555"  # serve connects here; bind the PC's LAN address (or tcp://*:5555) for a remote serve
HOST = None  # the AutoScript server's address; None: this PC
DETECTOR, SIZE, DWELL_S = DetectorType.HAADF, 512, 1e-6  # frame of SIZE x SIZE pixels, DWELL_S per pixel
FRAMES = 200

DTYPES = ("|u1", "<u2", "<i2", "<u4", "<f4")  # what serve accepts


class Stream:
    """One series on a ZMQ socket: a start message, numbered image messages, an end message."""

    def __init__(self, sock, series_id, **info):
        self.sock, self.series_id, self.image_id, self.last_start = sock, series_id, 0, None
        sock.send(msgpack.packb({"htype": "start", "series_id": series_id, **info}))

    def send(self, frame, start_time, pixel_size_nm=None, frame_time_s=None):
        """Publish ``frame``; ``frame_time_s`` is replaced by the measured one after the first frame."""
        frame = np.asarray(frame)
        little = frame.dtype.newbyteorder("<")
        frame = frame.astype(little if little.str in DTYPES else "<f4", copy=False)  # int32, float64: float32
        if self.last_start is not None:
            frame_time_s = (start_time - self.last_start) / 1e9
        self.last_start = start_time
        calibration = {k: float(v) for k, v in (("pixel_size_nm", pixel_size_nm), ("frame_time_s", frame_time_s))
                       if v is not None and np.isfinite(v) and v > 0}
        header = {"htype": "image", "series_id": self.series_id, "image_id": self.image_id,
                  "shape": list(frame.shape), "dtype": frame.dtype.str, "start_time": int(start_time)}
        if calibration:
            header["calibration"] = calibration
        self.sock.send_multipart([msgpack.packb(header), np.ascontiguousarray(frame)])
        self.image_id += 1

    def end(self):
        self.sock.send(msgpack.packb({"htype": "end", "series_id": self.series_id}))


def pixel_size_nm(image):
    """The AdornedImage's pixel size in nm (AutoScript gives metres); None if the metadata lacks it."""
    try:
        size_m = image.metadata.binary_result.pixel_size.x
    except AttributeError:
        return None
    return size_m * 1e9 if size_m else None


def publish_stem(microscope, sock, detector, size, dwell_s, frames, series_id=None):
    """``frames`` STEM images from ``detector``, each published as soon as AutoScript returns it."""
    series_id = int(time.time()) if series_id is None else series_id
    stream = Stream(sock, series_id, source="Thermo Fisher AutoScript TEM", detector=str(detector),
                    size=size, dwell_s=dwell_s)
    try:
        for _ in range(frames):
            start = int(time.time() * 1e9)
            image = microscope.acquisition.acquire_stem_image(detector, size, dwell_s)
            stream.send(image.data, start, pixel_size_nm(image), size * size * dwell_s)
    finally:
        stream.end()
    return stream.image_id


if __name__ == "__main__":
    microscope = TemMicroscopeClient()
    if HOST is None:
        microscope.connect()
    else:
        microscope.connect(HOST)
    sock = zmq.Context.instance().socket(zmq.PUB)  # PUSH instead, with `serve --pull`: no frame lost, send may block
    sock.bind(ADDRESS)
    time.sleep(0.5)  # PUB drops frames for subscribers that have not connected yet
    t0 = time.monotonic()
    n = publish_stem(microscope, sock, DETECTOR, SIZE, DWELL_S, FRAMES)
    print(f"{n} frames published to {ADDRESS} at {n / (time.monotonic() - t0):.2f} frames/s")
    sock.close(linger=1000)
    microscope.disconnect()
