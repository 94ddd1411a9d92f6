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

Failure: every stage runs in a :class:`~livedenoise.daemon.PipelineThread`. An exception escaping a
stage's loop (not a per-frame error: those are counted and skipped) stops the pipeline the same
clean way, as far as the surviving stages can drain; :meth:`Daemon.stop` then returns 1 and
:meth:`Daemon.run` raises :class:`~livedenoise.errors.PipelineError`, which ``serve`` prints as
``error: <stage> thread failed: <exception>`` before exiting with code 2.

``push_output``: a PUSH socket for one consumer that must get every denoised frame (see
:mod:`livedenoise.daemon._publish`); the PUB output drops frames for a slow subscriber.

Recording (``record``, see :mod:`livedenoise.recording`) hangs off the publisher as a hook and
writes in its own thread; so does atom finding (``atoms``, :class:`~livedenoise.daemon.AtomFinder`),
which skips frames rather than fall behind and publishes on the ``atoms`` topic, and the guard
(``guard``, :class:`~livedenoise.daemon.StreamGuard`: does the stream fit the model's training
content, what do the denoised frames leave unexplained), which reports in ``stats``.
CURVE (``curve_secret``, ``curve_allow``, ``source_curve_server_key``, see
:mod:`livedenoise.security`): the PUB output is a CURVE server, the input a CURVE client.

Examples
--------
>>> daemon = Daemon(ServeConfig(model=Path("m.onnx"), source="tcp://127.0.0.1:5555"))  # doctest: +SKIP
>>> daemon.start(); ...; daemon.stop()                                                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading

import zmq

from .._signals import stop_on_signals
from .._stage import LogThrottle, PipelineThread, SideStage
from ..detectors import VirtualImage
from ..engine import Engine
from ..errors import PipelineError
from ..protocol import TOPIC_VIRTUAL, encode_published
from ..recording import Recorder
from ._atoms import AtomFinder
from ._config import ServeConfig
from ._guard import StreamGuard
from ._memory import HeapTrimmer
from ._merlin import MerlinSource
from ._publish import Publisher
from ._queue import FrameQueue
from ._receive import Received, Receiver, Source, make_decoder, restarts
from ._stats import CalibrationCheck, Stats
from ._threads import make_realtime, place_pipeline

log = logging.getLogger("livedenoise.daemon")

PIPELINE_STAGES = ("receive", "infer", "publish")  # the threads every frame passes (pipeline_cpus)

