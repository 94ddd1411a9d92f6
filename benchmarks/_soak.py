"""What ``benchmarks/soak_all.py`` checks a running ``serve`` with, light enough to share two cores with
it (one thread, no copies kept) and testable on its own (``tests/unit/test_soak_check.py``).

* :func:`sample_process`: resident memory, open file descriptors and the live pipeline threads of
  a process (their ``ld-<stage>`` names, set by serve's threads) and its children, from /proc;
* :class:`IdOrder`: per series, the image ids must run 0, 1, 2 ... (frames lost, repeated or out of
  order are counted);
* :class:`PayloadMatch`: each denoised frame's CRC-32 as pushed (``--push-output``) against the same
  frame as recorded, in whichever order the two arrive;
* :class:`RecordingCheck`: follows a recording as it is written (:func:`~livedenoise.recording.follow_index`),
  reads each chunk back as it closes (ids in order, raw pixels equal to what was sent, denoised
  pixels equal to what was pushed), then deletes it, so a long soak's disk holds;
* :class:`Watch`: all of that in one thread beside a ``serve`` process: its PUSH output, its PUB
  topics, its recording and /proc, phase by phase (:class:`Phase`: what was seen during one).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import zmq

from livedenoise.errors import LivedenoiseError
from livedenoise.recording import ChunkEntry, chunk_frames, follow_index
from livedenoise.testing import output_subscriber

from ._procstat import ProcSample, children, dir_bytes, sample_process

TOPICS = (b"raw", b"denoised", b"stats", b"atoms", b"hops")

__all__ = [
    "IdOrder", "PayloadMatch", "Phase", "ProcSample", "RecordingCheck", "Watch", "children", "crc", "dir_bytes", "lost",
    "sample_process",
]


def crc(data) -> int:
    """CRC-32 of a frame's bytes (a buffer or a contiguous array): ~20 us for 64 KiB."""
    return zlib.crc32(memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) else data)


# ------------------------------------------------------------------ ids and payloads


@dataclass(slots=True)
class IdOrder:
    """Per series, ids must come 0, 1, 2 ...: ``frames`` seen, ``series`` started, ``out_of_order``
    (a jump, a repeat, or a series not starting at 0: each counted once), ``skipped`` (ids jumped over)."""

    frames: int = 0
    series: int = 0
    out_of_order: int = 0
    skipped: int = 0
    _next: dict[int, int] = field(default_factory=dict)

    def see(self, series_id: int, image_id: int) -> bool:
        want = self._next.get(series_id)
        if want is None:
            self.series += 1
            if len(self._next) > 64:  # old series are done: keep the dict small over a million frames
                self._next.pop(next(iter(self._next)))
            want = 0
        self._next[series_id] = image_id + 1
        self.frames += 1
        if image_id == want:
            return True
        self.out_of_order += 1
        self.skipped += max(0, image_id - want)
        return False


@dataclass(slots=True)
class PayloadMatch:
    """The pushed and the recorded CRC of each denoised frame, matched whichever arrives first;
    ``matched``, ``mismatched``; what waits for its other half is :meth:`pending` (0 at the end)."""

    matched: int = 0
    mismatched: int = 0
    _pushed: dict[tuple[int, int], int] = field(default_factory=dict)
    _recorded: dict[tuple[int, int], int] = field(default_factory=dict)

    def pushed(self, key: tuple[int, int], value: int) -> None:
        self._meet(key, value, self._recorded, self._pushed)

    def recorded(self, key: tuple[int, int], value: int) -> None:
        self._meet(key, value, self._pushed, self._recorded)

    def _meet(self, key, value, other: dict, mine: dict) -> None:
        theirs = other.pop(key, None)
        if theirs is None:
            mine[key] = value
        elif theirs == value:
            self.matched += 1
        else:
            self.mismatched += 1

    def pending(self) -> tuple[int, int]:
        """(pushed not yet recorded, recorded never pushed)."""
        return len(self._pushed), len(self._recorded)


