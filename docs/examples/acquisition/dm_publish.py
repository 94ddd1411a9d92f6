"""Gatan DigitalMicrograph -> `livedenoise serve`: STEM frames from DM's embedded Python, in the frame protocol.

Run it inside DigitalMicrograph (GMS 3.4 or later, installed with Python): File > New Script, paste
this file, choose Python, and execute it in a background thread so that DM stays responsive. DM's
Python needs pyzmq and msgpack once (Anaconda prompt: `activate GMS_VENV_PYTHON`, then
`pip install pyzmq msgpack`). On the livedenoise machine: `livedenoise serve --source tcp://DM-PC:5555`.

MODE "scan": DigiScan frames, one synchronous acquisition after another. Every frame is complete;
the rate is about 1 / (WIDTH * HEIGHT * DWELL_US + DigiScan's set-up time per frame).
MODE "live": follows the image that is front-most when the script starts (a camera's live view,
the In-Situ Player) and publishes it each time it has changed. At most the rate at which DM updates
that image. Not for a DigiScan view, which DM fills line by line: use "scan".

Each frame carries its calibration (DM's pixel size, in nm; the measured time from one frame to
the next) and the series is framed by start/end messages (docs/protocol.md).
"""

import time

import DigitalMicrograph as DM
import msgpack
import numpy as np
import zmq

ADDRESS = "tcp://127.0.0.1:5555"  # serve connects here; bind the PC's LAN address (or tcp://*:5555) for a remote serve
MODE = "scan"  # or "live"
WIDTH, HEIGHT, DWELL_US, SIGNAL = 256, 256, 2.0, 0  # scan: frame size, dwell (us), DigiScan signal (0: 1st detector)
FRAMES = 200  # scan: frames to acquire
IDLE_S = 10.0  # live: stop once the image has not changed for this long (the live view was stopped)

DTYPES = ("|u1", "<u2", "<i2", "<u4", "<f4")  # what serve accepts
NM_PER_UNIT = {"nm": 1.0, "\u00b5m": 1e3, "\u03bcm": 1e3, "um": 1e3, "\u00c5": 0.1, "A": 0.1, "pm": 1e-3, "m": 1e9}


class Stream:
    """One series on a ZMQ socket: a start message, numbered image messages, an end message."""

    def __init__(self, sock, series_id, **info):
        self.sock, self.series_id, self.image_id, self.last_start = sock, series_id, 0, None
        sock.send(msgpack.packb({"htype": "start", "series_id": series_id, **info}))

    def send(self, frame, start_time, pixel_size_nm=None, frame_time_s=None):
        """Publish a copy of ``frame``; ``frame_time_s`` is replaced by the measured one after the first frame."""
        frame = np.array(frame)  # a copy: DM goes on writing into the image's memory
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


def pixel_size_nm(img):
    """DM's calibration of the image's x axis in nm; None if it is not a length (uncalibrated, or 1/nm)."""
    unit = img.GetDimensionUnitString(0)
    unit = unit.decode("latin-1") if isinstance(unit, bytes) else str(unit)  # some GMS versions give bytes for \u00b5
    factor = NM_PER_UNIT.get(unit.strip())
    scale = float(img.GetDimensionScale(0))
    return scale * factor if factor is not None and scale > 0 else None


def publish_scan(dm, sock, width, height, dwell_us, frames, signal=0, series_id=None):
    """``frames`` DigiScan frames, each a synchronous single-frame acquisition into one DM image."""
    series_id = int(time.time()) if series_id is None else series_id
    params = dm.DS_CreateParameters(width, height, 0.0, dwell_us, False)  # rotation (deg), dwell (us), no line sync
    target = dm.CreateImage(np.zeros((height, width), np.uint32))  # DigiScan writes each frame into this image
    dm.DS_SetParametersSignal(params, signal, 4, True, target.GetID())  # 4-byte data, signal selected
    stream = Stream(sock, series_id, source="DigitalMicrograph DigiScan", width=width, height=height, dwell_us=dwell_us)
    try:
        for _ in range(frames):
            start = int(time.time() * 1e9)
            dm.DS_StartAcquisition(params, False, True)  # not continuous, synchronous: returns with the frame done
            stream.send(target.GetNumArray(), start, pixel_size_nm(target), width * height * dwell_us * 1e-6)
    finally:
        stream.end()
        dm.DS_DeleteParameters(params)
        del target  # Gatan: delete Py_Image variables once done with them
    return stream.image_id


def publish_live(dm, sock, idle_s=IDLE_S, poll_s=0.005, frames=None, series_id=None):
    """The front-most image, each time its last row has changed and then held still for one poll
    (scans and cameras write the last row last), until it has not changed for ``idle_s`` seconds."""
    series_id = int(time.time()) if series_id is None else series_id
    img = dm.GetFrontImage()
    stream = Stream(sock, series_id, source="DigitalMicrograph live view")
    seen = sent = None
    changed = time.monotonic()
    try:
        while frames is None or stream.image_id < frames:
            data = img.GetNumArray()
            row = np.array(data[-1])
            if not np.array_equal(row, seen):  # being written: wait until it holds still
                changed = time.monotonic()
            elif not np.array_equal(row, sent):
                stream.send(data, int(time.time() * 1e9), pixel_size_nm(img))
                sent = row
            elif time.monotonic() - changed > idle_s:
                break
            seen = row
            time.sleep(poll_s)
    finally:
        stream.end()
        del img
    return stream.image_id


if __name__ == "__main__":
    sock = zmq.Context.instance().socket(zmq.PUB)  # PUSH instead, with `serve --pull`: no frame lost, send may block
    sock.bind(ADDRESS)
    time.sleep(0.5)  # PUB drops frames for subscribers that have not connected yet
    t0 = time.monotonic()
    if MODE == "scan":
        n = publish_scan(DM, sock, WIDTH, HEIGHT, DWELL_US, FRAMES, SIGNAL)
    else:
        n = publish_live(DM, sock)
    print(f"{n} frames published to {ADDRESS} at {n / (time.monotonic() - t0):.2f} frames/s")
    sock.close(linger=1000)
