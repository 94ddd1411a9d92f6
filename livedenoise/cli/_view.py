"""``view``: the live monitor (:mod:`livedenoise.viewer`). Qt loads inside the command, never for others."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import LivedenoiseError

app = typer.Typer()

DEFAULT_AFTER_S = 5.0


@app.command(rich_help_panel="Live")
def view(
    connect: Annotated[
        str, typer.Option("--connect", help="The daemon's publish address (serve --publish).")
    ] = "tcp://127.0.0.1:5556",
    snapshot_dir: Annotated[
        Path, typer.Option("--snapshot-dir", help="Where snapshots (TIFF + PNG) are written.")
    ] = Path("."),
    screenshot: Annotated[
        Path | None,
        typer.Option("--screenshot", metavar="PATH", help="Save a PNG of the window here, then quit (see --after)."),
    ] = None,
    after: Annotated[
        float | None,
        typer.Option(
            "--after", metavar="SECONDS", help=f"With --screenshot: wait this long (default {DEFAULT_AFTER_S:g})."
        ),
    ] = None,
) -> None:
    """Live monitor: raw and denoised frames, CSS, atoms, throughput and latency (Space pauses, S snapshots)."""
    from ..viewer import run  # Qt loads inside run()

    if after is not None and screenshot is None:
        raise LivedenoiseError("--after needs --screenshot PATH")
    if after is not None and not after >= 0:
        raise LivedenoiseError(f"--after {after:g}: must be at least 0 seconds")
    raise typer.Exit(run(connect, snapshot_dir, screenshot, DEFAULT_AFTER_S if after is None else after))
