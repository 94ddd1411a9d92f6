"""What ``serve`` is configured with: :class:`ServeConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LivedenoiseError
from ..protocol import DEFAULT_LIMITS, Limits

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
    record: Path | None = None  # write every denoised frame here (livedenoise.recording)
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
