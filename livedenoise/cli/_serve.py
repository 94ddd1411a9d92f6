"""``serve`` (the live daemon) and ``demo`` (synthetic detector -> serve -> monitor), and what
they share: ``--atoms``, starting the monitor beside them, and the one-line status of ``stats``.

onnxruntime and zmq load inside the commands; torch and Qt never load here (the monitor runs as
a child process, ``livedenoise view``).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from .._options import default_for, help_for, parse_shapes
from .._signals import stop_on_signals
from ..daemon import (
    AtomsConfig,
    DectrisConfig,
    GuardConfig,
    MerlinConfig,
    QueueConfig,
    RecordingConfig,
    SecurityConfig,
    ServeConfig,
)
from ..detectors.dectris import dectris_config as detector_dectris_config
from ..detectors.merlin import merlin_config as detector_merlin_config
from ..engine import EngineConfig
from ..errors import LivedenoiseError
from ..sim import ReplayConfig
from ._common import config_option, log, model_option, model_path, setup_logging

app = typer.Typer()

PANEL = "Live"
# serve --help: one panel per configuration group
STREAM, QUEUE, ENGINE, RECORDING, ATOMS, GUARD, SECURITY, VIEWER = (
    "Stream", "Queue", "Engine", "Recording", "Atoms", "Guard", "Security", "Viewer and logging",
)


def atoms_threshold_option(panel: str | None = None) -> Any:
    """``--atoms-threshold``: a text, so that ``30%`` can be told from ``0.3``."""
    text = help_for(AtomsConfig, "threshold")
    return typer.Option(
        None, help=f"With --atoms: {text[:1].lower()}{text[1:]}", show_default=f"{default_for(AtomsConfig, 'threshold'):g}",
        rich_help_panel=panel,
    )


#: The ``AtomsConfig`` fields beside the threshold that ``serve`` and ``demo`` take as options.
ATOMS_FIELDS = {
    "atoms_evidence": "evidence", "atoms_tracks": "tracks", "atoms_weak_z": "weak_z", "hop_px": "hop_px",
    "track_max_disp": "track_max_disp", "hop_confirm": "hop_confirm",
}


def atoms_config(
    atoms: bool, threshold: str | None, *, given: tuple[str, ...] = (), **fields: Any
) -> AtomsConfig | None:
    """``--atoms``, ``--atoms-threshold`` and the evidence and track options (``fields``, by
    :class:`~livedenoise.daemon.AtomsConfig` field) as an ``AtomsConfig`` (None: off).

    ``"0.4"`` is an absolute height, ``"30%"`` a share of each frame's highest peak. ``given``:
    the options set on the command line, refused without ``--atoms``.

    >>> atoms_config(True, "30%", hop_px=3.0)
    AtomsConfig(threshold=0.3, relative=True, evidence=True, tracks=True, weak_z=3.0, hop_px=3.0, track_max_disp=7.0, hop_confirm=1)
    """
    if not atoms:
        if threshold is not None or given:
            names = (["--atoms-threshold"] if threshold is not None else []) + [f"--{g}" for g in given]
            raise LivedenoiseError(f"{', '.join(names)} needs --atoms")
        return None
    if threshold is None:
        return AtomsConfig(**fields)
    relative = threshold.strip().endswith("%")
    try:
        value = float(threshold.strip().removesuffix("%"))
    except ValueError:
        raise LivedenoiseError(
            f"--atoms-threshold {threshold!r}: expected a number (0.4) or a percentage (30%)"
        ) from None
    return AtomsConfig(threshold=value / 100 if relative else value, relative=relative, **fields)


def atoms_fields(ctx: typer.Context, **values: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The evidence and track options as ``AtomsConfig`` fields, and those given on the command line."""
    # by name: typer may bring its own copy of click, and so its own ParameterSource enum
    given = tuple(
        ("no-" if value is False else "") + name.replace("_", "-") for name, value in values.items()
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    )
    return {ATOMS_FIELDS[name]: value for name, value in values.items()}, given


SOURCE_FORMATS = ("native", "dectris", "merlin")


