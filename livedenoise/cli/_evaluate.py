"""CLI commands of the evaluation work: ``simulate movie``, ``simulate dense`` and ``evaluate``.

``livedenoise simulate movie --out noisy.tif --truth truth.tif --positions atoms.json`` writes a
simulated movie with its ground truth (see ``docs/simulation.md``), ``simulate dense --kind mos2|particle``
a dense sample (a lattice) in the same form; ``livedenoise evaluate
--denoised out.tif [--truth truth.tif] [--positions atoms.json [--raw noisy.tif]] [--json report.json]``
scores a denoised stack (rules in :mod:`livedenoise.scoring`). Heavy imports stay inside the bodies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..analysis import HOP_DISTANCE, MAX_LINK
from ..errors import LivedenoiseError

app = typer.Typer()
simulate_app = typer.Typer(
    name="simulate",
    help="Simulated low-dose HAADF-STEM movies with ground truth.",
    no_args_is_help=True,
    rich_help_panel="Models",
)
app.add_typer(simulate_app)


def _write_tiff(path: Path, stack, what: str, compress: bool = False) -> None:
    import tifffile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, stack, compression="zlib" if compress else None, photometric="minisblack")
    except OSError as exc:
        raise LivedenoiseError(f"cannot write {what} {path}: {exc.strerror or exc}") from None


def _write_movie(movie, out: Path, truth: Path | None, positions: Path | None, metadata) -> None:
    """A simulated movie's noisy counts, and where asked its truth and its positions JSON (``metadata()``)."""
    import numpy as np

    _write_tiff(out, movie.noisy.astype(np.float32), "noisy movie")
    if truth is not None:
        _write_tiff(truth, movie.truth.astype(np.float32), "truth movie", compress=True)
    if positions is not None:
        try:
            positions.parent.mkdir(parents=True, exist_ok=True)
            positions.write_text(json.dumps(metadata()))
        except OSError as exc:
            raise LivedenoiseError(f"cannot write positions {positions}: {exc.strerror or exc}") from None


