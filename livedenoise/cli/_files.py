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


ARCHIVE_HELP = (
    " Several files, or a glob in quotes ('runs/*.tif'), denoise an archive: -o is then a folder, one output per input."
)


@app.command(rich_help_panel=PANEL)
def denoise(
    movies: Annotated[list[Path], typer.Argument(help=MOVIE_HELP + ARCHIVE_HELP, metavar="MOVIE...")],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o",
            help="Where to write: a float32 TIFF (ImageJ, with the input's pixel size) for one movie; for several, "
            "a folder that gets <name>.tif (or .zarr) per movie.",
        ),
    ],
    model: Path | None = model_option(),
    max_batch: int = config_option(EngineConfig, "max_batch"),
    provider: str | None = config_option(EngineConfig, "provider"),
    threads: int = config_option(EngineConfig, "threads"),
    signal: Annotated[str | None, typer.Option("--signal", help=SIGNAL_HELP)] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler", metavar="ADDRESS", rich_help_panel="Archives",
            help="A running Dask scheduler (tcp://HOST:8786) to send the work to; inputs, model and -o must be on "
            "storage its workers share, at the same paths (docs/distributed.md).",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", rich_help_panel="Archives",
            help="Worker processes to start on this machine (Dask LocalCluster; 0: this process alone). Default: one "
            "per core (per GPU with a GPU provider) for several movies, this process for one.",
        ),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", rich_help_panel="Archives", help="Output of an archive job: tif or zarr (distributed extra).")
    ] = "tif",
) -> None:
    """Denoise a stack offline; print the mean CSS of input and output. Or denoise many (an archive),
    on worker processes here or on a Dask cluster.

    The input's CSS is computed after scaling the raw stack to [0, 1] by its own min and max
    (CSS's constants assume that range); the output is already in [0, 1]. The output keeps the
    input's pixel size and frame interval (ImageJ metadata: Fiji shows them in Image > Properties).
    Several movies (or --workers/--scheduler): frames are read in ranges on the workers and each
    output is published under its final name only once complete; a movie that fails is reported
    in one line and the others go on (exit code 1 if any failed). Outputs are bit-for-bit those
    of the one-movie form.
    """
    sources = _expand(movies)
    single = (
        len(sources) == 1 and output.suffix.lower() in (".tif", ".tiff") and scheduler is None and workers is None
        and fmt == "tif"
    )
    if single:
        _denoise_one(sources[0], output, model, max_batch, provider, threads, signal)
    else:
        _denoise_archive(sources, output, model, max_batch, provider, threads, signal, scheduler, workers, fmt)


def _expand(movies: list[Path]) -> list[Path]:
    """The arguments, each glob pattern that is not itself a file replaced by its matches (sorted)."""
    import glob

    out: list[Path] = []
    for m in movies:
        text = str(m)
        if not m.exists() and any(c in text for c in "*?["):
            found = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
            if not found:
                raise LivedenoiseError(f"no file matches {text}")
            out += found
        else:
            out.append(m)
    return out


def _denoise_one(
    movie: Path, output: Path, model: Path | None, max_batch: int, provider: str | None, threads: int, signal: str | None
) -> None:
    """One movie in this process, with its CSS in and out."""
    import numpy as np
    from rich.progress import Progress

    from ..analysis import css_series, scale_to_unit
    from ..engine import Engine
    from ..io import open_movie, to_wire_dtype, write_imagej

    if output.suffix.lower() not in (".tif", ".tiff"):
        raise LivedenoiseError(f"{output}: denoise writes TIFF (.tif); `livedenoise export` writes .hspy/.zspy/.emd")
    source = open_movie(movie, signal=signal)
    typer.echo(f"read {movie.name}: {source.describe()}")
    engine = Engine(model_path(model), provider=provider, max_batch=max_batch, threads=threads)
    _warn_pixel_size(engine.card.pixel_size_nm, source.pixel_size_nm)
    stack = np.empty(source.shape, np.float32)  # the input, for its CSS (as float32: any dtype fits)
    out = np.empty(source.shape, np.float32)
    with Progress(transient=False) as progress:
        task = progress.add_task(f"denoising {movie.name}", total=len(source))
        for start in range(0, len(source), max_batch):
            chunk = to_wire_dtype(source.frames(start, start + max_batch), movie)
            stack[start : start + len(chunk)] = chunk
            out[start : start + len(chunk)] = engine.run_stack(chunk, first=start)
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
    _guard(engine.card.expects, stack, out, source.pixel_size_nm)