def dectris_config(
    source_format: str, scan: str | None, annulus: Sequence[str] | str | None, centre: str | None,
    mask: Sequence[Path] | Path | None, channel: str | None, stream: str = "auto",
) -> DectrisConfig | None:
    """``--source-format`` and the DECTRIS options as a :class:`~livedenoise.daemon.DectrisConfig`
    (None: the livedenoise protocol; :func:`livedenoise.detectors.dectris.dectris_config` reads the
    options); one ``error:`` line for anything that does not parse or fit. ``annulus`` and ``mask``
    may be given several times (several virtual detectors).

    >>> dectris_config("dectris", "64x32", ["haadf=24:60", "0:8"], None, None, None).annuli[1]
    Annulus(inner=0.0, outer=8.0, name='')
    """
    fmt = source_format.strip().lower()
    if fmt not in SOURCE_FORMATS:
        raise LivedenoiseError(f"--source-format {source_format!r}: expected one of {', '.join(SOURCE_FORMATS)}")
    annuli, masks = _repeated(annulus, mask)
    stream = stream.strip().lower()
    given = [name for name, v in (("--scan", scan), ("--annulus", annuli), ("--centre", centre), ("--mask", masks),
                                  ("--channel", channel)) if v]
    if fmt == "native":
        if given:
            raise LivedenoiseError(f"{', '.join(given)}: only with --source-format dectris (or merlin)")
        if stream != "auto":
            raise LivedenoiseError("--dectris-stream: only with --source-format dectris")
        return None
    return detector_dectris_config(scan, annuli, centre, masks, channel, stream)


def merlin_config(
    source: str, scan: str | None, annulus: Sequence[str] | str | None, centre: str | None,
    mask: Sequence[Path] | Path | None, channel: str | None, stream: str = "auto",
) -> MerlinConfig:
    """``--source-format merlin`` and the scan options as a :class:`~livedenoise.daemon.MerlinConfig`
    (:func:`livedenoise.detectors.merlin.merlin_config`)."""
    annuli, masks = _repeated(annulus, mask)
    return detector_merlin_config(source, scan, annuli, centre, masks, channel, stream)


def _repeated(annulus: Sequence[str] | str | None, mask: Sequence[Path] | Path | None) -> tuple[list[str], list[Path]]:
    """``--annulus`` and ``--mask``, given once or several times, as lists."""
    annuli = [annulus] if isinstance(annulus, str) else list(annulus or ())
    masks = [mask] if isinstance(mask, Path) else list(mask or ())
    return annuli, masks


