# Copyright (C) 2025 the livedenoise authors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Swift's side: the tap on the scan controller and the live item the denoised frames land in.

Threads: the tap runs on Swift's acquisition thread and only copies the frame and queues it
(:class:`~._bridge.Sender` never blocks); the receiver thread decodes serve's messages and keeps
the newest denoised frame; the item is updated on the UI thread through ``api.queue_task``, at
most one update queued at a time, so a slow UI skips frames instead of piling them up.
"""

from __future__ import annotations

import collections
import copy
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._bridge import Receiver, Sender
from ._wire import (
    TOPIC_ATOMS,
    TOPIC_DENOISED,
    TOPIC_STATS,
    Message,
    atoms_count,
    css_value,
    encode_image,
    encode_start,
    pixel_size_nm,
)

log = logging.getLogger(__name__)

# the key of the live item in Swift's library: the same item is reused for every frame and session
ITEM_REFERENCE_KEY = "livedenoise.denoised"


@dataclass
class PluginConfig:
    """Where frames go and come from, which channel: from ``LIVEDENOISE_NIONSWIFT_*`` variables.

    ``send`` is bound here (serve connects to it with ``--source``): 5555 is serve's default source,
    so a plain ``livedenoise serve`` finds the plug-in. ``daemon`` is serve's ``--publish`` address.
    """

    send: str = "tcp://127.0.0.1:5555"
    daemon: str = "tcp://127.0.0.1:5556"
    channel: str = "HAADF"
    socket: str = "pub"  # "push" for serve --pull
    send_hwm: int = 4  # messages queued in the socket, at most: a stalled daemon costs 4 frames, never the scan
    enabled: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PluginConfig:
        env = os.environ if env is None else env
        get = lambda key, default: env.get(f"LIVEDENOISE_NIONSWIFT_{key}", default)  # noqa: E731
        return cls(
            send=get("SEND", cls.send),
            daemon=get("DAEMON", cls.daemon),
            channel=get("CHANNEL", cls.channel),
            socket=get("SOCKET", cls.socket).lower(),
            send_hwm=int(get("SEND_HWM", str(cls.send_hwm))),
            enabled=get("ENABLED", "1").lower() not in ("0", "false", "no", "off"),
        )


def _channel_name(xdata: Any) -> str | None:
    metadata = getattr(xdata, "metadata", None) or {}
    name = (metadata.get("hardware_source") or {}).get("channel_name")
    return name if isinstance(name, str) else None


class ScanTap:
    """Calls ``on_frame(xdata, completed_ns)`` for each completed frame of one scan channel.

    The scan controller is looked up as ``Registry.get_component("stem_controller").scan_controller``
    (whatever the instrument, real or simulated), again whenever Swift registers or removes a
    stem controller or scan device, since plug-ins load before the instrument's own ``run()``.
    """

    def __init__(self, on_frame: Callable[[Any, int], None], channel: str = "HAADF") -> None:
        from nion.utils import Registry

        self._registry = Registry
        self._on_frame = on_frame
        self.channel = channel
        self._scan: Any = None
        self._listener: Any = None
        self._lock = threading.Lock()
        self.errors = 0
        self._registered = Registry.listen_component_registered_event(self._component_changed)
        self._unregistered = Registry.listen_component_unregistered_event(self._component_changed)
        self.attach()

    @property
    def scan_controller(self) -> Any:
        return self._scan

    def _component_changed(self, component: Any, component_types: set[str]) -> None:
        if component_types & {"stem_controller", "scan_hardware_source", "hardware_source"}:
            self.attach()

    def attach(self) -> None:
        """Listen to the current primary scan controller (if it changed)."""
        stem = self._registry.get_component("stem_controller")
        scan = getattr(stem, "scan_controller", None) if stem is not None else None
        with self._lock:
            if scan is self._scan:
                return
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self._scan = scan
            if scan is not None:
                self._listener = scan.xdatas_available_event.listen(self._on_xdatas)
                log.info("livedenoise: tapping %s (%s)", scan.hardware_source_id, self.channel)

    def _on_xdatas(self, promises: Any) -> None:
        # on the acquisition thread: copy and hand over, nothing that can block or raise
        completed_ns = time.time_ns()
        try:
            for promise in promises:
                xdata = promise.xdata  # Swift's promise: a deep copy, no longer tied to the device's buffer
                if xdata is not None and (_channel_name(xdata) or "").lower() == self.channel.lower():
                    self._on_frame(xdata, completed_ns)
                    return
        except Exception:  # logged with its traceback; never raise into Swift's acquisition loop
            self.errors += 1
            log.exception("livedenoise: could not take a frame")

    def close(self) -> None:
        # Nion's events drop a listener when it is garbage-collected, not when closed: unreference them
        for listener in (self._registered, self._unregistered):
            if listener is not None:
                listener.close()
        self._registered = self._unregistered = None
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self._scan = None


class _Rate:
    """Events per second over the last ``window`` events (thread-safe enough: appends are atomic)."""

    def __init__(self, window: int = 64) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=window)

    def tick(self, t: float | None = None) -> None:
        self._times.append(time.monotonic() if t is None else t)

    def per_second(self) -> float | None:
        times = list(self._times)
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])


def _percentile(values: collections.deque[float], q: float) -> float | None:
    return float(np.percentile(list(values), q)) if values else None


@dataclass
class _Shown:
    """What the UI thread needs to show one denoised frame."""

    msg: Message
    receipt_ns: int


@dataclass
class _SourceFrame:
    calibrations: list[Any]
    intensity: Any
    channel: str
    hardware_source_id: str | None


@dataclass
class LiveStatus:
    """Counters and rates the plug-in shows in the item's metadata (and tests and benchmarks read)."""

    frames_tapped: int = 0
    frames_sent: int = 0
    dropped: int = 0
    not_sent: int = 0
    denoised_received: int = 0
    items_shown: int = 0
    tap_fps: float | None = None
    shown_fps: float | None = None
    latency_ms_p50: float | None = None  # frame completed in Swift -> denoised item updated
    latency_ms_p99: float | None = None
    receive_ms_p50: float | None = None  # frame completed in Swift -> denoised frame received
    daemon_connected: bool = False
    show_errors: int = 0
    css: float | None = None
    atoms: int | None = None
    stats: dict = field(default_factory=dict)


