"""Any acquisition system with Python (JEOL PyJEM, a camera or scan SDK, pycromanager...) -> `livedenoise serve`.

Copy `FramePublisher` next to your acquisition code and call `publisher.send(frame)` with each new
frame, from a loop or from the vendor's frame callback (it is thread-safe). It needs only pyzmq,
msgpack and numpy. `FramePublisher` frames the series (start/end messages), numbers the frames,
converts the pixel type to one serve accepts, and sends the calibration: the pixel size you give
(nm) and the measured time from one frame to the next (docs/protocol.md).

    python generic_publish.py [ADDRESS] [FRAMES]    # a demo: noise frames in place of a microscope

On the livedenoise machine: `livedenoise serve --source tcp://THIS-PC:5555`.
"""

import sys
import threading
import time

import msgpack
import numpy as np
import zmq

DTYPES = ("|u1", "<u2", "<i2", "<u4", "<f4")  # what serve accepts


class FramePublisher:
    """One series on a ZMQ socket: a start message, then ``send(frame)`` for each frame, then ``close()``."""

    def __init__(self, sock, series_id=None, pixel_size_nm=None, **info):
        self.sock, self.pixel_size_nm = sock, pixel_size_nm
        self.series_id = int(time.time()) if series_id is None else series_id  # a new series each run
        self.image_id, self.last_start, self.lock = 0, None, threading.Lock()
        sock.send(msgpack.packb({"htype": "start", "series_id": self.series_id, **info}))

    def send(self, frame, pixel_size_nm=None, start_time=None, frame_time_s=None):
        """Publish a 2-D frame (a copy is taken only where the pixel type must change).
        ``start_time``: ns since the epoch (default: now); ``frame_time_s`` is measured after the first frame."""
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise ValueError(f"expected a 2-D frame, got shape {frame.shape}")
        little = frame.dtype.newbyteorder("<")
        frame = np.ascontiguousarray(frame.astype(little if little.str in DTYPES else "<f4", copy=False))
        start_time = int(time.time() * 1e9) if start_time is None else int(start_time)
        pixel_size_nm = self.pixel_size_nm if pixel_size_nm is None else pixel_size_nm
        with self.lock:  # a ZMQ socket is not thread-safe: one sender at a time
            if self.last_start is not None:
                frame_time_s = (start_time - self.last_start) / 1e9
            self.last_start = start_time
            calibration = {k: float(v) for k, v in (("pixel_size_nm", pixel_size_nm), ("frame_time_s", frame_time_s))
                           if v is not None and np.isfinite(v) and v > 0}
            header = {"htype": "image", "series_id": self.series_id, "image_id": self.image_id,
                      "shape": list(frame.shape), "dtype": frame.dtype.str, "start_time": start_time}
            if calibration:
                header["calibration"] = calibration
            self.sock.send_multipart([msgpack.packb(header), frame])
            self.image_id += 1

    def close(self):
        """End the series (the socket stays open: it is the caller's)."""
        with self.lock:
            self.sock.send(msgpack.packb({"htype": "end", "series_id": self.series_id}))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def frames_from_your_system(count, fps=20.0):
    """Replace with your acquisition: yield 2-D numpy arrays (here: Poisson noise at ``fps``)."""
    rng = np.random.default_rng()
    for _ in range(count):
        time.sleep(1 / fps)
        yield rng.poisson(5.0, (128, 128)).astype("<u2")


if __name__ == "__main__":
    address = sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:5555"  # a LAN address for a remote serve
    sock = zmq.Context.instance().socket(zmq.PUB)  # PUSH instead, with `serve --pull`: no frame lost, send may block
    sock.bind(address)
    time.sleep(0.5)  # PUB drops frames for subscribers that have not connected yet
    with FramePublisher(sock, pixel_size_nm=0.05, source="generic_publish.py demo") as publisher:
        for frame in frames_from_your_system(int(sys.argv[2]) if len(sys.argv) > 2 else 10**9):
            publisher.send(frame)  # or, from a callback: camera.on_frame(lambda f: publisher.send(f))
    sock.close(linger=1000)