@simulate_app.command("movie")
def simulate_movie_cmd(
    out: Annotated[Path, typer.Option("--out", help="Noisy movie, multi-page float32 TIFF (counts).")],
    truth: Annotated[
        Path | None, typer.Option("--truth", help="Noise-free movie, float32 TIFF (fraction of the beam).")
    ] = None,
    positions: Annotated[
        Path | None, typer.Option("--positions", help="Atom positions JSON ([x, y] pixels per frame).")
    ] = None,
    frames: Annotated[int, typer.Option("--frames", min=1, help="Number of frames.")] = 48,
    size: Annotated[int, typer.Option("--size", min=32, max=4096, help="Frame size in pixels (square).")] = 128,
    dose: Annotated[float, typer.Option("--dose", min=0.0, help="Incident electrons per pixel per frame.")] = 300.0,
    gradient: Annotated[
        float, typer.Option("--gradient", help="Relative background thickness increase left -> right (1 = doubles).")
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (the same seed gives the same movie).")] = 0,
    hop_prob: Annotated[
        float, typer.Option("--hop-prob", min=0.0, max=1.0, help="Probability per frame that a single atom hops 3-6 px.")
    ] = 0.02,
) -> None:
    """Write a simulated noisy movie, and optionally its truth and atom positions."""
    from ..sim import SimConfig, movie_metadata, simulate_movie

    if gradient <= -1.0:
        raise LivedenoiseError("--gradient must be greater than -1 (the background cannot vanish)")
    cfg = SimConfig(size=size, frames=frames, dose=dose, gradient=gradient, seed=seed, hop_prob=hop_prob)
    movie = simulate_movie(cfg)
    _write_movie(movie, out, truth, positions, lambda: movie_metadata(movie, cfg, name=out.stem))
    n_atoms = movie.positions.shape[1]
    typer.echo(
        f"wrote {out} ({frames} frames of {size}x{size}, dose {dose:g} e-/px, {n_atoms} atoms"
        f", mean {float(movie.noisy.mean()):.3f} counts)"
    )


@simulate_app.command("dense")
def simulate_dense_cmd(
    kind: Annotated[str, typer.Option("--kind", help="Sample: mos2 (a 2-D MoS2-like crystal) or particle (fcc nanoparticle).")],
    out: Annotated[Path, typer.Option("--out", help="Noisy movie, multi-page float32 TIFF (counts).")],
    truth: Annotated[
        Path | None, typer.Option("--truth", help="Noise-free movie, float32 TIFF (fraction of the beam).")
    ] = None,
    positions: Annotated[
        Path | None,
        typer.Option("--positions", help="Column positions JSON (x, y pixels per frame; weights, sites, groups)."),
    ] = None,
    frames: Annotated[int, typer.Option("--frames", min=1, help="Number of frames.")] = 48,
    size: Annotated[int, typer.Option("--size", min=32, max=4096, help="Frame size in pixels (square).")] = 256,
    dose: Annotated[
        float | None,
        typer.Option("--dose", min=0.0, help="Incident electrons per pixel per frame (default: the brightest "
                     "pristine column peaks at 5 counts)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (the same seed gives the same movie).")] = 0,
) -> None:
    """Write a simulated dense sample (lattice columns, defects, mobile adatoms), with its truth and positions."""
    from ..sim import DENSE_KINDS, DenseConfig, dense_metadata, simulate_dense

    if kind not in DENSE_KINDS:
        raise LivedenoiseError(f"--kind must be one of {', '.join(DENSE_KINDS)}, got {kind!r}")
    cfg = DenseConfig(kind=kind, size=size, frames=frames, dose=dose, seed=seed)
    movie = simulate_dense(cfg)
    _write_movie(movie, out, truth, positions, lambda: dense_metadata(movie, cfg, name=out.stem))
    g = movie.groups
    zone = f" [{movie.zone}]" if movie.zone else ""
    typer.echo(
        f"wrote {out} ({frames} frames of {size}x{size}, {kind}{zone}, dose {movie.dose:.4g} e-/px, "
        f"{int((g >= 0).sum())} columns ({int((g == 1).sum())} substituted, {int((g == 2).sum())} partly vacant), "
        f"{int((g < 0).sum())} adatoms, mean {float(movie.noisy.mean()):.3f} counts)"
    )


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


@app.command("evaluate", rich_help_panel="Models")
def evaluate_cmd(
    denoised: Annotated[Path, typer.Option("--denoised", help="Denoised stack (multi-page TIFF or .npy).")],
    truth: Annotated[Path | None, typer.Option("--truth", help="Noise-free stack of the same shape.")] = None,
    positions: Annotated[
        Path | None, typer.Option("--positions", help="True atom positions JSON (simulate movie / dev-D schema).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
    radius: Annotated[float, typer.Option("--radius", min=0.1, help="Matching radius in pixels.")] = 1.5,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Fixed peak height above the frame median (default: auto).")
    ] = None,
    calib_frames: Annotated[
        int | None,
        typer.Option("--calib-frames", min=1, help="Frames used to choose the auto threshold (default: all)."),
    ] = None,
    raw: Annotated[
        Path | None,
        typer.Option("--raw", help="With --positions: the noisy input stack in detector counts, to score each atom's "
                     "evidence (true against invented atoms)."),
    ] = None,
    hop_px: Annotated[
        float, typer.Option("--hop-px", min=0.1, help="With --positions: a track step longer than this, confirmed by the next frame, is a hop (px).")
    ] = HOP_DISTANCE,
    track_max_disp: Annotated[
        float, typer.Option("--track-max-disp", min=0.1, help="With --positions: longest link of a track between "
                            "two frames (px), as serve --atoms.")
    ] = MAX_LINK,
    read_noise: Annotated[
        float, typer.Option("--read-noise", min=0.0, help="With --raw: Gaussian read noise of the counts (std).")
    ] = 0.0,
) -> None:
    """Score a denoised stack: CSS; with --truth PSNR/SSIM after an affine fit; with --positions atom F1,
    hops and tracks; with --raw too, the evidence of each atom."""
    from rich.console import Console
    from rich.table import Table

    from ..io import read_movie
    from ..scoring import evaluate, load_positions

    if raw is not None and positions is None:
        raise LivedenoiseError("--raw needs --positions (the evidence is scored against the true atoms)")
    den = read_movie(denoised, "denoised")
    tru = read_movie(truth, "truth") if truth is not None else None
    noisy = read_movie(raw, "raw") if raw is not None else None
    pos, groups = load_positions(positions) if positions is not None else (None, None)
    rep = evaluate(
        den, tru, pos, threshold="auto" if threshold is None else threshold,
        match_radius=radius, calib_frames=calib_frames, groups=groups, raw=noisy, max_disp=track_max_disp,
        hop_px=hop_px, read_noise=read_noise,
    )
    table = Table(title=f"evaluate {denoised.name} ({rep.frames} frames)", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("note")
    table.add_row("CSS mean", _fmt(rep.css_mean), "consecutive frames, stack mapped to [0, 1]")
    table.add_row("CSS min", _fmt(rep.css_min), "")
    if tru is not None:
        table.add_row("PSNR (dB)", _fmt(rep.psnr, 2), "after per-frame best affine fit to truth")
        table.add_row("SSIM", _fmt(rep.ssim), "after the same fit")
        sign = "INVERTED contrast" if rep.inverted else "positive (atoms bright)"
        table.add_row("fit slope", _fmt(rep.slope), f"{sign}; {rep.inverted_frames} frame(s) negative")
    if pos is not None:
        table.add_row("precision", _fmt(rep.precision), f"match radius {rep.match_radius:g} px")
        table.add_row("recall", _fmt(rep.recall), f"{rep.n_matched} of {rep.n_true} true atoms")
        table.add_row("F1", _fmt(rep.f1), f"{rep.n_found} peaks found")
        table.add_row("loc. error (px)", _fmt(rep.loc_error_px), "mean distance of matched pairs")
        if rep.recall_single is not None or rep.recall_cluster is not None:
            table.add_row("recall single / cluster", f"{_fmt(rep.recall_single)} / {_fmt(rep.recall_cluster)}", "")
        if rep.n_hops:
            table.add_row(
                "hops: recall / loc. err",
                f"{_fmt(rep.hop_recall)} / {_fmt(rep.hop_loc_error_px)}",
                f"{rep.n_hops} atom(s) moved > {HOP_DISTANCE:g} px between frames",
            )
        table.add_row("threshold", _fmt(rep.threshold), rep.threshold_rule or "")
        table.add_row(
            "hop events: recall / precision",
            f"{_fmt(rep.hop_events_recall)} / {_fmt(rep.hop_events_precision)}",
            f"{rep.n_hop_events} event(s) from the tracks (steps > {hop_px:g} px), within 5 frames of a true hop",
        )
        table.add_row(
            "hop events: placement / delay",
            f"{_fmt(rep.hop_events_placement_px, 2)} px / {_fmt(rep.hop_events_delay_frames, 2)} fr",
            f"placed within 1 px and 2 frames: {_fmt(rep.hop_events_placed)} of the true hops",
        )
        table.add_row(
            "identity switches / 100", _fmt(rep.id_switches_per_100, 2),
            f"{rep.id_switches} switch(es) of the tracks over the true atom-frames",
        )
        if noisy is not None:
            table.add_row(
                "evidence AUC track / frame", f"{_fmt(rep.evidence_auc_track)} / {_fmt(rep.evidence_auc_frame)}",
                f"true against {rep.n_invented} invented atom(s) (none within 3 px)",
            )
            table.add_row(
                "precision at 90 % recall", _fmt(rep.evidence_precision_at_90),
                f"evidence z >= {_fmt(rep.evidence_threshold_at_90, 2)}; keeping all: {_fmt(rep.evidence_precision_all)}",
            )
    Console().print(table)
    if json_out is not None:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(rep.to_json())
        except OSError as exc:
            raise LivedenoiseError(f"cannot write {json_out}: {exc.strerror or exc}") from None
