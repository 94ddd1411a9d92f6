"""``export``: a recording written by ``serve --record`` as one standard file other tools open."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()


@app.command("export", rich_help_panel="Files")
def export(
    directory: Annotated[Path, typer.Argument(help="A directory written by serve --record.", metavar="RUN_DIR")],
    to: Annotated[
        Path,
        typer.Option(
            "--to", "-o",
            help="File to write: .tif (ImageJ hyperstack, opens in Fiji), or with the formats extra .hspy, .zspy (HyperSpy) or .emd (NCEM).",
        ),
    ],
    series: Annotated[int | None, typer.Option("--series", help="Only this series (default: all, if their frames share one shape).")] = None,
) -> None:
    """Write a recording (denoised and, if recorded, raw frames, with the pixel size, frame time,
    image ids and acquisition times the detector sent) as one standard file."""
    from ..recording import export_recording

    done = export_recording(directory, to, series_id=series)
    cal = done.calibration
    size = f", {cal.pixel_size_nm:.5g} nm/px" if cal and cal.pixel_size_nm else ", pixel size unknown"
    typer.echo(f"wrote {done.path}: {done.frames} frames {done.shape[0]}x{done.shape[1]} ({' + '.join(done.kinds)}){size}")
