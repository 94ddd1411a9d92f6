"""``serve``: the live pipeline, one thread per stage along the physical path of a frame.

::

    detector --ZMQ--> receive --FrameQueue--> infer (engine) --> publish --ZMQ PUB--> viewer, subscribers
                      _receive   _queue                           _publish, _stats
                                                                  hooks: recording, atoms (_atoms), guard (_guard)

The daemon needs numpy, pyzmq, msgpack and onnxruntime only: it never imports torch, Qt, scipy,
:mod:`livedenoise.sim` or :mod:`livedenoise.testing` (checked by import-linter).
"""

from .._stage import LogThrottle, PipelineThread
from ..detectors import DectrisConfig, MerlinConfig, ScanConfig  # declared with their detectors, configured here
from ._config import (
    DEFAULT_PUBLISH,
    DEFAULT_SOURCE,
    AtomsConfig,
    GuardConfig,
    QueueConfig,
    RecordingConfig,
    SecurityConfig,
    ServeConfig,
)
from ._daemon import Daemon
from ._publish import Delivered, Publisher
from ._receive import Receiver, Source, max_part_bytes, restarts
from ._stats import Stats

__all__ = [
    "DEFAULT_PUBLISH",
    "DEFAULT_SOURCE",
    "AtomsConfig",
    "Daemon",
    "DectrisConfig",
    "Delivered",
    "GuardConfig",
    "LogThrottle",
    "MerlinConfig",
    "PipelineThread",
    "Publisher",
    "QueueConfig",
    "Receiver",
    "RecordingConfig",
    "ScanConfig",
    "SecurityConfig",
    "ServeConfig",
    "Source",
    "Stats",
    "max_part_bytes",
    "restarts",
]