class LiveDenoise:
    """The plug-in at work: tap -> sender -> (serve) -> receiver -> live item in Swift's library."""

    def __init__(self, api: Any, config: PluginConfig) -> None:
        self.api = api
        self.config = config
        self._lock = threading.Lock()
        self._series_id = 0
        self._image_id = 0
        self._series_key: tuple | None = None
        self._last_frame = 0.0
        self._frame_time_s: float | None = None
        self._sources: collections.OrderedDict[tuple[int, int], _SourceFrame] = collections.OrderedDict()
        self._pending: _Shown | None = None
        self._queued = False
        self._atoms: tuple[int, int, int] | None = None  # series, image, count of the newest atoms message
        self._item_uuid: Any = None
        self._last_show_error = 0.0
        self._latency_ms: collections.deque[float] = collections.deque(maxlen=256)
        self._receive_ms: collections.deque[float] = collections.deque(maxlen=256)
        self._tap_rate = _Rate()
        self._shown_rate = _Rate()
        self._status = LiveStatus()
        self.on_shown: Callable[[Any], None] | None = None  # called on the UI thread after each update
        self.sender = Sender(config.send, socket=config.socket, hwm=config.send_hwm)
        self.receiver = Receiver(config.daemon, self._on_message)
        # channel "none": only show what serve publishes (frames sent to it by other means)
        self.tap = ScanTap(self._on_frame, config.channel) if config.channel.lower() not in ("", "none") else None
        log.info("livedenoise: frames out on %s, denoised from %s", self.sender.endpoint, config.daemon)

    # ------------------------------------------------------------------ acquisition thread

    def _on_frame(self, xdata: Any, completed_ns: int) -> None:
        data = xdata.data
        if data is None or data.ndim != 2:
            self._status.not_sent += 1
            return
        calibrations = list(xdata.dimensional_calibrations or [])
        size_nm = pixel_size_nm([(c.scale, c.units) for c in calibrations]) if len(calibrations) == 2 else None
        hardware = (xdata.metadata or {}).get("hardware_source") or {}
        frame_time_s = _frame_time_s(hardware, data.shape)
        calibration = {}
        if size_nm is not None:
            calibration["pixel_size_nm"] = size_nm
        if frame_time_s is not None:
            calibration["frame_time_s"] = frame_time_s
        now = time.monotonic()
        key = (data.shape, data.dtype.str, size_nm)
        gap = max(2.0, 3 * (frame_time_s or 0.0))
        with self._lock:
            new_series = key != self._series_key or now - self._last_frame > gap
            if new_series:
                self._series_id += 1
                self._image_id = 0
                self._series_key = key
            series_id, image_id = self._series_id, self._image_id
            self._image_id += 1
            self._last_frame = now
            self._sources[(series_id, image_id)] = _SourceFrame(
                calibrations, xdata.intensity_calibration, _channel_name(xdata) or self.config.channel,
                hardware.get("hardware_source_id"),
            )
            while len(self._sources) > 64:
                self._sources.popitem(last=False)
        self._tap_rate.tick(now)
        self._status.frames_tapped += 1
        try:
            parts = encode_image(data, series_id=series_id, image_id=image_id, start_time=completed_ns,
                                 calibration=calibration)
        except ValueError as exc:
            self._status.not_sent += 1
            log.warning("livedenoise: frame not sent: %s", exc)
            return
        if new_series:
            self.sender.submit(encode_start(series_id, source="nionswift", channel=self.config.channel,
                                            shape=list(data.shape), **calibration), frame=False)
        self.sender.submit(parts)

    # ------------------------------------------------------------------ receiver thread

    def _on_message(self, msg: Message, receipt_ns: int) -> None:
        if msg.topic == TOPIC_ATOMS:
            count = atoms_count(msg.header)
            sid, iid = msg.header.get("series_id"), msg.header.get("image_id")
            if count is not None and type(sid) is int and type(iid) is int:
                self._atoms = (sid, iid, count)
            return
        if msg.topic == TOPIC_STATS:
            self._status.stats = dict(msg.header)
            return
        if msg.topic != TOPIC_DENOISED or msg.data is None:
            return
        start = msg.header.get("start_time")
        if type(start) is int:
            self._receive_ms.append((receipt_ns - start) / 1e6)
        with self._lock:
            self._pending = _Shown(msg, receipt_ns)
            if self._queued:
                return  # the queued update will take this newer frame
            self._queued = True
        try:
            self.api.queue_task(self._show)
        except Exception:  # noqa: BLE001 - no window (Swift starting or closing): nothing to show into
            with self._lock:
                self._queued = False

    # ------------------------------------------------------------------ UI thread

    def _show(self) -> None:
        with self._lock:
            shown, self._pending, self._queued = self._pending, None, False
        if shown is None:
            return
        try:
            self._update_item(shown)
        except Exception:  # logged (throttled); the next frame tries again, with a fresh item if this one is gone
            self._status.show_errors += 1
            now = time.monotonic()
            if now - self._last_show_error > 10.0:
                self._last_show_error = now
                log.exception("livedenoise: could not update the denoised item")

    def _update_item(self, shown: _Shown) -> None:
        header = shown.msg.header
        sid, iid = header.get("series_id"), header.get("image_id")
        with self._lock:
            source = self._sources.get((sid, iid)) if type(sid) is int and type(iid) is int else None
        api = self.api
        if source is not None:  # the frame's own calibrations, exactly as Swift had them
            calibrations = [api.create_calibration(c.offset, c.scale, c.units) for c in source.calibrations]
            channel = source.channel
        else:  # a frame this session did not send: the calibration serve passed through, if any
            size = (header.get("calibration") or {}).get("pixel_size_nm")
            ok = isinstance(size, float | int) and not isinstance(size, bool) and math.isfinite(size) and size > 0
            calibrations = [api.create_calibration(0.0, float(size), "nm")] * 2 if ok else None
            channel = self.config.channel
        css = css_value(header)
        atoms = self._atoms[2] if self._atoms is not None and self._atoms[0] == sid else None
        latency = header.get("latency_ms")
        info = {
            "series_id": sid,
            "image_id": iid,
            "css": css,
            "atoms": atoms,
            "daemon_latency_ms": latency if isinstance(latency, float | int) else None,
            "start_time_ns": header.get("start_time"),
            "calibration": header.get("calibration"),
            "channel": channel,
            "model": self._status.stats.get("model"),
        }
        xdata = api.create_data_and_metadata(
            np.array(shown.msg.data, dtype=np.float32), dimensional_calibrations=calibrations,
            metadata={"livedenoise": info},
        )
        # looked up each time: the user may have deleted it, and then a new one is made and shown
        data_item = api.library.get_data_item_for_reference_key(ITEM_REFERENCE_KEY, create_if_needed=True)
        if data_item.uuid != self._item_uuid:
            self._item_uuid = data_item.uuid
            windows = api.application.document_windows
            if windows:
                windows[0].display_data_item(data_item)
        data_item.set_data_and_metadata(xdata)
        title = f"{channel} denoised (livedenoise)"
        if css is not None:
            title += f" · CSS {css:.3f}"
        if atoms is not None:
            title += f" · {atoms} atoms"
        data_item.title = title
        start = header.get("start_time")
        if type(start) is int:
            self._latency_ms.append((time.time_ns() - start) / 1e6)
        self._shown_rate.tick()
        self._status.items_shown += 1
        self._status.css, self._status.atoms = css, atoms
        if self.on_shown is not None:
            self.on_shown(data_item)

    # ------------------------------------------------------------------ any thread

    def status(self) -> LiveStatus:
        s = copy.copy(self._status)
        sent = self.sender.counts
        s.frames_sent = sent.sent
        s.dropped = sent.dropped_queue + sent.dropped_hwm
        s.denoised_received = self.receiver.counts.denoised
        s.tap_fps = self._tap_rate.per_second()
        s.shown_fps = self._shown_rate.per_second()
        s.latency_ms_p50 = _percentile(self._latency_ms, 50)
        s.latency_ms_p99 = _percentile(self._latency_ms, 99)
        s.receive_ms_p50 = _percentile(self._receive_ms, 50)
        s.daemon_connected = self.sender.connected
        return s

    def close(self) -> None:
        if self.tap is not None:
            self.tap.close()
        self.sender.close()
        self.receiver.close()


def _frame_time_s(hardware: Mapping[str, Any], shape: tuple[int, ...]) -> float | None:
    """The frame's scan time from Swift's detector metadata (line time x rows, else the exposure)."""
    line_us = hardware.get("line_time_us")
    if isinstance(line_us, float | int) and line_us > 0:
        return float(line_us) * shape[0] / 1e6
    exposure = hardware.get("exposure")
    if isinstance(exposure, float | int) and exposure > 0:
        return float(exposure)
    return None
