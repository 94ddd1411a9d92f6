"""CLI commands (owned by the view work): registered on the app by :func:`register`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command()
    def view(
        connect: Annotated[
            str, typer.Option("--connect", help="The daemon's publish address (serve --publish).")
        ] = "tcp://127.0.0.1:5556",
        snapshot_dir: Annotated[
            Path, typer.Option("--snapshot-dir", help="Where snapshots (TIFF + PNG) are written.")
        ] = Path("."),
    ) -> None:
        """Live monitor: raw and denoised frames, CSS, throughput and latency (Space pauses, S snapshots)."""
        from ..viewer import run  # Qt loads inside run(), never for other commands

        raise typer.Exit(run(connect, snapshot_dir))