# ------------------------------------------------------------------ the recording


class RecordingCheck:
    """Reads back each chunk of the recording in ``directory`` as it is indexed, then deletes it.

    ``expected_raw(series_id, image_id)``: what the detector sent for that frame (compared pixel
    for pixel with the raw recording; None: not checked). ``match``: denoised frames are compared
    with what the PUSH consumer got. Figures: ``frames[kind]`` read back, ``order[kind]``
    (:class:`IdOrder`), ``raw_equal``, ``raw_differ``, ``unreadable`` (chunks whose file is missing,
    truncated, or holds other pages than its index line lists), ``chunks``, ``bytes_deleted``.
    """

    def __init__(
        self,
        directory: Path,
        expected_raw: Callable[[int, int], np.ndarray | None] | None = None,
        match: PayloadMatch | None = None,
        *,
        delete: bool = True,
    ):
        self.directory = Path(directory)
        self.expected_raw = expected_raw
        self.match = match
        self.delete = delete
        self.offset = 0
        self.frames = {"raw": 0, "denoised": 0}
        self.order = {"raw": IdOrder(), "denoised": IdOrder()}
        self.raw_equal = self.raw_differ = self.unreadable = self.chunks = self.bytes_deleted = 0
        self.problems: list[str] = []  # the first few, for the report
        self._waiting: list[ChunkEntry] = []

    def poll(self, max_chunks: int | None = None) -> int:
        """Check (and delete) up to ``max_chunks`` newly indexed chunks; returns how many."""
        if not self._waiting and (self.directory / "RECORDING.json").exists():
            entries, self.offset = follow_index(self.directory, self.offset)
            self._waiting = entries[::-1]
        done = 0
        while self._waiting and (max_chunks is None or done < max_chunks):
            self.check(self._waiting.pop())
            done += 1
        return done

    def check(self, entry: ChunkEntry) -> None:
        order, kind = self.order[entry.kind], entry.kind
        try:
            frames = list(chunk_frames(entry))
        except (LivedenoiseError, OSError, ValueError) as exc:  # missing, truncated, pages != ids
            self.unreadable += 1
            self._problem(f"{entry.path.name}: {exc}")
            frames = []
            for image_id in entry.image_ids:  # the ids still count for the order (the frames do not)
                order.see(entry.series_id, image_id)
        for image_id, frame in frames:
            if not order.see(entry.series_id, image_id):
                self._problem(f"{kind} series {entry.series_id}: image {image_id} out of order")
            self.frames[kind] += 1
            if kind == "raw" and self.expected_raw is not None:
                want = self.expected_raw(entry.series_id, image_id)
                if want is None:
                    continue
                if frame.dtype == want.dtype and np.array_equal(frame, want):
                    self.raw_equal += 1
                else:
                    self.raw_differ += 1
                    self._problem(f"raw series {entry.series_id} image {image_id}: pixels differ from those sent")
            elif kind == "denoised" and self.match is not None:
                self.match.recorded((entry.series_id, image_id), crc(frame))
        self.chunks += 1
        if self.delete:
            with contextlib.suppress(OSError):
                size = entry.path.stat().st_size
                entry.path.unlink()
                self.bytes_deleted += size

    def _problem(self, text: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(text)

    def summary(self) -> dict[str, int]:
        return {
            "chunks": self.chunks, "raw": self.frames["raw"], "denoised": self.frames["denoised"],
            "raw_equal": self.raw_equal, "raw_differ": self.raw_differ, "unreadable": self.unreadable,
            "out_of_order": sum(o.out_of_order for o in self.order.values()),
        }


def lost(sent: int, counts: Iterable[int]) -> int:
    """Frames missing from the worst of ``counts`` (recorded raw, recorded denoised, pushed ...)."""
    return max((sent - c for c in counts), default=0)


# ------------------------------------------------------------------ the consumer


@dataclass
class Phase:
    """One stretch of a run, with what was seen during it."""

    name: str
    frames: int  # frames (native) or virtual images (dectris) expected out of it
    per_frame: int = 1  # what the sender sends per frame out: 1, or a scan's patterns
    sent: int = 0  # what the sender says it sent (frames or patterns)
    t0: float = 0.0  # the phase's first frame out
    t1: float = 0.0  # its last
    cpu0: tuple[float, float] = (0.0, 0.0)  # (serve's CPU seconds, this tool's) at the start
    cpu1: tuple[float, float] = (0.0, 0.0)
    stats0: dict = field(default_factory=dict)
    stats1: dict = field(default_factory=dict)
    warm: tuple[float, ProcSample] | None = None
    end: ProcSample | None = None
    samples: list[tuple[float, ProcSample]] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)  # (p50, p99) per stats message
    counts0: dict = field(default_factory=dict)
    counts1: dict = field(default_factory=dict)


