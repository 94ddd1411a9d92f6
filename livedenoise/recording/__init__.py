"""Recording: every published frame to disk in chunks that survive ``kill -9`` (:class:`Recorder`,
built from a :class:`RecordingConfig`, fed by a publisher hook), and reading a recording back
(:func:`read_index`, :func:`iter_frames`, :func:`summarize`; chunk by chunk while it is written:
:func:`follow_index`, :func:`chunk_frames`), and writing it as one standard file
(:func:`export_recording`)."""

from ._export import Exported, export_recording
from ._read import ChunkEntry, SeriesSummary, chunk_frames, follow_index, iter_frames, read_index, summarize
from ._recorder import INDEX, KINDS, Recorder, RecordingConfig

__all__ = [
    "INDEX",
    "KINDS",
    "ChunkEntry",
    "Exported",
    "Recorder",
    "RecordingConfig",
    "SeriesSummary",
    "chunk_frames",
    "export_recording",
    "follow_index",
    "iter_frames",
    "read_index",
    "summarize",
]
