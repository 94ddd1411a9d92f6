"""Commands on files: ``denoise`` (a stack, offline), ``css`` (a stack's consecutive similarity) and
``inspect`` (a recording written by ``serve --record``). Movies are read by :func:`livedenoise.io.open_movie`
(TIFF, .npy, Nion, and with the formats extra every image format RosettaSciIO reads). Heavy imports stay inside the bodies.
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


MOVIE_HELP = (
    "Movie: TIFF, .npy, Nion .ndata/.h5, or (formats extra) any image file RosettaSciIO reads: "
    "Velox/NCEM .emd, .dm3/.dm4, .ser/.emi, .mrc, .hspy, .zspy ..."
)
SIGNAL_HELP = "In a file with several signals (HAADF, BF, EDS ...): the one to read, by title or index."


@app.command(rich_help_panel=PANEL)
def denoise(
    movie: Annotated[Path, typer.Argument(help=MOVIE_HELP, metavar="MOVIE")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the denoised float32 TIFF (ImageJ, with the input's pixel size).")
    ],
    model: Path | None = model_option(),
    max_batch: int = config_option(EngineConfig, "max_batch"),
    provider: str | None = config_option(EngineConfig, "provider"),
    signal: Annotated[str | None, typer.Option("--signal", help=SIGNAL_HELP)] = None,
) -> None:
    """Denoise a stack offline; print the mean CSS of input and output.

    The input's CSS is computed after scaling the raw stack to [0, 1] by its own min and max
    (CSS's constants assume that range); the output is already in [0, 1]. The output keeps the
    input's pixel size and frame interval (ImageJ metadata: Fiji shows them in Image > Properties).
    """
    import numpy as np
    from rich.progress import Progress

    from ..analysis import css_series, scale_to_unit
    from ..engine import Engine
    from ..io import open_movie, to_wire_dtype, write_imagej

    if output.suffix.lower() not in (".tif", ".tiff"):
        raise LivedenoiseError(f"{output}: denoise writes TIFF (.tif); `livedenoise export` writes .hspy/.zspy/.emd")
    source = open_movie(movie, signal=signal)
    typer.echo(f"read {movie.name}: {source.describe()}")
    engine = Engine(model_path(model), provider=provider, max_batch=max_batch)
    _warn_pixel_size(engine.card.pixel_size_nm, source.pixel_size_nm)
    stack = np.empty(source.shape, np.float32)  # the input, for its CSS (as float32: any dtype fits)
    out = np.empty(source.shape, np.float32)
    with Progress(transient=False) as progress:
        task = progress.add_task(f"denoising {movie.name}", total=len(source))
        for start in range(0, len(source), max_batch):
            chunk = to_wire_dtype(source.frames(start, start + max_batch), movie)
            stack[start : start + len(chunk)] = chunk
            result = engine.infer(list(chunk), [0] * len(chunk))
            if result.errors:
                i, kind, message = result.errors[0]
                raise LivedenoiseError(f"frame {start + i} {kind}: {message}")
            out[start : start + len(chunk)] = result.outputs
            progress.advance(task, len(chunk))
    try:
        write_imagej(
            output, out, pixel_size_nm=source.pixel_size_nm, frame_time_s=source.frame_time_s,
            info=f"livedenoise denoise {movie.name} (model {engine.name})",
        )
    except OSError as exc:
        raise LivedenoiseError(f"cannot write {output}: {exc.strerror or exc}") from None
    if len(stack) >= 2:
        typer.echo(f"mean CSS input (scaled to [0,1] by its min/max): {css_series(scale_to_unit(stack)).mean():.4f}")
        typer.echo(f"mean CSS output: {css_series(out).mean():.4f}")
    else:
        typer.echo("CSS needs at least two frames")
    size = f", {source.pixel_size_nm:.5g} nm/px" if source.pixel_size_nm else ""
    typer.echo(f"wrote {output} ({len(out)} frames, float32 in [0, 1]{size}, model {engine.name} on {engine.provider})")


def _warn_pixel_size(model_nm: float | None, movie_nm: float | None) -> None:
    """The model learnt atoms of a size in pixels: say so when the movie's pixels differ (>5 %)."""
    if model_nm and movie_nm and abs(movie_nm / model_nm - 1) > 0.05:
        typer.echo(
            f"warning: the movie's pixel size ({movie_nm:.4g} nm) differs from the model's training frames' "
            f"({model_nm:.4g} nm): atoms have another size in pixels than it learnt",
            err=True,
        )


@app.command("css", rich_help_panel=PANEL)
def css_command(
    movie: Annotated[Path, typer.Argument(help=MOVIE_HELP, metavar="MOVIE")],
    scale: Annotated[
        bool, typer.Option(help="Scale the stack to [0,1] by its min/max first (CSS assumes [0,1]).")
    ] = True,
    signal: Annotated[str | None, typer.Option("--signal", help=SIGNAL_HELP)] = None,
) -> None:
    """Print the CSS (consecutive structural similarity) series of a stack, and its mean."""
    from ..analysis import css_series, scale_to_unit
    from ..io import read_movie

    stack = read_movie(movie, signal=signal)
    if len(stack) < 2:
        raise LivedenoiseError(f"{movie}: CSS needs at least two frames, found {len(stack)}")
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