class Watch:
    """The one consumer beside serve: PUSH frames, PUB topics, the recording check, /proc samples."""

    def __init__(self, serve: subprocess.Popen, publish: str, push: str, record: Path | None, expected_raw, sample_s: float):
        self.serve, self.expected_raw, self.sample_s = serve, expected_raw, sample_s
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.connect(push)
        self.sub = output_subscriber(self.ctx, publish, TOPICS)
        self.poller = zmq.Poller()
        self.poller.register(self.pull, zmq.POLLIN)
        self.poller.register(self.sub, zmq.POLLIN)
        self.pushed, self.match = IdOrder(), PayloadMatch()
        self.css_nil = 0
        self.pub = {t: IdOrder() for t in (b"raw", b"denoised")}
        self.pub_count: Counter = Counter()
        self.pub_raw_equal = self.pub_raw_differ = 0
        self.rec = RecordingCheck(record, expected_raw, self.match) if record is not None else None
        self.record = record
        self.stats: dict = {}
        self.phase: Phase | None = None
        self.warm_at: int | None = None
        self.threads: frozenset[str] | None = None  # the ld-* threads once serving
        self.deaths: set[str] = set()
        self.stopping = False  # SIGINT sent: the threads end now
        self.peak_disk = 0
        self._next_sample = self._next_disk = 0.0

    def wait_stats(self, timeout: float = 60.0) -> dict:
        """The next stats message (serve is up, or everything before now is counted in it)."""
        n = self.pub_count[b"stats"]
        deadline = time.monotonic() + timeout
        while self.pub_count[b"stats"] == n:
            if time.monotonic() > deadline or self.serve.poll() is not None:
                raise SystemExit(f"serve published no stats (exit code {self.serve.poll()})")
            self.step(200)
        return self.stats

    def until(self, done, idle_s: float = 120.0, what: str = "") -> None:
        """Consume until ``done()``; fails when serve exits or nothing arrives for ``idle_s``."""
        last, seen = time.monotonic(), -1
        while not done():
            if self.serve.poll() is not None:
                raise SystemExit(f"serve exited with {self.serve.returncode} while waiting for {what}")
            progress = self.pushed.frames + (self.rec.chunks if self.rec else 0)
            if progress != seen:
                last, seen = time.monotonic(), progress
            elif time.monotonic() - last > idle_s:
                raise SystemExit(f"nothing arrived for {idle_s:g} s while waiting for {what}")
            self.step(100)

    def step(self, timeout_ms: int) -> None:
        for sock, _ in self.poller.poll(timeout_ms):
            for _ in range(256):  # bounded, so neither socket starves the other
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                (self._on_push if sock is self.pull else self._on_pub)(parts)
        now = time.monotonic()
        if self.rec is not None:
            self.rec.poll(max_chunks=8)
        if now >= self._next_sample:
            self._next_sample = now + self.sample_s
            self.sample()
        if self.record is not None and now >= self._next_disk:
            self._next_disk = now + 30
            self.peak_disk = max(self.peak_disk, dir_bytes(self.record))

    def sample(self) -> ProcSample | None:
        try:
            s = sample_process(self.serve.pid)
        except OSError:
            return None
        if self.threads is None and self.pushed.frames:
            self.threads = s.threads  # every stage started before the first frame left
        if self.threads is not None and not self.stopping:
            self.deaths |= self.threads - s.threads
        if self.phase is not None:
            self.phase.samples.append((time.monotonic(), s))
        return s

    def _on_push(self, parts: list[bytes]) -> None:
        h = msgpack.unpackb(parts[1])
        key = (h["series_id"], h["image_id"])
        self.pushed.see(*key)
        self.css_nil += h.get("css") is None
        self.match.pushed(key, crc(parts[2]))
        if self.phase is not None:
            if not self.phase.t0:
                self.phase.t0 = time.monotonic()
            if self.pushed.frames == self.warm_at:
                s = self.sample()
                if s is not None:
                    self.phase.warm = (time.monotonic(), s)

    def _on_pub(self, parts: list[bytes]) -> None:
        topic = parts[0]
        self.pub_count[topic] += 1
        h = msgpack.unpackb(parts[1])
        if topic == b"stats":
            self.stats = h
            if self.phase is not None and h.get("fps_out") and h.get("latency_ms_p99") is not None:
                self.phase.windows.append((h["latency_ms_p50"], h["latency_ms_p99"]))
        elif topic in self.pub:
            self.pub[topic].see(h["series_id"], h["image_id"])
            if topic == b"raw" and self.expected_raw is not None:
                want = self.expected_raw(h["series_id"], h["image_id"])
                got = np.frombuffer(parts[2], h["dtype"]).reshape(h["shape"])
                if np.array_equal(got, want):
                    self.pub_raw_equal += 1
                else:
                    self.pub_raw_differ += 1

    def counts(self) -> dict:
        rec = self.rec.summary() if self.rec else {}
        return {"pushed": self.pushed.frames, "series": self.pushed.series, "css_nil": self.css_nil, **{f"rec_{k}": v for k, v in rec.items()},
                **{f"pub_{t.decode()}": n for t, n in self.pub_count.items()},
                "pub_raw_equal": self.pub_raw_equal, "pub_raw_differ": self.pub_raw_differ}

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far: serve's and its children's (the v1 receiver process), and this tool's."""
        serve = 0.0
        for pid in (self.serve.pid, *children(self.serve.pid)):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                serve += sum(int(v) for v in fields[11:13]) / os.sysconf("SC_CLK_TCK")  # utime stime
            except OSError:
                pass
        return serve, time.process_time()

    def start_phase(self, phase: Phase, warmup: int) -> None:
        phase.stats0 = self.wait_stats()
        phase.counts0 = self.counts()
        self.warm_at = self.pushed.frames + max(1, warmup)
        self.phase = phase
        phase.cpu0 = self.cpu()

    def end_phase(self, phase: Phase) -> None:
        """Everything of the phase pushed and read back from the recording: the end sample."""
        target = phase.counts0["pushed"] + phase.frames
        self.until(lambda: self.pushed.frames >= target, what=f"phase {phase.name}'s frames")
        phase.t1 = time.monotonic()
        phase.cpu1 = self.cpu()
        if self.rec is not None:
            want = phase.counts0.get("rec_raw", 0) + phase.frames
            self.until(lambda: min(self.rec.frames.values()) >= want, idle_s=60, what="the recording")
        phase.end = self.sample()
        phase.stats1 = self.wait_stats()
        phase.counts1 = self.counts()
        self.phase = None

    def shutdown(self, timeout: float = 120.0) -> int:
        """SIGINT; consume what is left until serve exits; the last chunks are read back."""
        self.stopping = True
        self.serve.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        while self.serve.poll() is None and time.monotonic() < deadline:
            self.step(100)
        if self.serve.poll() is None:
            self.serve.kill()
        self.step(200)
        if self.rec is not None:
            self.rec.poll()
        self.pull.close()
        self.sub.close()
        self.ctx.term()
        return self.serve.wait()
