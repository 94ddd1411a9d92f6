"""``serve``: source -> batcher -> engine -> sink, each stage in its own thread.

::

    detector --ZMQ--> [receiver thread] --FrameQueue--> [inference thread] --batches--> [publisher thread] --ZMQ PUB-->
                       source.Source     batcher         engine.Engine                   sink.Publisher

Receiving, inference and publishing never wait for each other except through the two bounded
queues: live mode drops the oldest queued frames when inference falls behind (counted as
``dropped``); lossless mode blocks the receiver instead, and the PULL socket's high-water mark
then holds the detector back.

Shutdown (:meth:`Daemon.stop`, or SIGINT/SIGTERM under :meth:`Daemon.run`): receiving stops, what
is queued is denoised and published, the recording (``record``) is written and closed, the sockets
close, exit code 0. A second signal exits at once.

Recording (``record``, see :mod:`livedenoise.recorder`) hangs off the publisher as a hook and
writes in its own thread; so does atom finding (``atoms``, :class:`~livedenoise.sink.AtomFinder`),
which skips frames rather than fall behind and publishes on the ``atoms`` topic.
CURVE (``curve_secret``, ``curve_allow``, ``source_curve_server_key``, see
:mod:`livedenoise.security`): the PUB output is a CURVE server, the input a CURVE client.

Examples
--------
>>> daemon = Daemon(ServeConfig(model=Path("m.onnx"), source="tcp://127.0.0.1:5555"))  # doctest: +SKIP
>>> daemon.start(); ...; daemon.stop()                                                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from .batcher import FrameQueue
from .engine import Engine, EngineConfig
from .errors import LivedenoiseError
from .protocol import DEFAULT_LIMITS, Limits
from .sink import AtomFinder, Publisher, Stats
from .source import LogThrottle, Received, Source

log = logging.getLogger("livedenoise.daemon")

DEFAULT_SOURCE = "tcp://127.0.0.1:5555"
DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"


@dataclass(slots=True)
class ServeConfig:
    """Everything ``serve`` needs; the CLI options map one to one onto these fields."""

    model: Path
    source: str = DEFAULT_SOURCE
    publish: str = DEFAULT_PUBLISH
    pull: bool = False  # PULL instead of SUB (detectors that bind PUSH)
    lossless: bool = False  # never drop: block the receiver, PULL's HWM holds the detector back
    max_batch: int = 8
    max_wait_ms: float = 2.0
    queue_size: int = 64  # frames waiting for inference, at most
    max_age_ms: float | None = 500.0  # live mode: drop queued frames older than this (never the newest)
    provider: str | None = None  # None: CUDA where a session gets it, else CPU
    threads: int = 0  # onnxruntime intra-op threads (0: one per core)
    spin: bool = False  # onnxruntime threads spin-wait between runs (see engine.Engine)
    max_batch_pixels: int = 1 << 20  # and at most this many padded pixels per run (bounds memory)
    fp16: bool = False  # GPU: float16 model, kept only if it matches fp32 (engine.EngineConfig)
    cuda_graph: bool = False  # GPU: one CUDA graph for the warm-up shape
    trt_cache: Path | None = None  # TensorRT engine cache folder (--provider tensorrt)
    warmup_shape: tuple[int, int] | None = (128, 128)
    stats_interval: float = 0.5  # seconds between stats messages
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    record: Path | None = None  # write every denoised frame here (livedenoise.recorder)
    record_raw: bool = False  # ... and every raw frame
    record_chunk_frames: int = 100
    record_chunk_seconds: float = 1.0
    curve_secret: Path | None = None  # this daemon's key pair (NAME.key_secret)
    curve_allow: Path | None = None  # PUB output: only these public keys (a .key file or a dir of them)
    source_curve_server_key: Path | None = None  # input: the detector's public key (CURVE client)
    atoms: bool = False  # find the atoms of each denoised frame, publish them on b"atoms"
    atoms_threshold: float = 0.4  # peak height above the background, denoised units ([0, 1]: atom ~1)
    atoms_relative: bool = False  # ... or, True: atoms_threshold x the frame's highest peak

    def __post_init__(self) -> None:
        if self.lossless:
            self.pull = True  # lossless needs back-pressure, which only PUSH/PULL gives
        if self.max_batch < 1 or self.queue_size < 1 or self.max_wait_ms < 0:
            raise LivedenoiseError("--max-batch and --queue must be at least 1, --max-wait-ms at least 0")
        if self.curve_allow is not None and self.curve_secret is None:
            raise LivedenoiseError("--curve-allow needs --curve-secret (the daemon's own key pair)")
        if self.record_raw and self.record is None:
            raise LivedenoiseError("--record-raw needs --record DIR")
        if not (0 <= self.atoms_threshold <= (1 if self.atoms_relative else float("inf"))):
            shown = f"{self.atoms_threshold:.0%}" if self.atoms_relative else f"{self.atoms_threshold:g}"
            raise LivedenoiseError(f"--atoms-threshold {shown}: must be at least 0, and a percentage at most 100%")


class Daemon:
    """The live pipeline. Construction loads the model and binds/connects the sockets, so a bad
    model or a port in use fails here (as :class:`~livedenoise.errors.LivedenoiseError`)."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.engine = Engine(
            config.model,
            EngineConfig(
                provider=config.provider, max_batch=config.max_batch, max_batch_pixels=config.max_batch_pixels,
                threads=config.threads, spin=config.spin, fp16=config.fp16, cuda_graph=config.cuda_graph,
                trt_cache=config.trt_cache, shapes=(config.warmup_shape,) if config.warmup_shape else (),
            ),
        )
        max_age = None if config.max_age_ms is None else config.max_age_ms / 1e3
        self.queue: FrameQueue[Received] = FrameQueue(config.queue_size, lossless=config.lossless, max_age=max_age)
        self.ctx = zmq.Context()
        self.curve = None
        self.recorder = None
        self.atoms: AtomFinder | None = None
        try:
            from . import security

            if config.curve_secret is not None:
                self.curve = security.CurveServer(self.ctx, config.curve_secret, config.curve_allow)
            configure_source = None
            if config.source_curve_server_key is not None:
                key, secret = config.source_curve_server_key, config.curve_secret

                def configure_source(sock):
                    security.curve_client(sock, key, secret)

            # lossless: a small receive HWM, so back-pressure reaches the detector quickly
            rcvhwm = max(2, config.max_batch) if config.lossless else 1000
            self.source = Source(
                self.ctx, config.source, self.queue, pull=config.pull, rcvhwm=rcvhwm, limits=config.limits,
                configure=configure_source,
            )
            self.stats = Stats(
                model=self.engine.name, provider=self.engine.provider, source=self.source, frame_queue=self.queue
            )
            try:
                self.publisher = Publisher(
                    self.ctx, config.publish, self.stats, interval=config.stats_interval,
                    configure=self.curve.apply if self.curve else None,
                )
            except Exception:
                self.source.socket.close(linger=0)
                raise
            if config.record is not None:
                from .recorder import Recorder

                try:
                    self.recorder = Recorder(
                        config.record, raw=config.record_raw, lossless=config.lossless,
                        chunk_frames=config.record_chunk_frames, chunk_seconds=config.record_chunk_seconds,
                    )
                except Exception:
                    self.source.socket.close(linger=0)
                    self.publisher.socket.close(linger=0)
                    raise
                self.publisher.hooks.append(self.recorder.submit)
                self.publisher.finishers.append(self.recorder.close)  # the last stats count it all
                self.stats.extras.append(self.recorder.counters)
            if config.atoms:
                self.atoms = AtomFinder(  # two batches may wait: a batch is handed over at once
                    self.publisher, threshold=config.atoms_threshold, relative=config.atoms_relative,
                    backlog=2 * config.max_batch,
                )
                self.publisher.hooks.append(self.atoms.submit)
                self.publisher.finishers.append(self.atoms.close)  # its last atoms before the last stats
                self.stats.extras.append(self.atoms.counters)
        except Exception:
            if self.curve is not None:
                self.curve.stop()
            self.ctx.term()
            raise
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._failures = LogThrottle(log)
        self._signals = 0

    @property
    def publish_address(self) -> str:
        """The bound publish endpoint (with the real port if ``:*`` or ``:0`` was asked)."""
        return self.publisher.last_endpoint

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        cfg = self.config
        if cfg.warmup_shape:
            self.engine.warm_up(cfg.warmup_shape)
        log.info(
            "serving %s: %s %s -> PUB %s; provider %s; max batch %d, max wait %.1f ms, queue %d%s",
            self.engine.name,
            "PULL" if cfg.pull else "SUB",
            cfg.source,
            self.publish_address,
            self.engine.provider,
            cfg.max_batch,
            cfg.max_wait_ms,
            cfg.queue_size,
            ", lossless" if cfg.lossless else "",
        )
        if self.recorder is not None:
            self.recorder.start()
            log.info("recording %s frames to %s", "denoised and raw" if cfg.record_raw else "denoised", cfg.record)
        if self.atoms is not None:
            self.atoms.start()
            thr = f"{cfg.atoms_threshold:.0%} of the highest" if cfg.atoms_relative else f"{cfg.atoms_threshold:g}"
            log.info("finding atoms: peaks higher than %s above the background, published on 'atoms'", thr)
        for name, target in (
            ("ld-publish", self.publisher.run),
            ("ld-infer", self._infer_loop),
            ("ld-receive", self.source.run),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop receiving, drain the queue through inference and publishing, close. Idempotent."""
        if self._stopped.is_set():
            return
        self.source.stop()
        if not self._threads:  # never started: nothing to drain
            self.source.socket.close(linger=0)
            self.publisher.socket.close(linger=0)
        for thread in self._threads:
            thread.join(timeout)
        if self.recorder is not None:
            self.recorder.close(timeout)  # after the publisher: every published frame is written
        if self.atoms is not None:
            self.atoms.close(timeout)  # normally done already, by the publisher
        if all(not t.is_alive() for t in self._threads):
            if self.curve is not None:
                self.curve.stop()
            self.ctx.term()  # every socket is closed by now
        else:
            log.error("pipeline threads did not finish within %s s", timeout)
        self._threads.clear()
        self._stopped.set()
        log.info("stopped: %s", self.stats.snapshot())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped; True if it has."""
        return self._stopped.wait(timeout)

    def run(self) -> int:
        """Start, serve until SIGINT/SIGTERM, drain, return exit code 0 (main thread only)."""
        stop_requested = threading.Event()

        def on_signal(signum, _frame):
            self._signals += 1
            if self._signals > 1:
                os._exit(128 + signum)  # second signal: leave at once
            log.info("signal %d: draining (send it again to exit at once)", signum)
            stop_requested.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not stop_requested.wait(0.2):
                if not all(t.is_alive() for t in self._threads):
                    log.error("a pipeline thread ended unexpectedly; stopping")
                    break
            self.stop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 0

    # ------------------------------------------------------------------ inference thread

    def _infer_loop(self) -> None:
        cfg = self.config
        max_wait = cfg.max_wait_ms / 1e3
        engine, stats, publisher = self.engine, self.stats, self.publisher
        try:
            # the source closes the queue when it stops; get_batch returns None once drained
            while True:
                batch = self.queue.get_batch(cfg.max_batch, max_wait, timeout=0.1)
                if batch is None:
                    break
                if not batch:
                    continue
                try:
                    result = engine.infer([r.frame.data for r in batch], [r.frame.series_id for r in batch])
                except Exception as exc:  # a bug or an unexpected onnxruntime state: count, go on
                    stats.failed += len(batch)
                    self._failures.warning("inference failed on %d frames: %s", len(batch), exc)
                    continue
                for _, kind, message in result.errors:
                    if kind == "malformed":
                        stats.malformed_pixels += 1
                    else:
                        stats.failed += 1
                    self._failures.warning("frame %s: %s", kind, message)
                if result.errors:
                    done = [(r, o) for r, o in zip(batch, result.outputs, strict=True) if o is not None]
                else:
                    done = list(zip(batch, result.outputs, strict=True))
                if done:
                    publisher.submit(done)
        finally:
            publisher.finish()
