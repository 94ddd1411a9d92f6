"""Open the monitor window as an application: ``livedenoise view`` and ``serve --view`` call :func:`run`.

Nothing here imports Qt at module level: ``serve --view`` and ``demo`` ask
:func:`viewer_unavailable_reason` before starting a viewer, without loading Qt themselves.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from .._signals import stop_on_signals
from ..errors import LivedenoiseError


def viewer_unavailable_reason() -> str | None:
    """Why the monitor cannot open here, or None: no viewer extra, or (Linux) no display.

    The one rule for ``view``, ``serve --view`` and ``demo``: on Linux, Qt needs X11 or Wayland
    unless ``QT_QPA_PLATFORM`` names another platform (``offscreen`` runs it headless); without
    either, Qt would abort the process. macOS and Windows always have a desktop.
    """
    if importlib.util.find_spec("pyqtgraph") is None:
        return "the viewer is not installed (pip install 'livedenoise[viewer]')"
    if sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM"):
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            return (
                "no display for the viewer (neither DISPLAY nor WAYLAND_DISPLAY is set); "
                "run it on the microscope PC's desktop, use ssh -X, or set QT_QPA_PLATFORM=offscreen"
            )
    return None


def check_display() -> None:
    """Raise :class:`LivedenoiseError` where the monitor cannot open (see :func:`viewer_unavailable_reason`)."""
    reason = viewer_unavailable_reason()
    if reason is not None:
        raise LivedenoiseError(reason)


def run(address: str, snapshot_dir: str | Path = ".", screenshot: Path | None = None, after: float = 5.0) -> int:
    """Show the live monitor for the daemon publishing at ``address`` until the window closes or Ctrl-C.

    With ``screenshot``, save a PNG of the window there ``after`` seconds and quit (the picture in
    docs/viewer.md is made so).
    """
    if screenshot is not None and not screenshot.parent.is_dir():
        raise LivedenoiseError(f"cannot write screenshot {screenshot}: no folder {screenshot.parent}")
    check_display()
    try:
        import pyqtgraph as pg

        from ._window import MonitorWindow
    except ImportError as exc:  # a system library Qt needs (libEGL, libfontconfig…)
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
    saved: list[tuple[bool, bool]] = []  # (written, nothing received yet)
    with stop_on_signals(lambda _signum: (interrupted.append(True), app.quit())):
        try:
            try:
                window = MonitorWindow(address, snapshot_dir)
            except zmq.ZMQError as exc:
                raise LivedenoiseError(f"cannot connect to {address!r}: {exc}") from None
            window.show()
            if screenshot is not None:
                shot = window

                def take() -> None:
                    saved.append((shot.grab().save(str(screenshot)), shot.frame is None))
                    app.quit()

                pg.QtCore.QTimer.singleShot(int(after * 1000), take)
            if interrupted:  # a signal while the window was built: quit at once, through the event
                pg.QtCore.QTimer.singleShot(0, app.quit)  # loop (Qt torn down without one ran crashed: -11)
            code = int(app.exec())
        finally:
            heartbeat.stop()
            if window is not None:
                window.shutdown()
                window.deleteLater()
            app.processEvents()
    if interrupted:
        return 0
    if screenshot is not None:
        if not saved or not saved[0][0]:
            raise LivedenoiseError(f"cannot write screenshot {screenshot} (Qt writes .png, .jpg, .bmp)")
        print(f"wrote {screenshot}" + (f" (no frame from {address} yet)" if saved[0][1] else ""))
    return code
