"""Simulators: a detector that replays a movie or simulated frames over ZeroMQ (:class:`Replayer`),
simulated low-dose HAADF-STEM movies with their ground truth (:func:`simulate_movie`; dense samples,
a 2-D crystal or a nanoparticle: :func:`simulate_dense`), the one detector noise model they share
(:class:`NoiseConfig`, :func:`acquire`), a moving acquisition of any clean image (drift, scan
jitter, a scene change, a decaying dose: :func:`acquire_moving`), and
malformed detector messages for testing readers of the protocol (:func:`malformed_message`), and
a simulated 4D-STEM scan (:func:`simulate_4dstem`) with DECTRIS Stream v1/v2 senders and a
Quantum Detectors Merlin's data port (:class:`MerlinSender`, :func:`merlin_stream`): those live
beside their decoders (:mod:`livedenoise.detectors.dectris`, :mod:`livedenoise.detectors.merlin`)
and are re-exported here.

Runtime code (daemon, engine) never imports this package; the CLI, the tests, the benchmarks and
the trainer do.
"""

from ..detectors.dectris import (
    DectrisV2Sender,
    dectris_v1_messages,
    dectris_v2_messages,
    encode_bslz4,
    encode_lz4_h5,
    write_dectris_dump,
)
from ..detectors.merlin import FAULTS as MERLIN_FAULTS
from ..detectors.merlin import MerlinSender, merlin_fault, merlin_stream
from ._dense import DENSE_KINDS, DenseConfig, DenseMovie, dense_metadata, simulate_dense
from ._fuzz import KINDS, malformed_message
from ._motion import MotionConfig, MovingMovie, acquire_moving, measure_shift
from ._movie import Movie, SimConfig, as_dtype, movie_metadata, render_atoms, simulate_movie, stream_frames
from ._noise import NoiseConfig, acquire
from ._replay import DEFAULT_BIND, ReplayConfig, Replayer
from ._scan4d import Scan4D, simulate_4dstem

__all__ = [
    "DEFAULT_BIND",
    "DENSE_KINDS",
    "KINDS",
    "MERLIN_FAULTS",
    "DectrisV2Sender",
    "DenseConfig",
    "DenseMovie",
    "MerlinSender",
    "MotionConfig",
    "Movie",
    "MovingMovie",
    "NoiseConfig",
    "ReplayConfig",
    "Replayer",
    "Scan4D",
    "SimConfig",
    "acquire",
    "acquire_moving",
    "as_dtype",
    "dectris_v1_messages",
    "dectris_v2_messages",
    "dense_metadata",
    "encode_bslz4",
    "encode_lz4_h5",
    "malformed_message",
    "measure_shift",
    "merlin_fault",
    "merlin_stream",
    "movie_metadata",
    "render_atoms",
    "simulate_4dstem",
    "simulate_dense",
    "simulate_movie",
    "stream_frames",
    "write_dectris_dump",
]