def _denoise_archive(
    sources: list[Path], output: Path, model: Path | None, max_batch: int, provider: str | None, threads: int,
    signal: str | None, scheduler: str | None, workers: int | None, fmt: str,
) -> None:
    """Many movies (or one, on workers): :func:`livedenoise.archive.denoise_files`."""
    import contextlib
    import dataclasses
    import os
    import tempfile

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .. import archive
    from .. import cluster as dask
    from ..analysis import DOES_NOT_FIT
    from ..engine import GPU_PROVIDERS, resolve_provider
    from ..errors import ModelError

    if len(sources) == 1 and output.suffix.lower() in (".tif", ".tiff", ".zarr"):
        outdir, outputs = output.parent, [output]
        fmt = "zarr" if output.suffix.lower() == ".zarr" else "tif"
    else:
        if output.suffix.lower() in (".tif", ".tiff") and not output.is_dir():
            raise LivedenoiseError(f"-o {output}: several movies need an output folder, not a .tif file")
        outdir = output
        outputs = archive.output_paths(sources, outdir, fmt)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=outdir, prefix=".livedenoise-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise LivedenoiseError(f"cannot write to the output folder {outdir}: {exc.strerror or exc}") from None
    weights = model_path(model)
    if not weights.is_file():
        raise ModelError(f"model file not found: {weights}")
    spec = archive.DenoiseSpec(
        model=str(weights.resolve()), provider=provider, max_batch=max_batch, threads=threads, signal=signal, format=fmt
    )
    gpus = dask.visible_gpus() if provider and resolve_provider(provider)[0] in GPU_PROVIDERS else []
    if scheduler is None and workers is None:  # sized to the machine where that pays off
        pays = len(sources) > 1 and dask.have_distributed()
        workers = (len(gpus) if len(gpus) > 1 else 0) if gpus else (dask.usable_cores() if pays else 0)
        workers = workers if workers > 1 else 0
    if scheduler is None and workers == 0:
        where, cluster = "this process", contextlib.nullcontext(None)
    else:
        spec_ = dask.ClusterSpec(scheduler=scheduler, workers=workers or 0, gpus=tuple(gpus) if len(gpus) >= (workers or 0) else ())
        cluster = dask.connect(spec_)
        where = f"the Dask scheduler at {scheduler}" if scheduler else "worker processes on this machine"
    failed = 0
    with cluster as client:
        if client is not None:
            n = dask.worker_count(client)
            if not threads and not gpus:
                spec = dataclasses.replace(spec, threads=dask.worker_threads(client))
            where += f": {n} worker{'s' * (n != 1)}" + (f", {spec.threads} onnxruntime thread(s) each" if spec.threads else "")
        typer.echo(f"denoising {len(sources)} movie{'s' * (len(sources) != 1)} into {outdir} on {where}")
        errors = Console(stderr=True, soft_wrap=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=False) as progress:
            bar = progress.add_task("frames", total=None)

            def on_progress(done: int, known: int) -> None:
                progress.update(bar, completed=done, total=known or None)

            def on_file(f: archive.FileResult) -> None:
                nonlocal failed
                if f.error is not None:
                    failed += 1
                    errors.print(f"error: {f.error}", markup=False, highlight=False)
                    return
                p = f.prepared
                assert p is not None
                _warn_pixel_size(p.model_pixel_size_nm, p.pixel_size_nm)
                size = f", {p.pixel_size_nm:.5g} nm/px" if p.pixel_size_nm else ""
                progress.console.print(
                    f"wrote {f.output} ({f.frames} frames, float32 in [0, 1]{size}, model {p.model_name} on {p.provider})",
                    markup=False, highlight=False, soft_wrap=True,
                )
                c = f.checked
                if c is not None:
                    score = "" if c.model_db is None else f"; score {c.model_db:+.2f} dB over raw, best causal filter {c.filter_db:+.2f} dB"
                    css = "-" if c.css_mean is None else f"{c.css_mean:.4f}"
                    progress.console.print(f"  CSS {css}{score}; guard: {c.guard}", markup=False, highlight=False, soft_wrap=True)
                    if c.guard == DOES_NOT_FIT:
                        errors.print(f"warning: {f.source.name}: {c.guard_message}", markup=False, highlight=False)

            report = archive.denoise_files(sources, outputs, spec, client=client, on_file=on_file, on_progress=on_progress)
    done = len(sources) - len(report.failed)
    typer.echo(f"{done} of {len(sources)} movies denoised: {report.frames} frames in {report.wall_s:.1f} s ({report.fps:.0f} frames/s)")
    if report.failed:
        typer.echo(f"{len(report.failed)} of {len(sources)} movies failed (listed above)", err=True)
        raise typer.Exit(1)