def format_shapes(shapes: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{h}x{w}" for h, w in shapes)


def parse_cpus(text: str) -> tuple[int, ...]:
    """``--pipeline-cpus``: ``"0"`` or ``"2,3"`` as CPU numbers; ``""``: none."""
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise LivedenoiseError(f"--pipeline-cpus {text!r}: expected CPU numbers like 0 or 2,3") from None


def launch_viewer(address: str) -> subprocess.Popen | None:
    """Start ``livedenoise view --connect address`` as a child process, if it can run here."""
    from ..viewer import viewer_unavailable_reason

    reason = viewer_unavailable_reason()
    if reason:
        log.warning("not opening the viewer: %s", reason)
        return None
    return subprocess.Popen([sys.executable, "-m", "livedenoise", "view", "--connect", address])


def stop_child(proc: subprocess.Popen | None, timeout: float = 3.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


WARMUP_SIZE = format_shapes(default_for(EngineConfig, "shapes"))


@app.command(rich_help_panel=PANEL)
def serve(
    ctx: typer.Context,
    source: str = config_option(ServeConfig, "source", panel=STREAM),
    publish: str = config_option(ServeConfig, "publish", panel=STREAM),
    push_output: str | None = config_option(ServeConfig, "push_output", panel=STREAM),
    pull: bool = config_option(ServeConfig, "pull", panel=STREAM),
    source_format: str = typer.Option(
        "native", help="The detector's stream: native (the livedenoise protocol), dectris (SIMPLON Stream v1 or "
        "v2, told apart by its messages; implies --pull; docs/dectris.md) or merlin (a Quantum Detectors Merlin's "
        "data port, --source tcp://HOST:6342; the merlin extra; docs/acquisition.md).", rich_help_panel=STREAM,
    ),
    scan: str | None = config_option(DectrisConfig, "scan", panel=STREAM, metavar="ROWSxCOLS"),
    annulus: list[str] | None = typer.Option(
        None, help="Virtual detector (with --scan): an annulus' INNER:OUTER radii in detector pixels, like 10:40, or "
        "NAME=INNER:OUTER. Repeat it (and --mask) for several detectors in one pass, e.g. haadf=24:60 adf=12:24 "
        "bf=0:8: the first (annuli before masks) is denoised, the others are published on 'virtual'.",
        rich_help_panel=STREAM,
    ),
    centre: str | None = config_option(DectrisConfig, "centre", panel=STREAM, metavar="X,Y"),
    mask: list[Path] | None = config_option(DectrisConfig, "masks", "--mask", panel=STREAM, default=None),
    channel: str | None = config_option(DectrisConfig, "channel", panel=STREAM),
    dectris_stream: str = config_option(DectrisConfig, "stream", "--dectris-stream", panel=STREAM, metavar="auto|v1|v2"),
    lossless: bool = config_option(QueueConfig, "lossless", panel=QUEUE),
    queue: int = config_option(QueueConfig, "capacity", "--queue", panel=QUEUE),
    max_wait_ms: float = config_option(QueueConfig, "max_wait_ms", panel=QUEUE),
    max_age_ms: float = config_option(QueueConfig, "max_age_ms", panel=QUEUE),
    model: Path | None = model_option(ENGINE),
    provider: str | None = config_option(EngineConfig, "provider", panel=ENGINE),
    threads: int = config_option(EngineConfig, "threads", panel=ENGINE),
    spin: bool = config_option(EngineConfig, "spin", panel=ENGINE),
    max_batch: int = config_option(EngineConfig, "max_batch", panel=ENGINE),
    max_batch_pixels: int = config_option(EngineConfig, "max_batch_pixels", panel=ENGINE),
    warmup_size: str = config_option(EngineConfig, "shapes", "--warmup-size", panel=ENGINE, default=WARMUP_SIZE),
    fp16: bool = config_option(EngineConfig, "fp16", panel=ENGINE),
    cuda_graph: bool = config_option(EngineConfig, "cuda_graph", panel=ENGINE),
    trt_cache: Path | None = config_option(EngineConfig, "trt_cache", panel=ENGINE),
    pipeline_cpus: str = config_option(ServeConfig, "pipeline_cpus", panel=ENGINE, default=""),
    realtime: int | None = config_option(ServeConfig, "realtime", panel=ENGINE),
    trim_interval: float = config_option(ServeConfig, "trim_interval", panel=ENGINE),
    record: Path | None = config_option(RecordingConfig, "directory", "--record", panel=RECORDING, default=None),
    record_raw: bool = config_option(RecordingConfig, "raw", panel=RECORDING),
    record_chunk: int = config_option(RecordingConfig, "chunk_frames", "--record-chunk", panel=RECORDING),
    record_chunk_seconds: float = config_option(RecordingConfig, "chunk_seconds", panel=RECORDING),
    atoms: bool = config_option(ServeConfig, "atoms", panel=ATOMS, default=False),
    atoms_threshold: str | None = atoms_threshold_option(ATOMS),
    atoms_evidence: bool = config_option(AtomsConfig, "evidence", "--atoms-evidence/--no-atoms-evidence", panel=ATOMS),
    atoms_tracks: bool = config_option(AtomsConfig, "tracks", "--atoms-tracks/--no-atoms-tracks", panel=ATOMS),
    atoms_weak_z: float = config_option(AtomsConfig, "weak_z", "--atoms-weak-z", panel=ATOMS),
    hop_px: float = config_option(AtomsConfig, "hop_px", panel=ATOMS),
    track_max_disp: float = config_option(AtomsConfig, "track_max_disp", panel=ATOMS),
    hop_confirm: int = config_option(AtomsConfig, "hop_confirm", panel=ATOMS),
    guard: bool = typer.Option(
        True, "--guard/--no-guard", rich_help_panel=GUARD,
        help="Compare the stream with what the model card says its training movie held (density, width and counts "
        "of atoms, a lattice) and warn in the log, stats and monitor when it does not fit; and compute each frame's "
        "unexplained signal (raw counts the denoised frame leaves unexplained). docs/protocol.md.",
    ),
    guard_window: int = config_option(GuardConfig, "window", panel=GUARD),
    guard_interval: float = config_option(GuardConfig, "interval", panel=GUARD),
    unexplained_rate: float = config_option(GuardConfig, "unexplained_rate", panel=GUARD),
    score_rate: float = config_option(GuardConfig, "score_rate", panel=GUARD),
    curve_secret: Path | None = config_option(SecurityConfig, "curve_secret", panel=SECURITY),
    curve_allow: Path | None = config_option(SecurityConfig, "curve_allow", panel=SECURITY),
    source_curve_server_key: Path | None = config_option(
        SecurityConfig, "source_server_key", "--source-curve-server-key", panel=SECURITY
    ),
    view: bool = typer.Option(False, help="Also open the live monitor (the viewer extra).", rich_help_panel=VIEWER),
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING, ERROR.", rich_help_panel=VIEWER),
) -> None:
    """Denoise a detector stream live and publish denoised frames, raw frames, stats (and atoms)."""
    from ..daemon import Daemon

    setup_logging(log_level)
    fields, given = atoms_fields(
        ctx, atoms_evidence=atoms_evidence, atoms_tracks=atoms_tracks, atoms_weak_z=atoms_weak_z, hop_px=hop_px,
        track_max_disp=track_max_disp, hop_confirm=hop_confirm,
    )
    atoms_cfg = atoms_config(atoms, atoms_threshold, given=given, **fields)
    if record is None and record_raw:
        raise LivedenoiseError("--record-raw needs --record DIR")
    if source_format.strip().lower() == "merlin":
        dectris, merlin = None, merlin_config(source, scan, annulus, centre, mask, channel, dectris_stream)
    else:
        dectris, merlin = dectris_config(source_format, scan, annulus, centre, mask, channel, dectris_stream), None
    cfg = ServeConfig(
        model=model_path(model), source=source, publish=publish, pull=pull, dectris=dectris, merlin=merlin,
        push_output=push_output, pipeline_cpus=parse_cpus(pipeline_cpus), realtime=realtime,
        trim_interval=trim_interval,
        queue=QueueConfig(lossless=lossless, capacity=queue, max_wait_ms=max_wait_ms, max_age_ms=max_age_ms),
        engine=EngineConfig(
            provider=provider, max_batch=max_batch, max_batch_pixels=max_batch_pixels, threads=threads, spin=spin,
            fp16=fp16, cuda_graph=cuda_graph, trt_cache=trt_cache, shapes=parse_shapes(warmup_size),
        ),
        recording=None if record is None else RecordingConfig(
            record, raw=record_raw, chunk_frames=record_chunk, chunk_seconds=record_chunk_seconds
        ),
        atoms=atoms_cfg,
        security=SecurityConfig(curve_secret, curve_allow, source_curve_server_key),
        guard=GuardConfig(window=guard_window, interval=guard_interval, unexplained_rate=unexplained_rate,
                          score_rate=score_rate)
        if guard else None,
    )
    daemon = Daemon(cfg)
    viewer = launch_viewer(daemon.publish_address) if view else None
    try:
        code = daemon.run()
    finally:
        stop_child(viewer)
    raise typer.Exit(code)


#: The demo's model: the shipped self-supervised generalist, which runs live where there is no GPU
#: (faster than ``rt`` on a CPU) and, on the demo's stream, beats the causal filter the guard
#: measures it against (``rt`` does not: the guard would say so in every status line).
DEMO_MODEL = "general"


@app.command(rich_help_panel=PANEL)
def demo(
    ctx: typer.Context,
    model: Path | None = model_option(default_note=f" Default here: {DEMO_MODEL}, which keeps up with 150 fps on 2 CPU cores."),
    fps: float = config_option(ReplayConfig, "fps"),
    size: int = config_option(ReplayConfig, "size"),
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0: until Ctrl-C).")] = 0.0,
    publish: str = config_option(ServeConfig, "publish", default="tcp://127.0.0.1:*"),
    provider: str | None = config_option(EngineConfig, "provider"),
    view: Annotated[bool, typer.Option(help="Open the live monitor when it can run here.")] = True,
    atoms: bool = config_option(ServeConfig, "atoms", default=True),
    atoms_threshold: str | None = atoms_threshold_option(),
    atoms_evidence: bool = config_option(AtomsConfig, "evidence", "--atoms-evidence/--no-atoms-evidence"),
    atoms_tracks: bool = config_option(AtomsConfig, "tracks", "--atoms-tracks/--no-atoms-tracks"),
    atoms_weak_z: float = config_option(AtomsConfig, "weak_z", "--atoms-weak-z"),
    hop_px: float = config_option(AtomsConfig, "hop_px"),
    track_max_disp: float = config_option(AtomsConfig, "track_max_disp"),
    hop_confirm: int = config_option(AtomsConfig, "hop_confirm"),
) -> None:
    """Synthetic detector -> serve (shipped model, atom finding) -> live monitor, or a status line per second."""
    from ..daemon import Daemon
    from ..sim import Replayer

    setup_logging("WARNING")
    fields, given = atoms_fields(
        ctx, atoms_evidence=atoms_evidence, atoms_tracks=atoms_tracks, atoms_weak_z=atoms_weak_z, hop_px=hop_px,
        track_max_disp=track_max_disp, hop_confirm=hop_confirm,
    )
    atoms_cfg = atoms_config(atoms, atoms_threshold, given=given, **fields)
    path = model_path(model if model is not None else Path(DEMO_MODEL))
    replayer = Replayer(
        ReplayConfig(synthetic=True, fps=fps, size=size, bind="tcp://127.0.0.1:*", wait_subscriber=10.0)
    )
    try:
        daemon = Daemon(ServeConfig(
            model=path, source=replayer.endpoint, publish=publish,
            engine=EngineConfig(provider=provider, shapes=((size, size),)), atoms=atoms_cfg,
        ))
    except BaseException:
        replayer.close()
        raise
    stop = threading.Event()
    viewer = None
    replay_thread = threading.Thread(target=replayer.run, name="ld-replay", daemon=True)
    with stop_on_signals(lambda _signum: stop.set()):
        try:
            daemon.start()
            replay_thread.start()
            address = daemon.publish_address
            typer.echo(
                f"demo: synthetic {size}x{size} frames at {fps:g} fps -> {daemon.engine.name} on "
                f"{daemon.engine.provider}{' + atoms' if atoms_cfg else ''} -> {address}  (Ctrl-C stops)"
            )
            viewer = launch_viewer(address) if view else None
            deadline = time.monotonic() + duration if duration > 0 else float("inf")
            if viewer is not None:
                while not stop.is_set() and viewer.poll() is None and time.monotonic() < deadline:
                    stop.wait(0.2)
            else:
                _print_stats(address, stop, deadline)
        finally:
            daemon.stop()  # first: the detector going away is not news
            replayer.stop()
            if replay_thread.is_alive():
                replay_thread.join(5)
            stop_child(viewer)


def _print_stats(address: str, stop: threading.Event, deadline: float) -> None:
    """Subscribe to ``stats`` and print one line per second until ``stop`` or ``deadline``."""
    import msgpack
    import zmq

    from ..protocol import TOPIC_STATS, status_line

    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC_STATS)
    sub.connect(address)
    last_print = 0.0
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            if not sub.poll(200):
                continue
            parts = sub.recv_multipart()
            now = time.monotonic()
            if now - last_print >= 1.0 and len(parts) == 2:
                typer.echo(status_line(msgpack.unpackb(parts[1])))
                last_print = now
    finally:
        sub.close()
