"""What ``serve`` is configured with, grouped by concern.

:class:`ServeConfig` holds the wiring (model, addresses) and one group per concern: the input's
format (:class:`~livedenoise.detectors.DectrisConfig` for a DECTRIS detector,
:class:`~livedenoise.detectors.MerlinConfig` for a Merlin, each declared with its detector; else the
livedenoise protocol), the queue between receiving and inference (:class:`QueueConfig`), the engine
(:class:`~livedenoise.engine.EngineConfig`), recording (:class:`~livedenoise.recording.RecordingConfig`,
beside the recorder, a layer below), atoms, the guard and security; ``None`` for an optional stage
means it is off; each side stage is built from its group. Each field's help text is declared once,
with the field (:func:`~livedenoise._options.option`), and shown by ``serve --help``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .._options import option
from ..analysis import HOP_DISTANCE, MAX_LINK, WEAK_Z
from ..detectors import DectrisConfig, MerlinConfig
from ..engine import EngineConfig
from ..errors import LivedenoiseError
from ..protocol import DEFAULT_LIMITS, Limits
from ..recording import RecordingConfig

DEFAULT_SOURCE = "tcp://127.0.0.1:5555"
DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"


@dataclass(slots=True)
class QueueConfig:
    """The bounded queue between the receiver and inference, and how batches are taken from it."""

    lossless: bool = option(False, "Never drop a frame: hold the detector back instead (implies --pull).")
    capacity: int = option(64, "Frames waiting for inference at most (live mode drops the oldest).")
    max_wait_ms: float = option(
        0.0, "Longest a frame waits for its batch to fill, in ms. 0: a batch is what is queued; frames that arrive "
        "during a run are batched anyway, and a wait idles inference (at 150 fps: 2 ms on every frame's latency, "
        "and lost capacity on a busy CPU, docs/benchmarks.md).",
    )
    max_age_ms: float | None = option(
        500.0, "Live mode: drop queued frames older than this (ms), never the newest (0: no limit)."
    )

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.max_wait_ms < 0:
            raise LivedenoiseError("--queue must be at least 1 and --max-wait-ms at least 0")
        if not self.max_age_ms:
            self.max_age_ms = None


@dataclass(slots=True)
class AtomsConfig:
    """``--atoms``: the atoms of each denoised frame, published on the ``atoms`` topic."""

    threshold: float = option(
        0.4,
        "Minimum peak height above the background, in denoised units where an atom peaks near 1; "
        "or 'N%': that share of each frame's highest peak.",
    )
    relative: bool = option(False, "The threshold is a share of each frame's highest peak ('N%' on the command line).")
    evidence: bool = option(
        True,
        "Test each atom against the raw frame's counts (an atom of the expected profile against background only) "
        "and publish its evidence z-score, accumulated along its track; the raw frame must be in detector counts.",
    )
    tracks: bool = option(
        True, "Link each frame's atoms to the previous frames' into tracks (ids published with the atoms) and publish "
        "hops on 'hops'.",
    )
    weak_z: float = option(
        WEAK_Z, "An atom whose evidence z-score is below this is weakly supported ('weak' on 'atoms', "
        "'atoms_weak_last' in stats).",
    )
    hop_px: float = option(HOP_DISTANCE, "A tracked atom that moves more than this many pixels between two frames hops.")
    track_max_disp: float = option(
        MAX_LINK, "Longest link of a track between two frames, in pixels: above the longest hop to follow, below the "
        "spacing of atoms.",
    )
    hop_confirm: int = option(
        1, "Frames that must confirm a hop (the atom seen again where it landed, its old site empty) before it is "
        "published, with the atoms of the confirming frame; 0: publish every jump at once (more false hops).",
    )

    def __post_init__(self) -> None:
        if not (0 <= self.threshold <= (1 if self.relative else float("inf"))):
            shown = f"{self.threshold:.0%}" if self.relative else f"{self.threshold:g}"
            raise LivedenoiseError(f"--atoms-threshold {shown}: must be at least 0, and a percentage at most 100%")
        if not math.isfinite(self.weak_z):
            raise LivedenoiseError(f"--atoms-weak-z {self.weak_z}: must be a finite number")
        if not 0 <= self.hop_confirm <= 100:
            raise LivedenoiseError(f"--hop-confirm {self.hop_confirm}: must be 0 to 100 frames")
        if not (0 < self.track_max_disp < 1e4 and 0 < self.hop_px < self.track_max_disp):
            raise LivedenoiseError(
                f"--hop-px {self.hop_px:g}, --track-max-disp {self.track_max_disp:g}: need 0 < hop < max displacement"
                " (a track cannot follow a longer hop)"
            )


@dataclass(slots=True)
class GuardConfig:
    """The guard (issues 19, 24): does the model beat the classical causal filter on the stream
    (measured without ground truth), does the stream look like the model's training data, and what
    do the denoised frames leave unexplained in the raw ones (:class:`~livedenoise.daemon.StreamGuard`)."""

    window: int = option(32, "Guard: raw frames of the stream averaged for each estimate of what it shows.")
    interval: float = option(
        1.0, "Guard: seconds between estimates (one costs ~20 ms at 128², in a low-priority thread)."
    )
    unexplained_rate: float = option(
        10.0, "Guard: frames per second at most whose unexplained signal is computed (~1 ms each at 128²; a sample "
        "is enough for a running figure, and leaves a 2-core CPU to inference); 0: none.",
    )
    score_rate: float = option(
        10.0, "Guard: frames per second at most scored without ground truth, the model's output against a bank of "
        "causal filters' (~5 ms each at 128², at most 15 % of a core): the score in stats and the measured verdict; 0: none.",
    )

    def __post_init__(self) -> None:
        if not 1 <= self.window <= 1024:
            raise LivedenoiseError(f"--guard-window {self.window}: must be 1 to 1024 frames")
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise LivedenoiseError(f"--guard-interval {self.interval}: must be a positive number of seconds")
        if not (math.isfinite(self.unexplained_rate) and self.unexplained_rate >= 0):
            raise LivedenoiseError(f"--unexplained-rate {self.unexplained_rate}: must be 0 or more frames per second")
        if not (math.isfinite(self.score_rate) and self.score_rate >= 0):
            raise LivedenoiseError(f"--score-rate {self.score_rate}: must be 0 or more frames per second")


@dataclass(slots=True)
class SecurityConfig:
    """CurveZMQ (:mod:`livedenoise.security`): the output is a CURVE server, the input a client."""

    curve_secret: Path | None = option(
        None, "CURVE: this program's key pair, a NAME.key_secret file from `livedenoise keys`."
    )
    curve_allow: Path | None = option(
        None, "CURVE: only clients with these public keys may connect (a .key file or a directory)."
    )
    source_server_key: Path | None = option(
        None, "CURVE: the detector's public key (NAME.key); encrypts the input."
    )

    def __post_init__(self) -> None:
        if self.curve_allow is not None and self.curve_secret is None:
            raise LivedenoiseError("--curve-allow needs --curve-secret (the daemon's own key pair)")


@dataclass(slots=True)
class ServeConfig:
    """Everything ``serve`` needs: the wiring, then one group per concern."""

    model: Path = option(help="ONNX model with a livedenoise model card.")
    source: str = option(DEFAULT_SOURCE, "Detector address to connect to.")
    publish: str = option(DEFAULT_PUBLISH, "Address to bind for the denoised, raw, stats and atoms topics (PUB).")
    push_output: str | None = option(
        None,
        "Also bind a PUSH socket here for one consumer that must get every denoised frame: sent blocking, "
        "so a slow consumer holds the daemon back (and, with --lossless, the detector) instead of losing frames.",
    )
    pull: bool = option(False, "Connect a PULL socket (the detector binds PUSH) instead of SUB.")
    dectris: DectrisConfig | None = option(
        None, "A DECTRIS detector's stream (implies pull: the detector binds PUSH); None: the livedenoise protocol."
    )
    merlin: MerlinConfig | None = option(
        None, "A Quantum Detectors Merlin's data port (source: tcp://HOST:PORT); None: the livedenoise protocol."
    )
    stats_interval: float = option(0.5, "Seconds between stats messages.")
    trim_interval: float = option(
        10.0,
        "Seconds between returns of the heap's free pages to the OS (glibc malloc_trim): the frames of a backlog, "
        "once freed, would otherwise stay in serve's RSS for good (docs/reliability.md). 0: never.",
    )
    pipeline_cpus: tuple[int, ...] = option(
        (),
        "Linux: run the receive, infer and publish threads on these CPUs and the rest of serve (libzmq's I/O, "
        "onnxruntime's pool) on the others. The three take turns on the GIL; on one CPU they hand over without "
        "waking another (docs/benchmarks.md: the daemon's ceiling at 128² went from ~7,800 to ~11,000 frames/s).",
    )
    realtime: int | None = option(
        None,
        "Linux: run all of serve's threads (onnxruntime's and libzmq's included) under real-time round-robin "
        "scheduling at this priority (1-99), ahead of every ordinary job: on a shared machine the CPU queue is "
        "where serve's latency stalls come from, and a lower nice value does not remove them (docs/benchmarks.md). "
        "The kernel keeps 5 % of the CPU for the rest. Needs root, CAP_SYS_NICE or an RLIMIT_RTPRIO allowance.",
    )
    limits: Limits = option(help="Caps on detector messages, checked before allocation.", factory=lambda: DEFAULT_LIMITS)
    queue: QueueConfig = option(help="The frame queue.", factory=QueueConfig)
    engine: EngineConfig = option(help="The inference engine.", factory=EngineConfig)
    recording: RecordingConfig | None = option(None, "Recording; None: off.")
    atoms: AtomsConfig | None = option(
        None, "Find the atoms of each denoised frame; publish their positions and count on 'atoms'."
    )
    security: SecurityConfig = option(help="CURVE encryption and authentication.", factory=SecurityConfig)
    guard: GuardConfig | None = option(
        help="Warn when the stream does not look like the model's training data; None: off.", factory=GuardConfig
    )

    def __post_init__(self) -> None:
        if self.dectris is not None and self.merlin is not None:
            raise LivedenoiseError("one source format: dectris or merlin")
        if self.queue.lossless or self.dectris is not None:
            self.pull = True  # lossless needs back-pressure, which only PUSH/PULL gives; DECTRIS binds PUSH
        if self.realtime is not None and not 1 <= self.realtime <= 99:
            raise LivedenoiseError(f"--realtime {self.realtime}: must be a priority from 1 to 99")
        if not self.trim_interval >= 0:
            raise LivedenoiseError(f"trim interval {self.trim_interval}: must be 0 (never) or more seconds")
        if any(type(c) is not int or c < 0 for c in self.pipeline_cpus):
            raise LivedenoiseError(f"--pipeline-cpus {self.pipeline_cpus}: expected CPU numbers like 0 or 2,3")
