"""The daemon's import boundary: importing livedenoise and running serve loads no torch, Qt,
pyqtgraph, scipy, scikit-image or matplotlib (a serve-only install needs none of them)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

FORBIDDEN = ("torch", "PySide6", "PyQt6", "PyQt5", "pyqtgraph", "scipy", "skimage", "matplotlib")


def test_serve_imports_neither_torch_nor_qt(conv_model, detector):
    _, source = detector()  # bound here, on port 0: the child's daemon connects to it
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        import livedenoise, livedenoise.cli
        from livedenoise.daemon import Daemon, ServeConfig
        from livedenoise.engine import EngineConfig
        from livedenoise.sim import Replayer, ReplayConfig
        import threading
        daemon = Daemon(ServeConfig(model=Path({str(conv_model)!r}), source={source!r},
                                    publish="tcp://127.0.0.1:*", engine=EngineConfig(provider="cpu", shapes=((64, 64),))))
        daemon.start()
        time.sleep(0.3)
        daemon.stop()
        bad = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
        print("LOADED:", ",".join(bad))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED: \n" in proc.stdout, proc.stdout
