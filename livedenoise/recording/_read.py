"""Reading a recording back: its index, its frames, and a summary per series (``livedenoise inspect``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import LivedenoiseError, MalformedMessage
from ..protocol import Calibration
from ._recorder import INDEX, KINDS, MARKER, read_marker


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    series_id: int
    kind: str
    path: Path
    image_ids: tuple[int, ...]
    start_times: tuple[int | None, ...] | None = None  # ns, where the detector sent them
    calibration: Calibration | None = None  # pixel size and frame time, where the detector sent them


@dataclass(slots=True)
class SeriesSummary:
    series_id: int
    kind: str
    frames: int
    first_id: int
    last_id: int
    missing: int  # ids absent between first and last
    gaps: list[tuple[int, int]] = field(default_factory=list)  # missing ranges [a, b]
    files: int = 0


def read_index(directory: str | Path) -> list[ChunkEntry]:
    """The indexed (complete) chunks of a recording, in the order they were closed.

    A truncated or unparsable line (a crash while appending) is skipped. Raises
    :class:`LivedenoiseError` if ``directory`` is not a livedenoise recording.
    """
    return _read_index(Path(directory), 0, whole=True)[0]


def follow_index(directory: str | Path, offset: int = 0) -> tuple[list[ChunkEntry], int]:
    """The chunks indexed from byte ``offset`` of the index on, and the offset after the last
    complete line: what a reader following a recording while it is written (a soak that checks
    each chunk as it closes) passes next time. A line still being appended waits for that call."""
    return _read_index(Path(directory), offset, whole=False)


def _read_index(directory: Path, offset: int, *, whole: bool) -> tuple[list[ChunkEntry], int]:
    if not directory.is_dir():
        raise LivedenoiseError(f"{directory} is not a directory")
    if read_marker(directory) is None:
        raise LivedenoiseError(f"{directory} is not a livedenoise recording (no valid {MARKER})")
    try:
        with open(directory / INDEX, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = len(data) if whole else data.rfind(b"\n") + 1
    root = directory.resolve()
    entries = [e for e in map(partial(_entry, directory, root), data[:end].splitlines()) if e is not None]
    return entries, offset + end


def _entry(directory: Path, root: Path, line: bytes) -> ChunkEntry | None:
    """One index line as a :class:`ChunkEntry`; None for a line that is not one (a crash while appending)."""
    try:
        e = json.loads(line)
        image_ids = tuple(int(i) for i in e["image_ids"])
        times = e.get("start_times")
        if times is not None:
            times = tuple(None if t is None else int(t) for t in times)
            if len(times) != len(image_ids):
                times = None  # not this recorder's line: the ids still hold
        entry = ChunkEntry(
            int(e["series_id"]), str(e["kind"]), directory / e["file"], image_ids, times,
            Calibration.from_header(e.get("calibration")),
        )
    except (ValueError, KeyError, TypeError, MalformedMessage):
        return None
    if entry.kind in KINDS and entry.path.resolve().is_relative_to(root):
        return entry
    return None


def chunk_frames(entry: ChunkEntry) -> Iterator[tuple[int, np.ndarray]]:
    """``(image_id, frame)`` for each frame of one indexed chunk; :class:`LivedenoiseError` where
    the file's pages do not match the ids its index line lists."""
    import tifffile

    with tifffile.TiffFile(entry.path) as tif:
        if len(tif.pages) != len(entry.image_ids):
            raise LivedenoiseError(
                f"{entry.path}: {len(tif.pages)} pages but the index lists {len(entry.image_ids)} frames"
            )
        for image_id, page in zip(entry.image_ids, tif.pages, strict=True):
            yield image_id, page.asarray()


def iter_frames(
    directory: str | Path, *, kind: str = "denoised", series_id: int | None = None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(series_id, image_id, frame)`` for every recorded frame of ``kind``, in recording order."""
    for entry in read_index(directory):
        if entry.kind != kind or (series_id is not None and entry.series_id != series_id):
            continue
        for image_id, frame in chunk_frames(entry):
            yield entry.series_id, image_id, frame


def summarize(directory: str | Path) -> list[SeriesSummary]:
    """Per series and kind: frame count, id range and the missing id ranges."""
    ids: dict[tuple[int, str], list[int]] = {}
    files: dict[tuple[int, str], int] = {}
    for entry in read_index(directory):
        ids.setdefault((entry.series_id, entry.kind), []).extend(entry.image_ids)
        files[(entry.series_id, entry.kind)] = files.get((entry.series_id, entry.kind), 0) + 1
    out = []
    for (sid, kind), values in sorted(ids.items()):
        unique = np.unique(np.asarray(values, np.int64))
        gaps = []
        if unique.size > 1:
            jumps = np.flatnonzero(np.diff(unique) > 1)
            gaps = [(int(unique[j] + 1), int(unique[j + 1] - 1)) for j in jumps]
        missing = sum(b - a + 1 for a, b in gaps)
        out.append(
            SeriesSummary(
                sid, kind, len(values), int(unique[0]), int(unique[-1]), missing, gaps, files[(sid, kind)]
            )
        )
    return out