def _warn_pixel_size(model_nm: float | None, movie_nm: float | None) -> None:
    """The model learnt atoms of a size in pixels: say so when the movie's pixels differ."""
    from ..engine import pixel_size_differs

    if pixel_size_differs(model_nm, movie_nm):
        typer.echo(
            f"warning: the movie's pixel size ({movie_nm:.4g} nm) differs from the model's training frames' "
            f"({model_nm:.4g} nm): atoms have another size in pixels than it learnt",
            err=True,
        )


#: Frames (evenly spaced) whose unexplained signal ``denoise`` averages: ~1 ms each at 128².
UNEXPLAINED_FRAMES = 256
#: Consecutive frames summed for the unexplained signal of a window (``serve``'s guard uses its window).
UNEXPLAINED_WINDOW = 16


def _guard(expects: dict | None, raw, denoised, pixel_size_nm: float | None) -> None:
    """``serve``'s guard, offline (:func:`~livedenoise.analysis.guard_report`, as serve's): the
    ground-truth-free score of the model and of the best causal filter, and the verdict it gives
    (issue 24; one ``warning:`` line where the model does not fit, with what the content estimate
    finds off: issue 19); the unexplained signal per frame, in single frames and in sums of
    UNEXPLAINED_WINDOW frames."""
    import numpy as np

    from ..analysis import DOES_NOT_FIT, atom_width, guard_report, read_noise_of, unexplained, unexplained_sum

    report = guard_report(expects, raw, denoised, pixel_size_nm=pixel_size_nm)
    if report.expected is None:
        typer.echo(f"guard: {report.off_reason}", err=True)
    fit = report.fit
    if fit is not None and fit.model_db is not None:
        typer.echo(f"score: {fit.model_db:+.2f} dB over raw (ground-truth-free, {fit.frames} frames); "
                   f"best causal filter {fit.filter_db:+.2f} dB ({fit.filter})")
    if report.state == DOES_NOT_FIT:
        typer.echo(f"warning: {report.message}", err=True)
    else:
        typer.echo(f"guard: {report.message}")
    sigma = atom_width(report.expected, report.seen)
    noise = read_noise_of(raw)
    picked = np.unique(np.linspace(0, len(raw) - 1, min(len(raw), UNEXPLAINED_FRAMES)).round().astype(int))
    single = [unexplained(raw[i], denoised[i], sigma, read_noise=noise) for i in picked]
    over = f"{len(picked)} frames" + ("" if len(picked) == len(raw) else f" of {len(raw)}")
    line = (
        f"unexplained signal per frame: mean {np.mean([u.counts for u in single]):.4g} counts "
        f"({np.mean([u.fraction for u in single]):.1%} of the atomic counts) over {over}"
    )
    k = min(UNEXPLAINED_WINDOW, len(raw))
    if k >= 2:
        starts = np.unique(np.linspace(0, len(raw) - k, min(len(raw) // k, UNEXPLAINED_FRAMES // k)).round().astype(int))
        sums = [unexplained_sum(raw[s : s + k], denoised[s : s + k], sigma, read_noise=noise) for s in starts]
        line += (
            f"; {np.mean([u.counts for u in sums]):.4g} counts ({np.mean([u.fraction for u in sums]):.1%}) "
            f"in sums of {k} frames"
        )
    typer.echo(line)


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
