"""CLI commands of the live pipeline: ``replay``, ``serve``, ``demo``, ``denoise``, ``css``,
``inspect`` (a recording) and ``keys`` (a CURVE key pair).

Heavy imports (onnxruntime, zmq, tifffile) happen inside the commands, so ``livedenoise --help``
stays fast; torch and Qt are never imported here (the viewer runs as a child process).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .._signals import stop_on_signals
from ..errors import LivedenoiseError

log = logging.getLogger("livedenoise")

ModelOpt = Annotated[
    Optional[Path],
    typer.Option("--model", "-m", help="ONNX model with a livedenoise model card, or a shipped one: default (1 frame), rt (1 frame, ~2x faster on a CPU), temporal (3 frames), lowdose (5 frames, ~100 e-/px)."),
]
CurveSecretOpt = Annotated[
    Optional[Path],
    typer.Option(help="CURVE: this program's key pair, a NAME.key_secret file from `livedenoise keys`."),
]
CurveAllowOpt = Annotated[
    Optional[Path],
    typer.Option(help="CURVE: only clients with these public keys may connect (a .key file or a directory)."),
]
ProviderOpt = Annotated[
    Optional[str],
    typer.Option(help="onnxruntime provider: cpu, cuda, tensorrt (default: CUDA if usable, else CPU)."),
]
AtomsOpt = Annotated[
    bool, typer.Option(help="Find the atoms of each denoised frame; publish positions and count on 'atoms'.")
]
AtomsThresholdOpt = Annotated[
    Optional[str],
    typer.Option(
        help="With --atoms: minimum peak height above the background, in denoised units where an atom "
        "peaks near 1 (default 0.4); or 'N%': that share of each frame's highest peak."
    ),
]


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def viewer_unavailable_reason() -> str | None:
    """Why the live monitor cannot open here (None if it can): no viewer extra, or no display."""
    if importlib.util.find_spec("pyqtgraph") is None:
        return "the viewer is not installed (pip install 'livedenoise[viewer]')"
    # macOS and Windows always have a desktop; on Linux an offscreen platform shows nobody anything
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display ($DISPLAY / $WAYLAND_DISPLAY unset)"
    return None


def launch_viewer(address: str) -> subprocess.Popen | None:
    """Start ``livedenoise view --connect address`` as a child process, if it can run here."""
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


def _parse_shape(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise LivedenoiseError(f"frame size {text!r}: expected HEIGHTxWIDTH, like 128x128") from None
    return h, w


def atoms_config(atoms: bool, threshold: str | None):
    """``--atoms`` and ``--atoms-threshold`` as an :class:`~livedenoise.daemon.AtomsConfig` (None: off).

    ``"0.4"`` is an absolute height, ``"30%"`` a share of each frame's highest peak.
    """
    from ..daemon import AtomsConfig

    if threshold is None:
        return AtomsConfig() if atoms else None
    if not atoms:
        raise LivedenoiseError("--atoms-threshold needs --atoms")
    relative = threshold.strip().endswith("%")
    try:
        value = float(threshold.strip().removesuffix("%"))
    except ValueError:
        raise LivedenoiseError(f"--atoms-threshold {threshold!r}: expected a number (0.4) or a percentage (30%)") from None
    return AtomsConfig(threshold=value / 100 if relative else value, relative=relative)


def _model_path(model: Path | None) -> Path:
    """``--model``: a file, or the name of a shipped model (``default``, ``rt``, ``temporal``, ``lowdose``), or none."""
    from ..engine import default_model_path

    if model is None:
        return default_model_path()
    if len(model.parts) == 1 and model.suffix == "" and not model.exists():
        shipped = default_model_path().with_name(f"{model}.onnx")
        if shipped.is_file():
            return shipped
    return model


def format_stats(s: dict) -> str:
    """One status line from a ``stats`` header."""

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    return (
        f"fps in {num(s.get('fps_in'), '6.1f')}  out {num(s.get('fps_out'), '6.1f')} | "
        f"latency p50 {num(s.get('latency_ms_p50'), '6.1f')} p99 {num(s.get('latency_ms_p99'), '6.1f')} ms | "
        f"dropped {s.get('dropped', 0)}  malformed {s.get('malformed', 0)}  failed {s.get('failed', 0)} | "
        f"CSS {num(s.get('css'), '.3f')} | {s.get('provider', '')}"
        + (f" | atoms {num(s.get('atoms_last'), 'd')} ({num(s.get('atoms_ms_p50'), '.1f')} ms)" if "atoms_last" in s else "")
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command()
    def replay(
        tiff: Annotated[Optional[Path], typer.Argument(help="Multi-page TIFF to stream.")] = None,
        synthetic: Annotated[bool, typer.Option(help="Stream simulated noisy HAADF frames instead of a file.")] = False,
        fps: Annotated[float, typer.Option(help="Frames per second (absolute-deadline pacing).")] = 150.0,
        bind: Annotated[str, typer.Option(help="Address to bind, like a detector.")] = "tcp://127.0.0.1:5555",
        loop: Annotated[bool, typer.Option(help="Repeat the file, one series per pass.")] = False,
        push: Annotated[bool, typer.Option(help="Bind PUSH (for serve --pull/--lossless) instead of PUB.")] = False,
        count: Annotated[Optional[int], typer.Option(help="Stop after this many frames.")] = None,
        wait_subscriber: Annotated[
            float, typer.Option(help="PUB: wait up to this many seconds for a subscriber before the first frame.")
        ] = 0.0,
        size: Annotated[int, typer.Option(help="Synthetic frame side in pixels.")] = 128,
        dtype: Annotated[str, typer.Option(help="Synthetic frame dtype.")] = "<u2",
        curve_secret: CurveSecretOpt = None,
        curve_allow: CurveAllowOpt = None,
    ) -> None:
        """Stream a TIFF stack (or --synthetic frames) like a detector: start, frames, end."""
        from ..sim import Replayer, ReplayConfig

        _setup_logging()
        if tiff is None and not synthetic:
            raise LivedenoiseError("give a TIFF file or --synthetic")
        cfg = ReplayConfig(
            path=tiff, synthetic=synthetic, fps=fps, bind=bind, loop=loop, push=push, count=count,
            wait_subscriber=wait_subscriber, size=size, dtype=dtype, curve_secret=curve_secret,
            curve_allow=curve_allow,
        )
        replayer = Replayer(cfg)
        with stop_on_signals(lambda _signum: replayer.stop()):
            log.info("replaying %s at %.1f fps on %s (%s)", tiff or "synthetic frames", fps, replayer.endpoint,
                     "PUSH" if push else "PUB")
            t0 = time.perf_counter()
            sent = replayer.run()
            dt = time.perf_counter() - t0
            log.info("sent %d frames in %.2f s (%.1f fps)", sent, dt, sent / dt if dt > 0 else 0.0)

    @app.command()
    def serve(
        model: ModelOpt = None,
        source: Annotated[str, typer.Option(help="Detector address to connect to.")] = "tcp://127.0.0.1:5555",
        publish: Annotated[str, typer.Option(help="Address to bind for denoised/raw/stats.")] = "tcp://127.0.0.1:5556",
        pull: Annotated[bool, typer.Option(help="Connect a PULL socket (detector binds PUSH) instead of SUB.")] = False,
        lossless: Annotated[
            bool, typer.Option(help="Never drop frames: hold the detector back instead (implies --pull).")
        ] = False,
        max_batch: Annotated[int, typer.Option(help="Largest inference batch.")] = 8,
        max_wait_ms: Annotated[float, typer.Option(help="Longest a frame waits for its batch to fill.")] = 2.0,
        queue: Annotated[int, typer.Option(help="Frames waiting for inference at most (oldest dropped).")] = 64,
        max_age_ms: Annotated[
            float, typer.Option(help="Drop queued frames older than this, never the newest (0: no limit; live mode).")
        ] = 500.0,
        warmup_size: Annotated[
            str, typer.Option(help="Frame size HxW to warm the model up for at start ('' to skip).")
        ] = "128x128",
        provider: ProviderOpt = None,
        threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads (0: one per core).")] = 0,
        spin: Annotated[
            bool, typer.Option(help="Let onnxruntime threads spin between runs (dedicated cores only).")
        ] = False,
        max_batch_pixels: Annotated[
            int, typer.Option(help="At most this many padded pixels per inference run (bounds memory on large frames).")
        ] = 1 << 20,
        fp16: Annotated[
            bool, typer.Option(help="GPU: run the model in float16 if it matches fp32 within tolerance (checked at start).")
        ] = False,
        cuda_graph: Annotated[bool, typer.Option(help="GPU: capture a CUDA graph for the warm-up frame size.")] = False,
        trt_cache: Annotated[
            Optional[Path], typer.Option(help="TensorRT engine cache folder (with --provider tensorrt).")
        ] = None,
        view: Annotated[bool, typer.Option(help="Also open the live monitor (needs the viewer extra).")] = False,
        record: Annotated[
            Optional[Path], typer.Option(help="Record every denoised frame into this directory (crash-safe chunks).")
        ] = None,
        record_raw: Annotated[bool, typer.Option(help="Also record the raw frames (with --record).")] = False,
        record_chunk: Annotated[
            int, typer.Option(help="Frames per recording chunk (a chunk also closes after 1 s).")
        ] = 100,
        curve_secret: CurveSecretOpt = None,
        curve_allow: CurveAllowOpt = None,
        source_curve_server_key: Annotated[
            Optional[Path], typer.Option(help="CURVE: the detector's public key (NAME.key); encrypts the input.")
        ] = None,
        atoms: AtomsOpt = False,
        atoms_threshold: AtomsThresholdOpt = None,
        log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
    ) -> None:
        """Denoise a detector stream live and publish denoised frames, raw frames and stats."""
        from ..daemon import Daemon, QueueConfig, RecordingConfig, SecurityConfig, ServeConfig
        from ..engine import EngineConfig

        _setup_logging(log_level)
        if record_raw and record is None:
            raise LivedenoiseError("--record-raw needs --record DIR")
        if max_batch < 1:
            raise LivedenoiseError("--max-batch must be at least 1")
        shape = _parse_shape(warmup_size)
        cfg = ServeConfig(
            model=_model_path(model), source=source, publish=publish, pull=pull,
            queue=QueueConfig(lossless=lossless, capacity=queue, max_wait_ms=max_wait_ms, max_age_ms=max_age_ms),
            engine=EngineConfig(
                provider=provider, max_batch=max_batch, max_batch_pixels=max_batch_pixels, threads=threads, spin=spin,
                fp16=fp16, cuda_graph=cuda_graph, trt_cache=trt_cache, shapes=(shape,) if shape else (),
            ),
            recording=None if record is None else RecordingConfig(record, raw=record_raw, chunk_frames=record_chunk),
            atoms=atoms_config(atoms, atoms_threshold),
            security=SecurityConfig(curve_secret, curve_allow, source_curve_server_key),
        )
        daemon = Daemon(cfg)
        viewer = launch_viewer(daemon.publish_address) if view else None
        try:
            code = daemon.run()
        finally:
            stop_child(viewer)
        raise typer.Exit(code)

    @app.command()
    def demo(
        model: ModelOpt = None,
        fps: Annotated[float, typer.Option(help="Synthetic detector frame rate.")] = 150.0,
        size: Annotated[int, typer.Option(help="Frame side in pixels.")] = 128,
        duration: Annotated[float, typer.Option(help="Stop after this many seconds (0: until Ctrl-C).")] = 0.0,
        publish: Annotated[str, typer.Option(help="Address the daemon publishes on.")] = "tcp://127.0.0.1:*",
        provider: ProviderOpt = None,
        view: Annotated[bool, typer.Option(help="Open the live monitor when it can run here.")] = True,
        atoms: AtomsOpt = False,
        atoms_threshold: AtomsThresholdOpt = None,
    ) -> None:
        """Synthetic detector -> serve (shipped model) -> live monitor, or a status line per second."""
        from ..daemon import Daemon, ServeConfig
        from ..engine import EngineConfig
        from ..sim import Replayer, ReplayConfig

        _setup_logging("WARNING")
        atoms_cfg = atoms_config(atoms, atoms_threshold)
        model_path = _model_path(model)
        replayer = Replayer(
            ReplayConfig(synthetic=True, fps=fps, size=size, bind="tcp://127.0.0.1:*", wait_subscriber=10.0)
        )
        try:
            daemon = Daemon(ServeConfig(model=model_path, source=replayer.endpoint, publish=publish,
                                        engine=EngineConfig(provider=provider, shapes=((size, size),)),
                                        atoms=atoms_cfg))
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
                    f"{daemon.engine.provider} -> {address}  (Ctrl-C stops)"
                )
                viewer = launch_viewer(address) if view else None
                deadline = time.monotonic() + duration if duration > 0 else float("inf")
                if viewer is not None:
                    while not stop.is_set() and viewer.poll() is None and time.monotonic() < deadline:
                        stop.wait(0.2)
                else:
                    _print_stats(address, stop, deadline)
            finally:
                replayer.stop()
                replay_thread.join(5) if replay_thread.is_alive() else None
                daemon.stop()
                stop_child(viewer)

    @app.command()
    def denoise(
        tiff: Annotated[Path, typer.Argument(help="Multi-page TIFF stack to denoise.")],
        output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the denoised float32 TIFF.")],
        model: ModelOpt = None,
        max_batch: Annotated[int, typer.Option(help="Frames per inference batch.")] = 8,
        provider: ProviderOpt = None,
    ) -> None:
        """Denoise a stack offline; print the mean CSS of input and output.

        The input's CSS is computed after scaling the raw stack to [0, 1] by its own min and max
        (CSS's constants assume that range); the output is already in [0, 1].
        """
        import numpy as np
        import tifffile
        from rich.progress import Progress

        from ..engine import Engine
        from ..analysis import css_series, scale_to_unit
        from ..io import read_movie, to_wire_dtype

        stack = to_wire_dtype(read_movie(tiff), tiff)
        engine = Engine(_model_path(model), provider=provider, max_batch=max_batch)
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

    @app.command("inspect")
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

    @app.command("keys")
    def keys_command(
        name: Annotated[Path, typer.Argument(help="Writes NAME.key (public, to hand out) and NAME.key_secret.")],
    ) -> None:
        """Make a CURVE key pair for encrypted, authenticated streams (--curve-secret, --curve-allow)."""
        from ..security import make_keys

        public, secret = make_keys(name)
        typer.echo(f"public key: {public} (give to peers / --curve-allow)\nsecret key: {secret} (keep private)")

    @app.command("css")
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


def _print_stats(address: str, stop: threading.Event, deadline: float) -> None:
    """Subscribe to ``stats`` and print one line per second until ``stop`` or ``deadline``."""
    import msgpack
    import zmq

    from ..protocol import TOPIC_STATS

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
                typer.echo(format_stats(msgpack.unpackb(parts[1])))
                last_print = now
    finally:
        sub.close()
