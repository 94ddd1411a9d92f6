# Copyright (C) 2025 the livedenoise authors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The plug-in in a headless Swift with the usim microscope and a real ``livedenoise serve``.

usim's HAADF is Gaussian noise on simulated samples, not atoms: these tests check the plumbing
(frames out, denoised frames back into a Swift item with the calibration, CSS and atoms shown,
latency), not the denoising.
"""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

SCAN_SIZE = 128
FRAMES = 12


def _extension(monkeypatch, daemon: str = "tcp://127.0.0.1:1"):
    """The plug-in as Swift builds it: its Extension class, given Swift's api_broker."""
    from nion.swift.model import PlugInManager
    from nionswift_plugin.livedenoise_nionswift import LivedenoiseExtension

    monkeypatch.setenv("LIVEDENOISE_NIONSWIFT_SEND", "tcp://127.0.0.1:*")  # any free port, read back
    monkeypatch.setenv("LIVEDENOISE_NIONSWIFT_DAEMON", daemon)
    monkeypatch.setenv("LIVEDENOISE_NIONSWIFT_CHANNEL", "HAADF")
    ext = LivedenoiseExtension(PlugInManager.APIBroker())
    assert ext.live is not None
    return ext


def _small_scan(scan) -> None:
    params = scan.get_current_frame_parameters()
    params.pixel_size = (SCAN_SIZE, SCAN_SIZE)
    params.pixel_time_us = 1.0  # 16 ms frames: Swift's 50 ms read period sets the rate, not the scan
    scan.set_current_frame_parameters(params)


def _stop(pump, ctx, scan) -> None:
    scan.stop_playing()
    if not pump(ctx, lambda: not scan.is_playing, 10.0):
        scan.abort_playing()
        assert pump(ctx, lambda: not scan.is_playing, 10.0), "the scan did not stop"


def _pixel_size_nm(calibration) -> float:
    assert calibration.units == "nm"
    return calibration.scale


def test_plugin_is_found_like_swift_finds_plugins():
    """Swift lists ``nionswift_plugin``'s modules with pkgutil and reads each one's manifest."""
    import importlib
    import json
    import pkgutil

    import nionswift_plugin

    names = [m.name for m in pkgutil.iter_modules(nionswift_plugin.__path__)]
    assert "livedenoise_nionswift" in names
    module = importlib.import_module("nionswift_plugin.livedenoise_nionswift")
    manifest = json.loads(importlib.resources.files(module).joinpath("manifest.json").read_text())
    assert {"name", "identifier", "version"} <= manifest.keys()
    assert module.LivedenoiseExtension.extension_id


