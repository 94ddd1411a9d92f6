"""The recorder where a directory cannot be fsynced (Windows), simulated on this machine."""

from __future__ import annotations

import os

import numpy as np
import pytest

from livedenoise.daemon import Delivered
from livedenoise.errors import LivedenoiseError
from livedenoise.recording import Recorder, RecordingConfig, _recorder, iter_frames


@pytest.fixture
def windows_open(monkeypatch):
    """``os.open`` as on Windows: a directory cannot be opened (PermissionError); files can."""
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


def frames(n: int) -> list[Delivered]:
    rng = np.random.default_rng(5)
    return [Delivered(1, i, rng.integers(0, 9, (8, 6)).astype("<u2"), rng.random((8, 6), np.float32), None, 1.0)
            for i in range(n)]


def test_recorder_works_where_directories_cannot_be_fsynced(tmp_path, monkeypatch, windows_open):
    monkeypatch.setattr(_recorder, "DIRECTORY_FSYNC", False)  # what os.name == "nt" sets
    sent = frames(7)
    rec = Recorder(RecordingConfig(tmp_path / "rec", raw=True, chunk_frames=3, chunk_seconds=60))
    rec.start()
    for d in sent:
        rec.submit(d)
    rec.close()
    assert rec.counters()["recorded"] == rec.counters()["recorded_raw"] == 7 and rec.counters()["record_errors"] == 0
    got = list(iter_frames(tmp_path / "rec"))
    assert [i for _, i, _ in got] == list(range(7))
    for (_, _, frame), d in zip(got, sent, strict=True):
        np.testing.assert_array_equal(frame, d.denoised)


def test_without_the_guard_such_a_directory_cannot_be_recorded_into(tmp_path, monkeypatch, windows_open):
    monkeypatch.setattr(_recorder, "DIRECTORY_FSYNC", True)  # the simulation above is a real obstacle
    with pytest.raises(LivedenoiseError, match="cannot record into"):
        Recorder(RecordingConfig(tmp_path / "rec"))
