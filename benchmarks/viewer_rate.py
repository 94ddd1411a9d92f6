"""Display rate of the live monitor, and what a viewer costs the daemon, measured in one run.

    python -m benchmarks.viewer_rate [--fps 150] [--size 128] [--seconds 10] [--model m.onnx] [--atoms]

``livedenoise replay --synthetic`` and ``livedenoise serve`` run as child processes, as in the lab.
Phase 1 measures the daemon's fps_out with no viewer attached (a stats-only subscriber, which the
PUB socket sends no frames to); phase 2 opens the monitor window (offscreen unless a display is
set) in this process and measures the frames it draws and paints per second, the frames it
receives per second and the daemon's fps_out with the viewer attached, and what the monitor costs
itself: the CPU time of this process (receiver thread and GUI) per second of stream, and the time
of one draw tick (the newest frame, the atom rings, trails and hop markers) and of one repaint of
the images. ``--atoms`` runs ``serve --atoms`` (evidence, tracks and hops on the wire): the
overlay's cost is the difference between runs with and without it.

The model is ``livedenoise/models/default.onnx`` when it is there, else the tests' small
convolutional model (:func:`livedenoise.testing.build_onnx_model`): the display rate does not depend on what the model does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from livedenoise.protocol import TOPIC_STATS, decode_published

from ._proc import free_addr

REPO = Path(__file__).resolve().parents[1]


def default_model(workdir: Path) -> Path:
    shipped = REPO / "livedenoise" / "models" / "default.onnx"
    if shipped.exists():
        return shipped
    from livedenoise.testing import build_onnx_model  # the tests' real (small) convolutional model

    return build_onnx_model(workdir / "conv.onnx", width=8, depth=3)


class StatsListener(threading.Thread):
    """Subscribes to the daemon's stats topic only (so the daemon sends it no frames)."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address = address
        self.samples: list[tuple[float, dict]] = []
        self._done = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, TOPIC_STATS)
        sock.connect(self.address)
        while not self._done.is_set():
            if sock.poll(100):
                msg = decode_published(sock.recv_multipart())
                self.samples.append((time.monotonic(), msg.header))
        sock.close()
        ctx.term()

    def between(self, t0: float, t1: float, key: str) -> float:
        values = [h[key] for t, h in self.samples if t0 <= t <= t1 and isinstance(h.get(key), int | float)]
        return float(np.mean(values)) if values else float("nan")

    def stop(self) -> None:
        self._done.set()
        self.join(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fps", type=float, default=150.0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--serve-threads", type=int, default=0, help="serve --threads (0: one per core)")
    parser.add_argument("--atoms", action="store_true", help="serve --atoms: rings, trails and hop markers drawn")
    args = parser.parse_args()
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    workdir = Path(tempfile.mkdtemp(prefix="viewer-rate-"))
    model = args.model or default_model(workdir)
    source, publish = free_addr(), free_addr()
    cli = [sys.executable, "-m", "livedenoise"]
    children = [
        subprocess.Popen([*cli, "serve", "--model", str(model), "--source", source, "--publish", publish, "--threads",
                          str(args.serve_threads), "--log-level", "WARNING", *(["--atoms"] if args.atoms else [])]),
        subprocess.Popen([*cli, "replay", "--synthetic", "--fps", str(args.fps), "--size", str(args.size), "--bind", source]),
    ]
    stats = StatsListener(publish)
    stats.start()
    try:
        import pyqtgraph as pg
        from pyqtgraph.Qt import QtCore

        from livedenoise.viewer import MonitorWindow

        app = pg.mkQApp("viewer-rate")

        def run_for(seconds: float) -> tuple[float, float]:
            """Run the event loop for a while (a local loop: app.quit() would close the window)."""
            loop = QtCore.QEventLoop()
            QtCore.QTimer.singleShot(int(seconds * 1000), loop.quit)
            t0 = time.monotonic()
            loop.exec()
            return t0, time.monotonic()

        run_for(3.0)  # the model loads, the stream settles
        a0, a1 = run_for(args.seconds)
        without_viewer = stats.between(a0, a1, "fps_out")
        fps_in = stats.between(a0, a1, "fps_in")

        ticks: list[float] = []  # seconds per draw tick
        paint_times: list[float] = []  # seconds per render of the images (grab), at the end

        class TimedWindow(MonitorWindow):
            def _draw(self) -> None:  # the 60 Hz draw tick (the timer is connected to self._draw)
                t = time.perf_counter()
                super()._draw()
                ticks.append(time.perf_counter() - t)

        window = TimedWindow(publish, snapshot_dir=workdir)
        paints = [0]

        class PaintCounter(QtCore.QObject):
            def eventFilter(self, obj, event):
                if event.type() == QtCore.QEvent.Type.Paint:
                    paints[0] += 1
                return False

        counter = PaintCounter()
        window.images.viewport().installEventFilter(counter)
        window.show()
        run_for(2.0)
        drawn0, paints0, received0 = window.frames_drawn, paints[0], window.buffer.counts["denoised"]
        ticks.clear()
        paint_times.clear()
        cpu0 = time.process_time()
        b0, b1 = run_for(args.seconds)
        cpu = (time.process_time() - cpu0) / (b1 - b0)
        elapsed = b1 - b0
        drawn = (window.frames_drawn - drawn0) / elapsed
        painted = (paints[0] - paints0) / elapsed
        received = (window.buffer.counts["denoised"] - received0) / elapsed
        atoms_received = window.buffer.counts["atoms"]
        with_viewer = stats.between(b0, b1, "fps_out")
        for _ in range(40):  # one render of the images (frames, rings, trails, markers as they are now)
            run_for(0.05)
            t = time.perf_counter()
            window.images.grab()
            paint_times.append(time.perf_counter() - t)
        window.close()
        window.deleteLater()
        app.processEvents()
    finally:
        stats.stop()
        for child in children:
            child.send_signal(2)  # SIGINT: serve drains and exits 0
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()

    print(f"stream: {args.fps:g} fps of {args.size}x{args.size} frames, model {model.name}, serve --threads "
          f"{args.serve_threads}, {os.cpu_count()} CPUs, Qt platform {os.environ.get('QT_QPA_PLATFORM', 'native')}")
    print(f"daemon fps_in                 {fps_in:8.1f}")
    print(f"daemon fps_out, no viewer     {without_viewer:8.1f}")
    print(f"daemon fps_out, viewer open   {with_viewer:8.1f}")
    print(f"viewer frames received/s      {received:8.1f}")
    print(f"viewer frames drawn/s         {drawn:8.1f}")
    print(f"viewer image repaints/s       {painted:8.1f}")
    print(f"viewer CPU (s per s)          {cpu:8.3f}")
    tick_ms, paint_ms = np.array(ticks) * 1e3, np.array(paint_times) * 1e3
    for name, values in (("draw tick", tick_ms), ("render", paint_ms)):
        if values.size:
            print(f"viewer {name + ' ms p50/p99':22} {np.percentile(values, 50):8.2f} / {np.percentile(values, 99):.2f}")
    if args.atoms:
        print(f"viewer atoms messages         {atoms_received:8d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