class Daemon:
    """The live pipeline. Construction loads the model and binds/connects the sockets, so a bad
    model or a port in use fails here (as :class:`~livedenoise.errors.LivedenoiseError`)."""

    def __init__(self, config: ServeConfig):
        self.config = config
        # before the engine and the ZMQ context start their threads: they inherit the main thread's
        # scheduling and CPUs
        make_realtime(config.realtime)
        self._pipeline_cpus = place_pipeline(config.pipeline_cpus)
        self.engine = Engine(config.model, config.engine)
        q = config.queue
        max_age = None if q.max_age_ms is None else q.max_age_ms / 1e3
        self.queue: FrameQueue[Received] = FrameQueue(q.capacity, lossless=q.lossless, max_age=max_age)
        self.ctx = zmq.Context()
        self.curve = None
        self.recorder: Recorder | None = None
        self.atoms: AtomFinder | None = None
        self.guard: StreamGuard | None = None
        self._side: list[SideStage] = []  # the side stages, hooked to the publisher: recorder, atoms, guard
        try:
            from .. import security

            sec = config.security
            if sec.curve_secret is not None:
                self.curve = security.CurveServer(self.ctx, sec.curve_secret, sec.curve_allow)
            configure_source = None
            if sec.source_server_key is not None:
                key, secret = sec.source_server_key, sec.curve_secret

                def configure_source(sock):
                    security.curve_client(sock, key, secret)

            # lossless: a small receive HWM, so back-pressure reaches the detector quickly
            rcvhwm = max(2, config.engine.max_batch) if q.lossless else 1000
            self.source: Receiver
            if config.merlin is not None:  # a Merlin's data port (TCP, libertem-qd-mpx), not ZeroMQ
                self.source = MerlinSource(config.source, self.queue, config.merlin, limits=config.limits)
            else:
                decoder, max_part = make_decoder(config.dectris, config.limits, config.source)  # None: the livedenoise protocol
                self.source = Source(
                    self.ctx, config.source, self.queue, pull=config.pull, rcvhwm=rcvhwm, limits=config.limits,
                    configure=configure_source, decoder=decoder, max_part=max_part,
                )
            self.stats = Stats(
                model=self.engine.name, provider=self.engine.provider, source=self.source, frame_queue=self.queue
            )
            if config.dectris is not None or config.merlin is not None:
                self.stats.extras.append(self.source.counters)
            self.heap = HeapTrimmer(config.trim_interval)
            if self.heap.active:
                self.stats.extras.append(self.heap.counters)
            try:
                self.publisher = Publisher(
                    self.ctx, config.publish, self.stats, interval=config.stats_interval,
                    configure=self.curve.apply if self.curve else None, push=config.push_output,
                )
            except Exception:
                self.source.close()
                raise
            self.source.on_virtual = self._publish_virtual  # a virtual detector's other images
            if config.push_output is not None:
                self.stats.extras.append(self.publisher.push_counters)
            if self.engine.card.pixel_size_nm is not None:  # frames at another pixel size: warned, counted
                check = CalibrationCheck(self.engine.card.pixel_size_nm)
                self.publisher.calibration_check = check
                self.stats.extras.append(check.counters)
            if config.recording is not None:
                try:
                    self.recorder = Recorder(config.recording, lossless=q.lossless)
                except Exception:
                    self.source.close()
                    self.publisher.close()
                    raise
                self._attach(self.recorder)  # closed before the last stats: they count it all
            if config.atoms is not None:  # two batches may wait: a batch is handed over at once
                self.atoms = AtomFinder(self.publisher, config.atoms, backlog=2 * config.engine.max_batch)
                self._attach(self.atoms)  # its last atoms before the last stats
            if config.guard is not None:
                card = self.engine.card
                self.guard = StreamGuard(
                    card.expects, config.guard, trained_shape=card.frame_shape, trained_pixel_nm=card.pixel_size_nm
                )
                self._attach(self.guard)
            else:
                self.stats.extras.append(lambda: {"guard": "off", "guard_message": "serve --no-guard"})
        except Exception:
            if self.curve is not None:
                self.curve.stop()
            self.ctx.term()
            raise
        self._threads: list[PipelineThread] = []
        self._lock = threading.Lock()
        self._failure: PipelineError | None = None  # the first stage to fail
        self._wake = threading.Event()  # run(): a signal or a failure
        self._stopped = threading.Event()
        self._code = 0
        self._failures = LogThrottle(log)

    def _attach(self, stage: SideStage) -> None:
        """A side stage takes every published frame, closes as the publisher finishes, and reports in stats."""
        self._side.append(stage)
        self.publisher.hooks.append(stage.submit)
        self.publisher.finishers.append(stage.close)
        self.stats.extras.append(stage.counters)

    def _publish_virtual(self, image: VirtualImage) -> None:
        """In the receiver thread: a virtual image beside the denoised one, published as it is on
        ``virtual`` by the publisher thread (``[b"virtual", header, pixels]``; the header names the
        detector)."""
        header = {"series_id": image.series_id, "image_id": image.image_id, "detector": image.name, "index": image.index}
        self.publisher.post(encode_published(TOPIC_VIRTUAL, header, image.data))

    @property
    def publish_address(self) -> str:
        """The bound publish endpoint (with the real port if ``:*`` or ``:0`` was asked)."""
        return self.publisher.last_endpoint

    @property
    def push_address(self) -> str | None:
        """The bound PUSH endpoint (``push_output``), None without one."""
        return self.publisher.push_endpoint

    @property
    def failure(self) -> PipelineError | None:
        """The first pipeline thread that failed, as the error :meth:`run` raises; None if none did."""
        return self._failure

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        cfg = self.config
        if cfg.engine.shapes:
            self.engine.warm_up()
        log.info(
            "serving %s: %s %s -> PUB %s; provider %s; max batch %d, max wait %.1f ms, queue %d%s",
            self.engine.name,
            "PULL" if cfg.pull else "SUB",
            cfg.source,
            self.publish_address,
            self.engine.provider,
            cfg.engine.max_batch,
            cfg.queue.max_wait_ms,
            cfg.queue.capacity,
            ", lossless" if cfg.queue.lossless else "",
        )
        if self.push_address is not None:
            log.info("pushing every denoised frame to one consumer at PUSH %s", self.push_address)
        if self.recorder is not None:
            self.recorder.start(self._spawn)
            rec = cfg.recording
            log.info("recording %s frames to %s", "denoised and raw" if rec.raw else "denoised", rec.directory)
        if self.atoms is not None:
            self.atoms.start(self._spawn)
            thr = f"{cfg.atoms.threshold:.0%} of the highest" if cfg.atoms.relative else f"{cfg.atoms.threshold:g}"
            log.info(
                "finding atoms: peaks higher than %s above the background, published on 'atoms'%s%s", thr,
                "; evidence from the raw counts" if cfg.atoms.evidence else "",
                "; tracks, hops on 'hops'" if cfg.atoms.tracks else "",
            )
        if self.guard is not None:
            self.guard.start(self._spawn)
        self._spawn("publish", self.publisher.run)
        self._spawn("infer", self._infer)
        self._spawn("receive", self.source.run)

    def stop(self, timeout: float | None = 30.0) -> int:
        """Stop receiving, drain the queue through inference and publishing, close. Idempotent.

        Returns 0, or 1 if a pipeline thread failed (:attr:`failure` says which and why) or did
        not finish within ``timeout`` (each join waits that long at most).
        """
        if self._stopped.is_set():
            return self._code
        ended_early = [t.stage for t in self._threads if not t.is_alive()]
        self._request_stop()
        if not self._threads:  # never started: nothing to drain
            self.source.close()
            self.publisher.close()
        for thread in self._threads:
            if thread.stage in PIPELINE_STAGES:
                thread.join(timeout)
        for stage in self._side:  # after the publisher (which closed them already, normally): every
            stage.close(timeout)  # published frame is written, its atoms found
        alive = [t.name for t in self._threads if t.is_alive()]
        if not alive:
            if self.curve is not None:
                self.curve.stop()
            self.ctx.destroy(linger=0)  # the threads closed their sockets (with their linger); any left: now
        else:
            log.error("pipeline threads %s did not finish within %s s", ", ".join(alive), timeout)
        with self._lock:  # every exception is recorded by now: the first one wins over a mere end
            if self._failure is None and ended_early:
                self._failure = PipelineError(ended_early[0])
        self._code = 1 if self._failure is not None or alive else 0
        self._stopped.set()
        log.info("stopped: %s", self.stats.snapshot())
        return self._code

    def run(self) -> int:
        """Start, serve until SIGINT/SIGTERM or a pipeline thread fails, drain, stop (main thread only).

        Returns the exit code of :meth:`stop` (0 after a signal). If a stage failed, raises its
        :class:`~livedenoise.errors.PipelineError` after the clean stop: ``serve`` prints it as one
        ``error:`` line and exits non-zero, so a supervisor (systemd) sees the failure.
        """

        def on_signal(signum: int) -> None:
            log.info("signal %d: draining (send it again to exit at once)", signum)
            self._wake.set()

        with stop_on_signals(on_signal):
            self.start()
            while not self._wake.wait(0.2):
                if not all(t.is_alive() for t in self._threads):
                    break  # a thread ended without an exception: stop() reports it
                self.heap.maybe_trim()
            code = self.stop()
        if self._failure is not None:
            raise self._failure
        return code

    # ------------------------------------------------------------------ thread failures

    def _spawn(self, stage: str, target) -> PipelineThread:
        """Start one stage's thread; an exception escaping it stops the pipeline (:meth:`_on_error`)."""
        cpus = self._pipeline_cpus if stage in PIPELINE_STAGES else frozenset()
        thread = PipelineThread(stage, target, self._on_error, cpus)
        self._threads.append(thread)
        thread.start()
        return thread

    def _on_error(self, thread: PipelineThread) -> None:
        """In the failed thread: keep the first failure and have the rest drain and stop."""
        with self._lock:
            if self._failure is None:
                self._failure = PipelineError(thread.stage, thread.error)
        self._request_stop()

    def _request_stop(self) -> None:
        """Receiving stops (the queue closes behind it, so inference and publishing drain and
        end); a PUSH consumer is waited for only ``push_grace`` more; :meth:`run` wakes up."""
        self.source.stop()
        self.publisher.closing()
        self._wake.set()

    def _infer(self) -> None:
        """The inference thread: :meth:`_infer_loop`. If it dies, nothing will take frames off the
        queue any more: close it, or a lossless receiver would wait for room forever."""
        try:
            self._infer_loop()
        except BaseException:
            self.queue.close()
            raise

    # ------------------------------------------------------------------ inference thread

    def _infer_loop(self) -> None:
        cfg = self.config
        max_wait, max_batch = cfg.queue.max_wait_ms / 1e3, cfg.engine.max_batch
        engine, stats, publisher = self.engine, self.stats, self.publisher
        multi_frame = engine.card.input_frames > 1
        epochs: dict[int, int] = {}  # multi-frame models: series id -> epoch of its last frame
        try:
            # the source closes the queue when it stops; get_batch returns None once drained
            while True:
                batch = self.queue.get_batch(max_batch, max_wait, timeout=0.1)
                if batch is None:
                    break
                if not batch:
                    continue
                try:
                    # a new epoch (start message, series change) restarts the model's window there
                    restart = restarts(batch, epochs) if multi_frame else None
                    result = engine.infer([r.frame.data for r in batch], [r.frame.series_id for r in batch], restart)
                except Exception as exc:  # noqa: BLE001 - a bug or an unexpected onnxruntime state: count, go on
                    stats.failed += len(batch)
                    self._failures.warning("inference failed on %d frames: %s", len(batch), exc)
                    continue
                for _, kind, message in result.errors:
                    if kind == "malformed":
                        stats.nonfinite_frames += 1
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
