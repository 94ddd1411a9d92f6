"""Recording: every published frame to disk in chunks that survive ``kill -9`` (:class:`Recorder`,
fed by a publisher hook), and reading a recording back (:func:`read_index`, :func:`iter_frames`,
:func:`summarize`)."""

from ._read import ChunkEntry, SeriesSummary, iter_frames, read_index, summarize
from ._recorder import INDEX, KINDS, MARKER, Recorder

__all__ = [
    "INDEX",
    "KINDS",
    "MARKER",
    "ChunkEntry",
    "Recorder",
    "SeriesSummary",
    "iter_frames",
    "read_index",
    "summarize",
]
