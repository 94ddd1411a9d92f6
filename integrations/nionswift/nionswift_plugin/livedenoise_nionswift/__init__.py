# Copyright (C) 2025 the livedenoise authors
# SPDX-License-Identifier: GPL-3.0-or-later
"""Nion Swift plug-in: the live scan's HAADF frames out to ``livedenoise serve``, denoised frames back.

Swift finds it as ``nionswift_plugin.livedenoise_nionswift`` and builds :class:`LivedenoiseExtension`
with its ``api_broker``; configuration comes from ``LIVEDENOISE_NIONSWIFT_*`` environment
variables (:class:`PluginConfig`). It speaks the livedenoise protocol over ZeroMQ and never
imports livedenoise.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

from ._swift import ITEM_REFERENCE_KEY, LiveDenoise, LiveStatus, PluginConfig, ScanTap

__all__ = ["ITEM_REFERENCE_KEY", "LiveDenoise", "LiveStatus", "LivedenoiseExtension", "PluginConfig", "ScanTap"]

log = logging.getLogger(__name__)


class LivedenoiseExtension:
    """Built by Swift once at start-up: starts the bridge, closed when Swift quits."""

    extension_id = "livedenoise.nionswift"

    def __init__(self, api_broker: Any) -> None:
        self.live: LiveDenoise | None = None
        try:
            config = PluginConfig.from_env()
        except ValueError as exc:
            log.error("livedenoise: bad LIVEDENOISE_NIONSWIFT_* setting (%s); plug-in not started", exc)
            return
        if not config.enabled:
            log.info("livedenoise: disabled (LIVEDENOISE_NIONSWIFT_ENABLED)")
            return
        api = api_broker.get_api(version="~1.0", ui_version="~1.0")
        try:
            self.live = LiveDenoise(api, config)
        except (zmq.ZMQError, ValueError) as exc:  # port taken, bad address or socket kind: say so, leave Swift alone
            log.error("livedenoise: cannot start on %s (%s); see LIVEDENOISE_NIONSWIFT_SEND/_SOCKET", config.send, exc)

    def close(self) -> None:
        if self.live is not None:
            self.live.close()
            self.live = None
