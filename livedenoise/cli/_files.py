"""Commands on files: ``denoise`` (a stack, offline), ``css`` (a stack's consecutive similarity) and
``inspect`` (a recording written by ``serve --record``). Heavy imports stay inside the bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..engine import EngineConfig
from ..errors import LivedenoiseError
from ._common import config_option, model_option, model_path

app = typer.Typer()

PANEL = "Files"


@app.command(rich_help_panel=PANEL)
def denoise(
    tiff: Annotated[Path, typer.Argument(help="Multi-page TIFF stack to denoise.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the denoised float32 TIFF.")],
    model: Path | None = model_option(),
    max_batch: int = config_option(EngineConfig, "max_batch"),
    provider: str | None = config_option(EngineConfig, "provider"),
) -> None:
    """Denoise a stack offline; print the mean CSS of input and output.

    The input's CSS is computed after scaling the raw stack to [0, 1] by its own min and max
    (CSS's constants assume that range); the output is already in [0, 1].
    """
    import numpy as np
    import tifffile
    from rich.progress import Progress

    from ..analysis import css_series, scale_to_unit
    from ..engine import Engine
    from ..io import read_movie, to_wire_dtype

    stack = to_wire_dtype(read_movie(tiff), tiff)
    engine = Engine(model_path(model), provider=provider, max_batch=max_batch)
    out = np.empty(stack.shape, np.float32)
    with Progress(transient=False) as progress:
        task = progress.add_task(f"denoising {tiff.name}", total=len(stack))
        for start in range(0, len(stack), max_batch):
            chunk = list(stack[start : start + max_batch])
            result = engine.infer(chunk, [0] * len(chunk))
            if result.errors:
                i, kind, message = result.errors[0]
                raise LivedenoiseError(f"frame {start + i} {kind}: {message}")
            out[start : start + len(chunk)] = result.outputs
            progress.advance(task, len(chunk))
    try:
        tifffile.imwrite(output, out)
    except OSError as exc:
        raise LivedenoiseError(f"cannot write {output}: {exc.strerror or exc}") from None
    if len(stack) >= 2:
        typer.echo(f"mean CSS input (scaled to [0,1] by its min/max): {css_series(scale_to_unit(stack)).mean():.4f}")
        typer.echo(f"mean CSS output: {css_series(out).mean():.4f}")
    else:
        typer.echo("CSS needs at least two frames")
    typer.echo(f"wrote {output} ({len(out)} frames, float32 in [0, 1], model {engine.name} on {engine.provider})")


@app.command("css", rich_help_panel=PANEL)
def css_command(
    tiff: Annotated[Path, typer.Argument(help="Multi-page TIFF stack.")],
    scale: Annotated[
        bool, typer.Option(help="Scale the stack to [0,1] by its min/max first (CSS assumes [0,1]).")
    ] = True,
) -> None:
    """Print the CSS (consecutive structural similarity) series of a stack, and its mean."""
    from ..analysis import css_series, scale_to_unit
    from ..io import read_movie

    stack = read_movie(tiff)
    if len(stack) < 2:
        raise LivedenoiseError(f"{tiff}: CSS needs at least two frames, found {len(stack)}")
    series = css_series(scale_to_unit(stack) if scale else stack.astype("float32"))
    for i, value in enumerate(series):
        typer.echo(f"{i}\t{i + 1}\t{value:.6f}")
    typer.echo(f"mean\t\t{series.mean():.6f}")


@app.command("inspect", rich_help_panel=PANEL)
def inspect_command(
    directory: Annotated[Path, typer.Argument(help="A directory written by serve --record.")],
) -> None:
    """List the series of a recording: frames, image-id range and gaps, per kind."""
    from rich.console import Console
    from rich.table import Table

    from ..recording import summarize

    rows = summarize(directory)
    table = Table(title=f"recording {directory}")
    for col in ("series", "kind", "frames", "first id", "last id", "missing", "gaps", "chunks"):
        table.add_column(col, justify="left" if col in ("kind", "gaps") else "right")
    for r in rows:
        gaps = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in r.gaps[:8])
        if len(r.gaps) > 8:
            gaps += f", ... ({len(r.gaps)} ranges)"
        table.add_row(
            str(r.series_id), r.kind, str(r.frames), str(r.first_id), str(r.last_id), str(r.missing),
            gaps or "-", str(r.files),
        )
    console = Console(width=max(100, Console().width))
    if rows:
        console.print(table)
    else:
        console.print(f"recording {directory}: no complete chunk yet")
