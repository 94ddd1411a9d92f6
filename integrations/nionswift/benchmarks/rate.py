# Copyright (C) 2025 the livedenoise authors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rate Swift delivers scan frames in view mode, and the plug-in's end-to-end latency.

Headless Swift (TestUI) with the usim microscope, as the tests build it; for each scan size and
pixel time: first the scan alone (frames completed per second, counted on the scan controller's
``xdatas_available_event``), then the plug-in with a real ``livedenoise serve --model rt --atoms``:
frames sent and dropped (by the plug-in, and by serve when inference falls behind: its
``stats``), denoised items shown per second, and the latency from "frame completed in
Swift" to "denoised item updated" (the UI thread is pumped every 5 ms here; in Swift it is Qt's
event loop). Prints a Markdown table.

    python integrations/nionswift/benchmarks/rate.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

SERVE_PUBLISH = re.compile(r"-> PUB (\S+);")
CONFIGS = [(128, 0.5), (256, 0.25), (256, 1.0), (512, 0.1), (512, 0.5)]  # (pixels per side, pixel time in us)


def pump(ctx, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ctx.document_controller.periodic()
        time.sleep(0.005)


def stop(ctx, scan) -> None:
    scan.stop_playing()
    end = time.monotonic() + 10
    while scan.is_playing and time.monotonic() < end:
        pump(ctx, 0.02)
    if scan.is_playing:
        scan.abort_playing()
        pump(ctx, 0.5)


def delivered_fps(ctx, scan, seconds: float) -> float:
    times: list[float] = []
    listener = scan.xdatas_available_event.listen(lambda promises: times.append(time.perf_counter()))
    scan.start_playing()
    pump(ctx, seconds)
    stop(ctx, scan)
    listener.close()
    del listener
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


def start_serve(source: str, log: pathlib.Path) -> tuple[subprocess.Popen, str]:
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "livedenoise", "serve", "--model", "rt", "--source", source, "--publish",
             "tcp://127.0.0.1:*", "--atoms", "--provider", "cpu", "--warmup-size", ""],
            stdout=out, stderr=subprocess.STDOUT,
        )
    end = time.monotonic() + 60
    while not (match := SERVE_PUBLISH.search(log.read_text(errors="replace"))):
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise SystemExit(f"serve did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return proc, match.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="scan time per measurement")
    args = parser.parse_args()

    from nion.instrumentation.test import AcquisitionTestContext
    from nion.swift import Facade
    from nion.swift.model import PlugInManager
    from nion.swift.test import TestContext
    from nion.usim_device import DeviceConfiguration
    from nionswift_plugin.livedenoise_nionswift import LivedenoiseExtension

    Facade.initialize()
    setup = TestContext.TestSetup()  # noqa: F841 - kept alive for the run
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="livedenoise-nion-"))
    configuration = DeviceConfiguration.AcquisitionContextConfiguration(set_configuration_location=False)
    configuration.configuration_location = str(tmp)
    os.environ["LIVEDENOISE_NIONSWIFT_SEND"] = "tcp://127.0.0.1:*"
    rows = []
    with AcquisitionTestContext.AcquisitionTestContext(configuration, is_app=True) as ctx:
        scan = ctx.scan_hardware_source
        for size, pixel_us in CONFIGS:
            params = scan.get_current_frame_parameters()
            params.pixel_size = (size, size)
            params.pixel_time_us = pixel_us
            scan.set_current_frame_parameters(params)
            frame_ms = size * size * pixel_us / 1000
            alone = delivered_fps(ctx, scan, args.seconds)
            ext = LivedenoiseExtension(PlugInManager.APIBroker())
            live = ext.live
            proc, publish = start_serve(live.sender.endpoint, tmp / f"serve-{size}-{pixel_us}.log")
            try:
                live.receiver.connect(publish)
                end = time.monotonic() + 30
                while not live.sender.connected and time.monotonic() < end:
                    time.sleep(0.02)
                scan.start_playing()
                pump(ctx, args.seconds)
                stop(ctx, scan)
                pump(ctx, 0.5)
                s = live.status()
            finally:
                ext.close()
                proc.terminate()
                proc.wait(20)
            fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
            rows.append(
                f"| {size}x{size} | {pixel_us:g} | {frame_ms:.1f} | {1000 / frame_ms:.1f} | {alone:.1f} | "
                f"{fmt(s.tap_fps)} | {s.frames_tapped} | {s.frames_sent} | {s.dropped} | {fmt(s.shown_fps)} | "
                f"{fmt(s.latency_ms_p50)} | {fmt(s.latency_ms_p99)} | {fmt(s.receive_ms_p50)} | "
                f"{s.stats.get('received', '-')} | {s.stats.get('dropped', '-')} |"
            )
            print(rows[-1], flush=True)
    print(
        f"\nusim, view mode, {args.seconds:g} s per row, {os.cpu_count()} CPUs\n\n"
        "| scan | pixel time (us) | frame time (ms) | scan's own fps | Swift delivers (fps) | with plug-in (fps) "
        "| frames tapped | sent | dropped | items shown (fps) | completed -> item p50 (ms) | p99 (ms) "
        "| completed -> received p50 (ms) | serve received | serve dropped |\n|" + "---|" * 15
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
