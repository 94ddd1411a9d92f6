"""A detector in ten lines: 128x128 noisy frames at 150 fps to `livedenoise serve` (PUB, port 5555)."""
import sys
import time

import msgpack
import numpy as np
import zmq

address = sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:5555"
sock = zmq.Context().socket(zmq.PUB)
sock.bind(address)
time.sleep(0.5)  # PUB drops frames for subscribers that have not connected yet
rng = np.random.default_rng()
for i in range(int(sys.argv[2]) if len(sys.argv) > 2 else 10**9):
    frame = rng.poisson(5.0, (128, 128)).astype("<u2")
    header = {"htype": "image", "series_id": 1, "image_id": i, "shape": list(frame.shape), "dtype": frame.dtype.str}
    sock.send_multipart([msgpack.packb(header), frame])  # numpy arrays are sent without copying
    time.sleep(1 / 150)
