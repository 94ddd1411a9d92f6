"""Merlin receiving speed: patterns/s through ``serve --source-format merlin --scan`` against
libertem-qd-mpx's own receiver on the same stream, in one run.

A sender process (the project's Merlin data port, ``livedenoise.sim``'s format: frame headers
made once, a pool of 256 encoded 256 x 256 patterns of a simulated 4D-STEM scan, sent with
``sendmsg`` so that it costs little beyond the kernel's copy) serves two TCP ports; each pass is
one acquisition of ``--patterns`` patterns on one of them, alternating:

* ``libertem-qd-mpx``: its own receiver (``QdConnection``: Rust, frames into shared memory) and
  decoder (``CamClient.decode_range_into_buffer`` into one numpy stack per stack, then ``done``),
  no reduction: the bare rate, in this process;
* ``serve``: ``livedenoise serve --source-format merlin --scan 64x64 --annulus ...`` as a process
  (the shipped ``rt`` model, defaults otherwise): libertem-qd-mpx, then each pattern decoded into
  the virtual detector's batch and reduced, virtual images denoised and published. Timed to the
  arrival of the acquisition's last virtual image on the ``raw`` topic.

Both from the sender's go. Also, for reference, the virtual detector alone on the same patterns
in memory (what the reduction costs without any receiving).

    flock /tmp/livedenoise-cpu.lock python -m benchmarks.merlin                 # u8, u16, r12; ~1-2 min
    flock /tmp/livedenoise-cpu.lock python -m benchmarks.merlin --formats u8 --passes 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

SCAN = (64, 64)
SIDE = 256


# ------------------------------------------------------------------ the sender (a child process)


def _sender(fmt: str, n: int, conn) -> None:
    """Child: two listening data ports; per ("send", k) one acquisition of ``n`` patterns on port k."""
    from livedenoise.detectors.merlin._sender import acquisition_header, frame_header, frame_pixels, mpx
    from livedenoise.sim import simulate_4dstem

    pool_scan = simulate_4dstem((16, 16), detector=SIDE, frames=1, seed=0).patterns
    pool = [frame_pixels(p, fmt=fmt) for p in pool_scan]
    template = bytearray(mpx(frame_header(1, fmt=fmt, layout="single", shape=(SIDE, SIDE)) + pool[0]))[: -len(pool[0])]
    heads = []
    for seq in range(1, n + 1):
        head = bytearray(template)
        head[19:25] = b"%06d" % seq  # the sequence: after "MPX,0000000000," and "MQ1,"
        heads.append(bytes(head))
    hdr = mpx(acquisition_header(n, fmt=fmt, scan=SCAN))
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    conn.send([s.getsockname()[1] for s in listeners])
    clients: dict[int, socket.socket] = {}
    while True:
        cmd = conn.recv()
        if cmd[0] == "bye":
            break
        k = cmd[1]
        if cmd[0] == "accept":
            clients[k] = listeners[k].accept()[0]
            conn.send("accepted")
            continue
        sock = clients[k]
        sock.sendall(hdr)
        for start in range(0, n, 256):
            iov = []
            for i in range(start, min(n, start + 256)):
                iov += [heads[i], pool[i % len(pool)]]
            _sendmsg_all(sock, iov)
        conn.send("sent")


def _sendmsg_all(sock: socket.socket, iov: list[bytes]) -> None:
    views = [memoryview(b) for b in iov]
    while views:
        sent = sock.sendmsg(views[:1024])
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


class Sender:
    def __init__(self, fmt: str, n: int):
        self.parent, child = mp.Pipe()
        self.proc = mp.get_context("spawn").Process(target=_sender, args=(fmt, n, child), daemon=True)
        self.proc.start()
        child.close()
        self.ports = self.parent.recv()

    def accept(self, k: int) -> None:
        self.parent.send(("accept", k))

    def accepted(self) -> None:
        assert self.parent.recv() == "accepted"

    def go(self, k: int) -> float:
        t0 = time.perf_counter()
        self.parent.send(("send", k))
        return t0

    def close(self) -> None:
        self.parent.send(("bye",))
        self.proc.join(10)


# ------------------------------------------------------------------ the receivers


class Bare:
    """libertem-qd-mpx alone: receive, decode each stack into a numpy stack, release it."""

    def __init__(self, sender: Sender, tmp: str, dtype: str):
        import libertem_qd_mpx as qd

        handle = os.path.join(tmp, f"bare-{time.monotonic_ns()}")
        self.conn = qd.QdConnection(
            data_host="127.0.0.1", data_port=sender.ports[0], frame_stack_size=17, shm_handle_path=handle,
            num_slots=230, bytes_per_frame=1 << 16,
        )
        self.client = qd.CamClient(handle)
        sender.accept(0)
        self.conn.start_passive(timeout=10)
        sender.accepted()
        self.out = np.empty((64, SIDE, SIDE), dtype)

    def run(self, sender: Sender, n: int) -> float:
        t0 = sender.go(0)
        assert self.conn.wait_for_arm(timeout=30) is not None
        got = 0
        while (stack := self.conn.get_next_stack(64)) is not None:
            k = len(stack)
            self.client.decode_range_into_buffer(stack, self.out[:k], 0, k)
            self.client.done(stack)
            got += k
        dt = time.perf_counter() - t0
        assert got == n, got
        assert sender.parent.recv() == "sent"
        return dt

    def close(self) -> None:
        self.conn.close()


class Serve:
    """``livedenoise serve --source-format merlin --scan 64x64`` as a process, and a subscriber."""

    def __init__(self, sender: Sender, centre: tuple[float, float], inner: float, outer: float):
        import zmq

        from livedenoise.testing import LOOPBACK, SERVE_PUBLISH, read_address

        sender.accept(1)
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "livedenoise", "serve", "--model", "rt", "--provider", "cpu",
                "--source-format", "merlin", "--source", f"tcp://127.0.0.1:{sender.ports[1]}",
                "--scan", f"{SCAN[0]}x{SCAN[1]}", "--annulus", f"{inner}:{outer}", "--centre", f"{centre[0]},{centre[1]}",
                "--publish", LOOPBACK, "--warmup-size", f"{SCAN[0]}x{SCAN[1]}",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        publish, _ = read_address(self.proc.stdout, SERVE_PUBLISH)
        sender.accepted()
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"raw")
        self.sub.setsockopt(zmq.RCVTIMEO, 60000)
        self.sub.connect(publish)
        time.sleep(1.0)  # the subscription in effect
        self.series = 0

    def run(self, sender: Sender, n: int) -> float:
        import msgpack

        self.series += 1
        images = n // (SCAN[0] * SCAN[1])
        t0 = sender.go(1)
        seen = 0
        while seen < images:
            parts = self.sub.recv_multipart()
            header = msgpack.unpackb(parts[1])
            if header["series_id"] == self.series:
                seen += 1
        dt = time.perf_counter() - t0
        assert sender.parent.recv() == "sent"
        return dt

    def close(self) -> None:
        import signal

        self.sub.close(0)
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        if self.proc.returncode != 0:
            print(out)


def virtual_in_memory(fmt: str, n: int, centre, inner, outer) -> float:
    """The virtual detector alone: the pool's patterns (decoded) into VirtualDetector.lend/add."""
    from livedenoise.detectors import VirtualDetector
    from livedenoise.sim import simulate_4dstem

    dtype = np.dtype({"u8": "|u1", "u16": "<u2", "r12": "<u2", "r6": "|u1"}[fmt])
    pool = simulate_4dstem((16, 16), detector=SIDE, frames=1, seed=0).patterns.astype(dtype)
    vd = VirtualDetector(SCAN, inner=inner, outer=outer, centre=centre)
    t0 = time.perf_counter()
    for i in range(n):
        lent = vd.lend(1, (SIDE, SIDE), dtype)
        row = lent[0] if lent is not None else np.empty((SIDE, SIDE), dtype)
        np.copyto(row, pool[i % len(pool)])
        vd.add(1, i, row)
    return time.perf_counter() - t0


