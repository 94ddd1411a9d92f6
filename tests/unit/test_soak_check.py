"""The checks of benchmarks/soak_all.py (benchmarks/_soak.py) catch what they are there for: a frame
lost, corrupted, repeated or out of order in a real recording (written by the real Recorder), a
pushed frame that differs from the recorded one, a pipeline thread that ended."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from benchmarks._soak import IdOrder, PayloadMatch, RecordingCheck, crc, lost, sample_process
from livedenoise.daemon import Delivered, PipelineThread
from livedenoise.recording import INDEX, Recorder, RecordingConfig, follow_index

SERIES, PER_SERIES = (1, 2), 25


@pytest.fixture
def recording(tmp_path):
    """A real recording of 2 series x 25 frames (raw and denoised, chunks of 10), the raw frames
    as sent, and the CRC of each denoised frame as a PUSH consumer got it."""
    rng = np.random.default_rng(3)
    sent = rng.integers(0, 500, (PER_SERIES, 12, 10)).astype("<u2")
    rec = Recorder(RecordingConfig(tmp_path / "rec", raw=True, chunk_frames=10, chunk_seconds=60))
    rec.start()
    pushed = {}
    for sid in SERIES:
        for i, raw in enumerate(sent):
            denoised = (raw / 500 + sid).astype(np.float32)
            pushed[(sid, i)] = crc(denoised)
            rec.submit(Delivered(sid, i, raw, denoised, None, 1.0))
    rec.close()
    assert rec.counters()["recorded"] == rec.counters()["recorded_raw"] == len(SERIES) * PER_SERIES
    return tmp_path / "rec", sent, pushed


def check(directory: Path, sent: np.ndarray, pushed: dict) -> tuple[RecordingCheck, PayloadMatch]:
    match = PayloadMatch()
    for key, value in pushed.items():
        match.pushed(key, value)
    rc = RecordingCheck(directory, lambda sid, i: sent[i], match)
    rc.poll()
    return rc, match


def index_lines(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / INDEX).read_text().splitlines()]


def write_index(directory: Path, lines: list[dict]) -> None:
    (directory / INDEX).write_text("".join(json.dumps(e) + "\n" for e in lines))


def test_an_intact_recording_passes_and_is_deleted_as_it_is_read(recording):
    directory, sent, pushed = recording
    rc, match = check(directory, sent, pushed)
    n = len(SERIES) * PER_SERIES
    assert rc.summary() == {"chunks": 12, "raw": n, "denoised": n, "raw_equal": n, "raw_differ": 0, "unreadable": 0,
                            "out_of_order": 0}
    assert match.matched == n and match.mismatched == 0 and match.pending() == (0, 0)
    assert not list(directory.rglob("*.tif")) and rc.bytes_deleted > 0
    assert rc.poll() == 0  # nothing indexed twice


def test_a_truncated_chunk_is_unreadable_and_its_frames_lost(recording):
    directory, sent, pushed = recording
    chunk = directory / next(e["file"] for e in index_lines(directory) if e["kind"] == "raw")
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    rc, _ = check(directory, sent, pushed)
    assert rc.unreadable == 1 and rc.frames["raw"] == 50 - 10
    assert lost(50, rc.frames.values()) == 10


def test_a_corrupted_raw_frame_differs_from_what_was_sent(recording):
    directory, sent, pushed = recording
    entry = next(e for e in index_lines(directory) if e["kind"] == "raw" and e["series_id"] == 2)
    pages = tifffile.imread(directory / entry["file"])
    pages[3, 5, 5] ^= 1  # one bit of one pixel
    tifffile.imwrite(directory / entry["file"], pages)  # as many pages as the index lists: readable
    rc, _ = check(directory, sent, pushed)
    assert rc.raw_differ == 1 and rc.raw_equal == 49 and rc.unreadable == 0
    assert any("series 2 image 3" in p for p in rc.problems)


def test_a_recorded_denoised_frame_that_differs_from_the_pushed_one(recording):
    directory, sent, pushed = recording
    pushed[(1, 17)] ^= 1
    rc, match = check(directory, sent, pushed)
    assert match.mismatched == 1 and match.matched == 49 and rc.raw_differ == 0


def test_a_chunk_missing_from_the_index_leaves_a_gap_in_the_ids(recording):
    directory, sent, pushed = recording
    lines = index_lines(directory)
    gone = next(i for i, e in enumerate(lines) if e["kind"] == "denoised" and e["image_ids"][0] == 10)
    write_index(directory, lines[:gone] + lines[gone + 1 :])
    rc, match = check(directory, sent, pushed)
    assert rc.order["denoised"].out_of_order == 1 and rc.order["denoised"].skipped == 10
    assert rc.frames["denoised"] == 40 and match.pending() == (10, 0)


def test_ids_out_of_order_or_repeated_are_counted(recording):
    directory, sent, pushed = recording
    lines = index_lines(directory)
    for e in lines:
        if e["kind"] == "raw" and e["series_id"] == 1 and e["image_ids"][0] == 0:
            e["image_ids"][4], e["image_ids"][5] = 5, 4
    write_index(directory, lines)
    rc, _ = check(directory, sent, pushed)
    # 0 1 2 3 5 4 6: 5 jumps ahead, 4 goes back, 6 jumps 5; and the pixels no longer match their ids
    assert rc.order["raw"].out_of_order == 3 and rc.raw_differ == 2


def test_follow_index_waits_for_a_line_being_appended(recording):
    directory, _, _ = recording
    lines = (directory / INDEX).read_bytes().splitlines(keepends=True)
    (directory / INDEX).write_bytes(b"".join(lines[:3]) + lines[3][:20])  # the 4th line half written
    entries, offset = follow_index(directory)
    assert len(entries) == 3 and offset == len(b"".join(lines[:3]))
    with open(directory / INDEX, "ab") as fh:
        fh.write(lines[3][20:])
    entries, offset = follow_index(directory, offset)
    assert len(entries) == 1 and offset == (directory / INDEX).stat().st_size


def test_id_order_in_a_stream():
    order = IdOrder()
    for sid, iid in [(1, 0), (1, 1), (1, 3), (2, 0), (2, 1), (2, 1), (3, 2)]:
        order.see(sid, iid)
    assert (order.frames, order.series, order.out_of_order, order.skipped) == (7, 3, 3, 3)


def test_sample_process_sees_a_pipeline_thread_end():
    release = threading.Event()
    thread = PipelineThread("soakcheck", release.wait)
    thread.start()
    try:
        deadline = time.monotonic() + 5.0  # the thread names itself in the OS once it runs
        while "ld-soakcheck" not in (before := sample_process(os.getpid())).threads and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        release.set()
        thread.join(5)
    after = sample_process(os.getpid())
    assert "ld-soakcheck" in before.threads and "ld-soakcheck" not in after.threads
    assert before.rss_mib > 0 and before.fds > 0