def test_live_haadf_denoised_into_swift(swift, serve, pump, monkeypatch):
    from nion.swift import Facade
    from nionswift_plugin.livedenoise_nionswift import ITEM_REFERENCE_KEY

    scan = swift.scan_hardware_source
    _small_scan(scan)
    ext = _extension(monkeypatch)
    live = ext.live
    ctx = zmq.Context.instance()
    tap_sub = None
    try:
        daemon = serve(live.sender.endpoint)
        live.receiver.connect(daemon.publish)
        # independent witnesses: what serve received (raw) and published (denoised), unbounded
        tap_sub = ctx.socket(zmq.SUB)
        tap_sub.setsockopt(zmq.LINGER, 0)
        tap_sub.setsockopt(zmq.RCVHWM, 0)
        for topic in (b"raw", b"denoised"):
            tap_sub.setsockopt(zmq.SUBSCRIBE, topic)
        tap_sub.connect(daemon.publish)
        # ... and the HAADF frames Swift completed
        completed: list = []

        def witness(promises):
            for p in promises:
                if p.xdata.metadata["hardware_source"]["channel_name"] == "HAADF":
                    completed.append(p.xdata)

        deadline = time.monotonic() + 30
        while not live.sender.connected:  # serve's SUB has subscribed: no frame is lost to the slow joiner
            assert time.monotonic() < deadline, daemon.log.read_text()
            time.sleep(0.02)
        time.sleep(0.3)  # ... and our witness's subscription has reached serve too

        with_listener = scan.xdatas_available_event.listen(witness)
        t0 = time.monotonic()
        scan.start_playing()
        ok = pump(swift, lambda: live.status().items_shown >= FRAMES, 45.0)
        elapsed = time.monotonic() - t0
        _stop(pump, swift, scan)
        with_listener.close()
        status = live.status()
        assert ok, f"{status}\n{daemon.log.read_text()}"

        published: dict[tuple[int, int], dict[bytes, tuple[dict, np.ndarray]]] = {}
        while tap_sub.poll(500):
            topic, head, payload = tap_sub.recv_multipart()
            h = msgpack.unpackb(head)
            data = np.frombuffer(payload, h["dtype"]).reshape(h["shape"])
            published.setdefault((h["series_id"], h["image_id"]), {})[topic] = (h, data)
    finally:
        if tap_sub is not None:
            tap_sub.close()
        ext.close()

    # the item: in Swift's library under the plug-in's key, the newest denoised frame with the scan's calibrations
    api = Facade.get_api("~1.0", "~1.0")
    item = api.library.get_data_item_for_reference_key(ITEM_REFERENCE_KEY)
    assert item is not None
    xdata = item.xdata
    info = xdata.metadata["livedenoise"]
    key = (info["series_id"], info["image_id"])
    assert key in published and b"denoised" in published[key]
    header, denoised = published[key][b"denoised"]
    np.testing.assert_array_equal(xdata.data, denoised)  # exactly what serve published for that frame
    source_cal = completed[-1].dimensional_calibrations
    assert [(c.offset, c.scale, c.units) for c in xdata.dimensional_calibrations] == [
        (c.offset, c.scale, c.units) for c in source_cal
    ]
    size_nm = _pixel_size_nm(source_cal[1])
    assert header["calibration"]["pixel_size_nm"] == pytest.approx(size_nm)  # through serve and back
    assert header["calibration"]["frame_time_s"] > 0

    # CSS and the atom count in the title and metadata
    assert info["image_id"] > 0 and -1.0 <= info["css"] <= 1.0
    assert isinstance(info["atoms"], int) and info["atoms"] >= 0
    assert f"CSS {info['css']:.3f}" in item.title and f"{info['atoms']} atoms" in item.title

    # every frame serve received is, bit for bit, a HAADF frame Swift completed
    raws = [v[b"raw"][1] for v in published.values() if b"raw" in v]
    assert len(raws) >= FRAMES
    completed_frames = [x.data for x in completed]
    for raw in raws:
        assert any(raw.shape == f.shape and np.array_equal(raw, f) for f in completed_frames)

    print(
        f"\nnionswift -> serve -> nionswift, {SCAN_SIZE}x{SCAN_SIZE} usim HAADF, view mode:"
        f" Swift delivered {status.frames_tapped} frames in {elapsed:.1f} s ({status.tap_fps:.1f} fps);"
        f" {status.frames_sent} sent, {status.dropped} dropped; {status.items_shown} items shown"
        f" ({status.shown_fps:.1f} fps); latency frame completed -> item updated"
        f" p50 {status.latency_ms_p50:.1f} ms, p99 {status.latency_ms_p99:.1f} ms"
        f" (-> denoised received p50 {status.receive_ms_p50:.1f} ms)"
    )


def test_without_a_daemon_the_scan_runs_and_nothing_is_shown(swift, pump, monkeypatch):
    """No serve: frames are handed over and counted as unheard, the scan's rate is untouched."""
    from nion.swift import Facade
    from nionswift_plugin.livedenoise_nionswift import ITEM_REFERENCE_KEY

    scan = swift.scan_hardware_source
    _small_scan(scan)
    ext = _extension(monkeypatch)
    try:
        scan.start_playing()
        ok = pump(swift, lambda: ext.live.status().frames_tapped >= 6, 20.0)
        _stop(pump, swift, scan)
        status = ext.live.status()
        time.sleep(0.2)  # the sender thread's last send
        counts = ext.live.sender.counts
    finally:
        ext.close()
    assert ok, status
    assert not status.daemon_connected and status.items_shown == 0
    assert counts.sent == 0 and counts.unheard + counts.dropped_queue >= status.frames_tapped
    assert Facade.get_api("~1.0", "~1.0").library.get_data_item_for_reference_key(ITEM_REFERENCE_KEY) is None


def test_a_bad_setting_or_a_taken_port_leaves_swift_alone(swift, monkeypatch, caplog):
    from nion.swift.model import PlugInManager
    from nionswift_plugin.livedenoise_nionswift import LivedenoiseExtension

    monkeypatch.setenv("LIVEDENOISE_NIONSWIFT_SOCKET", "router")
    assert LivedenoiseExtension(PlugInManager.APIBroker()).live is None
    monkeypatch.setenv("LIVEDENOISE_NIONSWIFT_SOCKET", "pub")
    monkeypatch.setenv("LIVEDENOISE_NIONSWIFT_SEND_HWM", "four")
    assert LivedenoiseExtension(PlugInManager.APIBroker()).live is None
    monkeypatch.delenv("LIVEDENOISE_NIONSWIFT_SEND_HWM")
    first = _extension(monkeypatch)
    try:
        monkeypatch.setenv("LIVEDENOISE_NIONSWIFT_SEND", first.live.sender.endpoint)  # taken by the first
        second = LivedenoiseExtension(PlugInManager.APIBroker())
        assert second.live is None
        second.close()
    finally:
        first.close()
    assert "cannot start on" in caplog.text and "bad LIVEDENOISE_NIONSWIFT_* setting" in caplog.text