def measure(fmt: str, n: int, passes: int, tmp: str) -> dict:
    from livedenoise.sim import simulate_4dstem

    geometry = simulate_4dstem((1, 1), detector=SIDE, frames=1, seed=0)
    centre, inner, outer = geometry.centre, geometry.inner, geometry.outer
    sender = Sender(fmt, n)
    dtype = "uint8" if fmt in ("u8", "r6", "r1") else "uint16"
    bare = Bare(sender, tmp, dtype)
    serve = Serve(sender, centre, inner, outer)
    best = {"bare": float("inf"), "serve": float("inf"), "virtual": float("inf")}
    try:
        bare.run(sender, n)  # a pass each to warm up (first acquisition, page faults of the shared memory)
        serve.run(sender, n)
        for _ in range(passes):
            best["bare"] = min(best["bare"], bare.run(sender, n))
            best["serve"] = min(best["serve"], serve.run(sender, n))
        for _ in range(passes):
            best["virtual"] = min(best["virtual"], virtual_in_memory(fmt, n, centre, inner, outer))
    finally:
        serve.close()
        bare.close()
        sender.close()
    rate = {k: n / v for k, v in best.items()}
    return {"fmt": fmt, "n": n, **rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", nargs="+", default=["u8", "u16", "r12"], help="pixel formats (livedenoise.detectors.merlin.FORMATS)")
    ap.add_argument("--patterns", type=int, default=4 * SCAN[0] * SCAN[1], help="patterns per acquisition (whole 64x64 scans)")
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    if args.patterns % (SCAN[0] * SCAN[1]):
        ap.error(f"--patterns: a multiple of {SCAN[0] * SCAN[1]}")
    from importlib.metadata import version

    import libertem_qd_mpx  # noqa: F401 - the merlin extra, needed for both receivers

    print(f"machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    print(f"numpy {np.__version__}; libertem-qd-mpx {version('libertem-qd-mpx')}")
    print()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(fmt, args.patterns, args.passes, tmp) for fmt in args.formats]
    print(f"{SIDE}x{SIDE} patterns over loopback from the project's sender, {args.patterns} per acquisition "
          f"({args.patterns // (SCAN[0] * SCAN[1])} scans of {SCAN[0]}x{SCAN[1]}), best of {args.passes} passes, patterns/s:")
    print()
    print("| pattern | MB/s (serve) | libertem-qd-mpx receive + decode | serve --source-format merlin --scan | serve / libertem-qd-mpx | virtual detector alone (in memory) |")
    print("|---|---|---|---|---|---|")
    bytes_per = {"u8": 1, "r6": 1, "r1": 1 / 8, "u16": 2, "r12": 2, "u32": 4}
    for r in results:
        mb = r["serve"] * SIDE * SIDE * bytes_per[r["fmt"]] / 1e6
        print(f"| {SIDE}² {r['fmt']} | {mb:,.0f} | {r['bare']:,.0f} | **{r['serve']:,.0f}** | **{r['serve'] / r['bare']:.2f}** | {r['virtual']:,.0f} |")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
