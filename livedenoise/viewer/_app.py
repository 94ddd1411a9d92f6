"""Open the monitor window as an application: ``livedenoise view`` and ``serve --view`` call :func:`run`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .._signals import stop_on_signals
from ..errors import LivedenoiseError


def check_display() -> None:
    """Raise :class:`LivedenoiseError` where Qt would abort for want of a display (Linux, no X/Wayland)."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise LivedenoiseError(
            "no display for the viewer (neither DISPLAY nor WAYLAND_DISPLAY is set); "
            "run it on the microscope PC's desktop, use ssh -X, or set QT_QPA_PLATFORM=offscreen"
        )


def run(address: str, snapshot_dir: str | Path = ".") -> int:
    """Show the live monitor for the daemon publishing at ``address`` until the window closes or Ctrl-C."""
    check_display()
    try:
        import pyqtgraph as pg

        from ._window import MonitorWindow
    except ImportError as exc:  # no viewer extra, or a system library Qt needs (libEGL, libfontconfig…)
        raise LivedenoiseError(
            f"the viewer cannot load Qt ({exc}); install it with pip install 'livedenoise[viewer]' "
            "(docs/viewer.md lists the system libraries it needs)"
        ) from None
    import zmq

    app = pg.mkQApp("livedenoise view")
    # Ctrl-C (and SIGTERM, from serve --view or demo) quits cleanly from the moment the socket
    # connects; Qt's event loop keeps Python from running signal handlers, so a timer lets it in.
    interrupted = []
    heartbeat = pg.QtCore.QTimer()
    heartbeat.timeout.connect(lambda: None)
    heartbeat.start(200)
    window = None
    with stop_on_signals(lambda _signum: (interrupted.append(True), app.quit())):
        try:
            try:
                window = MonitorWindow(address, snapshot_dir)
            except zmq.ZMQError as exc:
                raise LivedenoiseError(f"cannot connect to {address!r}: {exc}") from None
            window.show()
            return 0 if interrupted else int(app.exec())
        finally:
            heartbeat.stop()
            if window is not None:
                window.shutdown()
                window.deleteLater()
            app.processEvents()
