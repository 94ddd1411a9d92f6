"""Simulators: a detector that replays a movie or simulated frames over ZeroMQ (:class:`Replayer`),
simulated low-dose HAADF-STEM movies with their ground truth (:func:`simulate_movie`), and
malformed detector messages for testing readers of the protocol (:func:`malformed_message`).

Runtime code (daemon, engine) never imports this package; the CLI, the tests, the benchmarks and
the trainer do.
"""

from ._fuzz import KINDS, malformed_message
from ._movie import Movie, SimConfig, as_dtype, movie_metadata, render_atoms, simulate_movie, stream_frames
from ._replay import DEFAULT_BIND, ReplayConfig, Replayer

__all__ = [
    "DEFAULT_BIND",
    "KINDS",
    "Movie",
    "ReplayConfig",
    "Replayer",
    "SimConfig",
    "as_dtype",
    "malformed_message",
    "movie_metadata",
    "render_atoms",
    "simulate_movie",
    "stream_frames",
]
