"""``replay``: stream a TIFF stack (or synthetic frames) like a detector (:class:`~livedenoise.sim.Replayer`).

Its options are :class:`~livedenoise.sim.ReplayConfig`'s fields, with their help and defaults.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from .._options import help_for
from .._signals import stop_on_signals
from ..errors import LivedenoiseError
from ..sim import ReplayConfig
from ._common import config_option, log, setup_logging

app = typer.Typer()


@app.command(rich_help_panel="Live")
def replay(
    tiff: Path | None = typer.Argument(None, help=help_for(ReplayConfig, "path")),
    synthetic: bool = config_option(ReplayConfig, "synthetic"),
    fps: float = config_option(ReplayConfig, "fps"),
    bind: str = config_option(ReplayConfig, "bind"),
    loop: bool = config_option(ReplayConfig, "loop"),
    push: bool = config_option(ReplayConfig, "push"),
    count: int | None = config_option(ReplayConfig, "count"),
    series_id: int = config_option(ReplayConfig, "series_id"),
    wait_subscriber: float = config_option(ReplayConfig, "wait_subscriber"),
    size: int = config_option(ReplayConfig, "size"),
    dtype: str = config_option(ReplayConfig, "dtype"),
    curve_secret: Path | None = config_option(ReplayConfig, "curve_secret"),
    curve_allow: Path | None = config_option(ReplayConfig, "curve_allow"),
) -> None:
    """Stream a TIFF stack (or --synthetic frames) like a detector: start, frames, end."""
    from ..sim import Replayer

    setup_logging()
    if tiff is None and not synthetic:
        raise LivedenoiseError("give a TIFF file or --synthetic")
    replayer = Replayer(ReplayConfig(
        path=tiff, synthetic=synthetic, fps=fps, bind=bind, loop=loop, push=push, count=count, series_id=series_id,
        wait_subscriber=wait_subscriber, size=size, dtype=dtype, curve_secret=curve_secret, curve_allow=curve_allow,
    ))
    with stop_on_signals(lambda _signum: replayer.stop()):
        source = tiff or "synthetic frames"
        log.info("replaying %s at %.1f fps on %s (%s)", source, fps, replayer.endpoint, "PUSH" if push else "PUB")
        t0 = time.perf_counter()
        sent = replayer.run()
        dt = time.perf_counter() - t0
        log.info("sent %d frames in %.2f s (%.1f fps)", sent, dt, sent / dt if dt > 0 else 0.0)
