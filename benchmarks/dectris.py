"""DECTRIS decoding speed: diffraction frames/s decoded and reduced by the virtual detector,
against bare decoders, in one run.

For each frame size, a simulated 4D-STEM scan (``livedenoise.sim.simulate_4dstem``, u16 Poisson
patterns) is encoded as the detector sends it, Stream v1 (``bs16-lz4<``, four parts per image) and
v2 (one CBOR message, ``bslz4``). Three comparisons:

**In memory** (the messages already received, as after ``recv``), best of ``--passes``,
alternating:

* ``bitshuffle``: bitshuffle's Python ``decompress_lz4`` alone on each blob (12-byte header
  skipped), the least a Python receiver does;
* ``C floor``: bitshuffle's C ``bshuf_decompress_lz4`` alone (through ctypes, into one buffer),
  the call our decoder makes: what is left above it is Python;
* ``decode``: :class:`~livedenoise.detectors.DectrisDecoder` without a virtual detector (each
  pattern a frame) and ``virtual``: with the annulus, what ``serve --source-format dectris
  --scan`` runs per pattern in its receiver thread.

**Over loopback** (Stream v1): LiberTEM's ``DectrisSim`` replays a dump of the same messages from
a child process, once per receiver and pass; ``libertem``: libertem-dectris's own receiver
(``DectrisConnection``, Rust, frames into shared memory, then ``CamClient.decode_range_into_buffer``
into one numpy stack, no reduction), ``ours``: a pyzmq PULL socket read part by part as the
daemon's receiver does, into ``DectrisDecoder`` + the virtual detector. Wall time from the
sender's go to the last pattern.

**Through serve** (Stream v1, ``--serve``): a longer stream (``--serve-scans`` scans of
``--serve-scan`` positions, the patterns of a 1,024-pattern simulation repeated under new frame
ids) from ``DectrisSim`` to ``libertem`` as above and to ``serve --source-format dectris --scan``
(the :class:`~livedenoise.daemon.Daemon`, shipped ``rt`` model, CPU) with ``--dectris-stream v1``
(libertem-dectris in the receiver process, stacks decompressed into the virtual detector's stack
buffer and reduced there) and ``auto`` (the Python decoder in serve's receiver thread). Wall time
from the sender's go to the last virtual image at a subscriber of ``raw``.

bitshuffle runs on one thread everywhere (``single_thread_bitshuffle``, what the decoder sets in
its thread): its OpenMP helpers only cost time on patterns of 3-9 blocks.

    python -m benchmarks.dectris                 # 96² and 192², ~8 min
    python -m benchmarks.dectris --sizes 96 --passes 5 --no-loopback --no-serve
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from livedenoise.daemon import Daemon, DectrisConfig, ServeConfig
from livedenoise.detectors import (
    BSLZ4_HEADER,
    Annulus,
    DectrisDecoder,
    VirtualDetector,
    load_codecs,
    single_thread_bitshuffle,
)
from livedenoise.detectors.dectris._codecs import _bshuf_c
from livedenoise.engine import EngineConfig, default_model_path
from livedenoise.protocol import ImageFrame, decode_published
from livedenoise.sim import dectris_v1_messages, dectris_v2_messages, simulate_4dstem, write_dectris_dump

SCAN = (16, 16)


# ------------------------------------------------------------------ in memory


def bare_pass(blobs: list[bytes], n_items: int, bitshuffle) -> float:
    dtype = np.dtype("<u2")
    t0 = time.perf_counter()
    for blob in blobs:
        bitshuffle.decompress_lz4(np.frombuffer(blob, np.uint8, offset=BSLZ4_HEADER.size), (n_items,), dtype, 0)
    return time.perf_counter() - t0


def c_floor_pass(blobs: list[bytes], n_items: int, native) -> float:
    out = np.empty(n_items, np.uint16)
    address = out.ctypes.data
    t0 = time.perf_counter()
    for blob in blobs:
        native(blob[12:], address, n_items, 2, 0)
    return time.perf_counter() - t0


def decoder_pass(messages, scan4d, virtual: bool) -> tuple[float, int]:
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer, centre=scan4d.centre) if virtual else None
    decoder = DectrisDecoder(virtual=vd)
    feed = decoder.feed
    out = 0
    t0 = time.perf_counter()
    for message in messages:
        for m in feed(message):
            out += type(m) is ImageFrame
    return time.perf_counter() - t0, out


# ------------------------------------------------------------------ over loopback


def _sender(dump: str, conn) -> None:
    """Child process: LiberTEM's DectrisSim replays ``dump`` when told to (its own process, so
    that neither receiver shares an interpreter with it)."""
    import libertem_dectris

    sim = libertem_dectris.DectrisSim("tcp://127.0.0.1", dump, random_port=True)
    conn.send(sim.get_uri())
    conn.recv()
    sim.send_headers()
    sim.send_frames()
    sim.send_footer()
    conn.send("sent")
    conn.recv()


class Sim:
    def __init__(self, dump: str):
        self.parent, child = mp.Pipe()
        self.proc = mp.get_context("spawn").Process(target=_sender, args=(dump, child), daemon=True)
        self.proc.start()
        child.close()  # so that a child that dies is an EOFError here, not a wait
        self.uri = self.parent.recv()

    def go(self) -> float:
        t0 = time.perf_counter()
        self.parent.send("go")
        return t0

    def close(self) -> None:
        self.parent.send("bye")
        self.proc.join(10)


def ours_loopback(dump: str, scan4d, n: int) -> float:
    sim = Sim(dump)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVTIMEO, 20000)
    sock.connect(sim.uri)
    time.sleep(0.2)  # connected before the first message
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer, centre=scan4d.centre)
    feed, recv = DectrisDecoder(virtual=vd).feed, sock.recv
    images = 0
    t0 = sim.go()
    while vd.patterns < n:
        part = recv(0, copy=False)
        parts = [part]
        while part.more:
            part = recv(0, copy=False)
            parts.append(part)
        for m in feed(parts):
            images += type(m) is ImageFrame
    dt = time.perf_counter() - t0
    assert images == n // (SCAN[0] * SCAN[1]), images
    sim.parent.recv()
    sim.close()
    sock.close(0)
    return dt


def libertem_loopback(dump: str, size: int, n: int, tmp: str, stack: int = 64) -> float:
    import libertem_dectris

    sim = Sim(dump)
    conn = libertem_dectris.DectrisConnection(
        uri=sim.uri, frame_stack_size=stack, handle_path=os.path.join(tmp, f"shm-{time.monotonic_ns()}"),
        num_slots=64, bytes_per_frame=size * size * 2, huge=False,
    )
    conn.start(1)
    client = libertem_dectris.CamClient(conn.get_socket_path())
    out = np.empty((stack, size, size), np.uint16)
    got = 0
    t0 = sim.go()
    while got < n:
        handle = conn.get_next_stack(stack)
        if handle is None:
            raise RuntimeError("libertem-dectris: the series ended early")
        k = len(handle)
        client.decode_range_into_buffer(handle, out[:k], 0, k)
        client.done(handle)
        got += k
    dt = time.perf_counter() - t0
    sim.parent.recv()
    sim.close()
    client.close()
    conn.close()
    return dt


# ------------------------------------------------------------------ through serve


def serve_dump(path: Path, scan4d, n: int) -> str:
    """A dump of one series of ``n`` patterns: the simulation's patterns over and over (their
    blobs encoded once), under new frame ids."""
    messages = dectris_v1_messages(scan4d.patterns, series=1)
    header, images, end = messages[0], messages[1:-1], messages[-1]
    config = json.loads(header[1])
    config["ntrigger"] = n
    header = [header[0], json.dumps(config).encode()]

    def stream():
        yield header
        for i in range(n):
            _, dimaged, blob, _ = images[i % len(images)]
            dimage = json.dumps({"htype": "dimage-1.0", "series": 1, "frame": i, "hash": f"{i:032x}"}).encode()
            dconfig = json.dumps({"htype": "dconfig-1.0", "start_time": i * 1000, "stop_time": i * 1000 + 900, "real_time": 900})
            yield [dimage, dimaged, blob, dconfig.encode()]
        yield end

    return str(write_dectris_dump(path, stream()))


def serve_loopback(dump: str, scan4d, n: int, scan: tuple[int, int], stream: str) -> float:
    """``serve --source-format dectris --scan`` (a Daemon in this process): go to the last virtual image."""
    sim = Sim(dump)
    config = ServeConfig(
        model=default_model_path().with_name("rt.onnx"), source=sim.uri, publish="tcp://127.0.0.1:0",
        dectris=DectrisConfig(scan=scan, annuli=(Annulus(scan4d.inner, scan4d.outer),), centre=scan4d.centre, stream=stream),
        engine=EngineConfig(provider="cpu", shapes=(scan,)), stats_interval=0.2, guard=None,
    )
    daemon = Daemon(config)
    daemon.start()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"raw")
    sub.setsockopt(zmq.SUBSCRIBE, b"stats")
    sub.setsockopt(zmq.RCVTIMEO, 60000)
    sub.connect(daemon.publish_address)
    while decode_published(sub.recv_multipart()).topic != b"stats":  # subscribed
        pass
    images, want = 0, n // (scan[0] * scan[1])
    t0 = sim.go()
    while images < want:
        images += decode_published(sub.recv_multipart()).topic == b"raw"
    dt = time.perf_counter() - t0
    sim.parent.recv()
    sim.close()
    sub.close(0)
    daemon.stop()
    return dt


def measure_serve(size: int, scan: tuple[int, int], scans: int, passes: int) -> dict:
    """Best of ``passes`` for each, and the median over the passes of each pass's ratios (the
    three run back to back in a pass: a machine whose load swings shows in the best, not in both)."""
    scan4d = simulate_4dstem((32, 32), detector=size, frames=1, seed=0)  # 1,024 patterns, repeated
    n = scans * scan[0] * scan[1]
    times: dict[str, list[float]] = {"libertem": [], "serve v1": [], "serve auto": []}
    with tempfile.TemporaryDirectory() as tmp:
        dump = serve_dump(Path(tmp) / "serve.bin", scan4d, n)
        for _ in range(passes):
            times["libertem"].append(libertem_loopback(dump, size, n, tmp, stack=128))
            times["serve v1"].append(serve_loopback(dump, scan4d, n, scan, "v1"))
            times["serve auto"].append(serve_loopback(dump, scan4d, n, scan, "auto"))
    lib = np.array(times["libertem"])
    return {
        "size": size, "frames": n, **{k: n / min(v) for k, v in times.items()},
        "median v1": float(np.median(lib / np.array(times["serve v1"]))),
        "median auto": float(np.median(lib / np.array(times["serve auto"]))),
    }


# ------------------------------------------------------------------ the table


def measure(size: int, frames: int, passes: int, loopback: bool) -> list[dict]:
    bitshuffle = load_codecs()[2]
    native = _bshuf_c(bitshuffle)
    scan4d = simulate_4dstem(SCAN, detector=size, frames=frames, seed=0)
    n = scan4d.patterns.shape[0]
    v1 = dectris_v1_messages(scan4d.patterns, series=1)
    v2 = [[m] for m in dectris_v2_messages(scan4d.patterns, series=1, compression="bslz4")]
    blobs = [m[2] for m in v1[1:-1]]
    keys = ["bare", "c", "v1 decode", "v1 virtual", "v2 decode", "v2 virtual"]
    if loopback:
        keys += ["libertem", "ours"]
    best = dict.fromkeys(keys, float("inf"))
    with tempfile.TemporaryDirectory() as tmp:
        dump = str(write_dectris_dump(Path(tmp) / "dump.bin", v1))
        for _ in range(passes):
            best["bare"] = min(best["bare"], bare_pass(blobs, size * size, bitshuffle))
            if native is not None:
                best["c"] = min(best["c"], c_floor_pass(blobs, size * size, native))
            for name, messages in (("v1", v1), ("v2", v2)):
                for kind, virtual in (("decode", False), ("virtual", True)):
                    dt, out = decoder_pass(messages, scan4d, virtual)
                    assert out == (frames if virtual else n), (name, kind, out)
                    best[f"{name} {kind}"] = min(best[f"{name} {kind}"], dt)
            if loopback:
                best["libertem"] = min(best["libertem"], libertem_loopback(dump, size, n, tmp))
                best["ours"] = min(best["ours"], ours_loopback(dump, scan4d, n))
    rate = {k: n / v for k, v in best.items()}
    rows = []
    for stream in ("v1", "v2"):
        row = {
            "size": size, "stream": stream, "frames": n, "compressed": int(np.mean([len(b) for b in blobs])),
            "bare": rate["bare"], "c": rate["c"], "decode": rate[f"{stream} decode"], "virtual": rate[f"{stream} virtual"],
        }
        if loopback and stream == "v1":
            row["libertem"], row["ours"] = rate["libertem"], rate["ours"]
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 192], help="diffraction frame sides (px)")
    ap.add_argument("--scans", type=int, default=8, help="16x16 scans per size (patterns = 256 x this)")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--no-loopback", dest="loopback", action="store_false", help="skip the DectrisSim loopback comparison")
    ap.add_argument("--no-serve", dest="serve", action="store_false", help="skip the comparison through serve")
    ap.add_argument("--serve-scan", type=int, nargs=2, default=(128, 128), metavar=("ROWS", "COLS"), help="serve's --scan")
    ap.add_argument("--serve-scans", type=int, default=8, help="scans in serve's stream")
    ap.add_argument("--serve-passes", type=int, default=5, help="passes through serve (each: libertem, v1, auto)")
    args = ap.parse_args()
    if args.loopback or args.serve:
        try:
            import libertem_dectris  # noqa: F401
        except ImportError:
            print("libertem-dectris not installed (the dectris extra): loopback and serve comparisons skipped")
            args.loopback = args.serve = False
    logging.basicConfig(level=logging.ERROR)  # serve's own log (connections that come and go) would interleave the tables
    single_thread_bitshuffle()
    bitshuffle = load_codecs()[2]
    print(f"machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    print(f"numpy {np.__version__}; bitshuffle {getattr(bitshuffle, '__version__', '?')}; one OpenMP thread")
    print()
    print("In memory, patterns/s (ratios: decode + virtual against each bare decoder):")
    print()
    print("| frame | stream | bytes/blob | bitshuffle | C floor | decode | decode + virtual | / bitshuffle | / C floor | / decode |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = [r for size in args.sizes for r in measure(size, args.scans, args.passes, args.loopback)]
    for r in results:
        print(
            f"| {r['size']}² u16 | {r['stream']} | {r['compressed']:,} | {r['bare']:,.0f} | {r['c']:,.0f} | "
            f"{r['decode']:,.0f} | **{r['virtual']:,.0f}** | **{r['virtual'] / r['bare']:.2f}** | "
            f"{r['virtual'] / r['c']:.2f} | {r['virtual'] / r['decode']:.2f} |"
        )
    if args.loopback:
        print()
        print("Over loopback from DectrisSim (Stream v1), patterns/s:")
        print()
        print("| frame | libertem-dectris receiver (decode only) | ours: pyzmq + decode + virtual | ours / libertem |")
        print("|---|---|---|---|")
        for r in results:
            if "libertem" in r:
                print(f"| {r['size']}² u16 | {r['libertem']:,.0f} | **{r['ours']:,.0f}** | **{r['ours'] / r['libertem']:.2f}** |")
    print(f"\n{results[0]['frames']} patterns per size, best of {args.passes} passes; load average {os.getloadavg()[0]:.2f}")
    if args.serve:
        scan = tuple(args.serve_scan)
        served = [measure_serve(size, scan, args.serve_scans, args.serve_passes) for size in args.sizes]  # type: ignore[arg-type]
        print()
        print(f"Through serve --source-format dectris --scan {scan[0]}x{scan[1]} (Stream v1 from DectrisSim, shipped rt model, CPU), patterns/s:")
        print()
        print("| frame | libertem-dectris receiver (receive + decompress) | serve --dectris-stream v1 | / libertem (best; median of passes) | serve (auto: Python decoder) | / libertem (best; median) |")
        print("|---|---|---|---|---|---|")
        for r in served:
            print(
                f"| {r['size']}² u16 | {r['libertem']:,.0f} | **{r['serve v1']:,.0f}** | **{r['serve v1'] / r['libertem']:.2f}**; "
                f"{r['median v1']:.2f} | {r['serve auto']:,.0f} | {r['serve auto'] / r['libertem']:.2f}; {r['median auto']:.2f} |"
            )
        print(
            f"\n{served[0]['frames']} patterns per size ({args.serve_scans} scans), best of {args.serve_passes} passes; "
            f"load average {os.getloadavg()[0]:.2f}"
        )


if __name__ == "__main__":
    main()
