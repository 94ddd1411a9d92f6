"""The live monitor (``livedenoise view``): the only part of livedenoise that imports Qt.

The daemon never imports this package. :mod:`.receiver` is Qt-free (a thread that owns the SUB
socket and keeps the newest frames); :mod:`.window` is the pyqtgraph window; :func:`run` opens it, and
:func:`viewer_unavailable_reason` says (without loading Qt) whether it can open here.
Names are resolved lazily, so importing the receiver alone loads no Qt.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run": "._app",
    "check_display": "._app",
    "viewer_unavailable_reason": "._app",
    "FramePair": "._receiver",
    "Receiver": "._receiver",
    "StreamBuffer": "._receiver",
    "MonitorWindow": "._window",
    "FIXED_LEVEL_FRAMES": "._panels",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
