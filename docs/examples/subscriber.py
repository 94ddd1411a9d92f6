"""Denoised frames from `livedenoise serve` (PUB, port 5556), in ten lines."""
import sys

import msgpack
import numpy as np
import zmq

address = sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:5556"
sock = zmq.Context().socket(zmq.SUB)
sock.connect(address)
sock.setsockopt(zmq.SUBSCRIBE, b"denoised")  # also b"raw", b"stats"
for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 10**9):
    topic, header, payload = sock.recv_multipart()
    h = msgpack.unpackb(header)
    frame = np.frombuffer(payload, dtype=h["dtype"]).reshape(h["shape"])  # float32 in [0, 1]
    print(f"series {h['series_id']} image {h['image_id']} {frame.shape} css {h['css']} {h['latency_ms']:.1f} ms")
