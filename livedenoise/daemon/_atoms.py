"""``serve --atoms``: the atoms of every published frame, their evidence and tracks, found in a
thread of their own."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, NamedTuple

import numpy as np

from .._stage import LogThrottle, SideStage
from ..analysis import Tracker, TrackEvidence, atom_evidence, find_atoms
from ..protocol import MAX_ATOMS_ANNOTATED, MAX_HOPS, encode_atoms, encode_hops
from ._config import AtomsConfig
from ._publish import Delivered, Publisher

log = logging.getLogger("livedenoise.analysis")

_ID_WRAP = 1 << 31  # track (and hop image) ids go out as int32: they wrap there


class _AtomsJob(NamedTuple):
    """What the atom thread keeps of a :class:`Delivered` frame (the raw one only for evidence)."""

    series_id: int
    image_id: int
    start_time: int | None
    epoch: int
    denoised: np.ndarray
    raw: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return self.denoised.nbytes + (0 if self.raw is None else self.raw.nbytes)


class AtomFinder(SideStage[_AtomsJob]):
    """``serve --atoms``: the atoms of every published denoised frame, their evidence in the raw
    counts and their tracks, in a side stage of their own (:class:`~livedenoise._stage.SideStage`).

    :meth:`submit` is a publisher hook (O(1)): it queues the frame (the denoised one, and the raw
    one when evidence is on), keeping at most ``backlog`` frames and ``backlog_bytes``; when the
    thread falls behind, the oldest waiting frame is skipped and counted (``atoms_skipped``), so
    atom finding never holds back publishing, inference or the detector, lossless mode included.
    (A batch arrives at once: ``backlog`` should hold at least two.) The thread runs, at serve's
    own OS priority:

    1. :func:`~livedenoise.analysis.find_atoms` on the denoised frame ([0, 1], background near 0,
       an atom's peak near 1);
    2. with ``evidence``, :func:`~livedenoise.analysis.atom_evidence` of each atom in the raw frame
       (detector counts): the z-score of "an atom here" against "background only";
    3. with ``tracks``, :class:`~livedenoise.analysis.Tracker` links the atoms to the previous
       frames' (reset at a series restart, a new epoch, and a change of frame size), the evidence
       is accumulated along each track (:class:`~livedenoise.analysis.TrackEvidence`), and each
       hop goes out as ``[b"hops", header]`` (:func:`~livedenoise.protocol.encode_hops`) once
       confirmed (``hop_confirm`` frames, default 1: with the next frame's atoms, most false
       hops of a missed atom are dropped), one message per frame the hops landed on, whose
       ``image_id`` it carries;

    and hands ``[b"atoms", header]`` (:func:`~livedenoise.protocol.encode_atoms`) to
    :meth:`Publisher.post`. Evidence and tracks are computed for the :data:`MAX_ATOMS_ANNOTATED`
    tallest atoms of a frame at most (a noise frame can give thousands): such a frame is counted
    (``atoms_capped``) and logged. A failure is counted (``atoms_failed``) and logged, never raised.
    :meth:`close` finds the atoms of the frames still queued, then stops the thread.

    ``config``: the threshold (with ``relative``, a fraction of the frame's highest peak instead of
    a height above the frame's median, in denoised units), evidence, tracks and hops
    (:class:`~livedenoise.daemon.AtomsConfig`).
    """

    RECENT = 256  # per-frame times kept for the stats percentiles
    stage = "atoms"
    # not niced: a niced thread is starved by other jobs on a shared machine (frames skipped,
    # p99 20-60 ms at a load of 5 on 2 cores, against 4-7 ms un-niced), and holding the GIL
    # when preempted it stalls the pipeline threads behind it; what it costs inference is its
    # CPU time, ~0.5 ms a frame at 128² (docs/benchmarks.md). Under --realtime: just below.
    nice = 0

    def __init__(self, publisher: Publisher, config: AtomsConfig, *, backlog: int = 16, backlog_bytes: int = 256 << 20):
        super().__init__(capacity=backlog, capacity_bytes=backlog_bytes, when_full="skip", logger=log)
        self.publisher = publisher
        self.threshold, self.relative = config.threshold, config.relative
        self.evidence, self.weak_z = config.evidence, float(config.weak_z)
        self.tracker = Tracker(
            max_disp=config.track_max_disp, hop_distance=config.hop_px, max_atoms=MAX_ATOMS_ANNOTATED,
            confirm_frames=config.hop_confirm,
        ) if config.tracks else None
        self.track_evidence = TrackEvidence() if config.tracks and config.evidence else None
        self._capped_log = LogThrottle(log)
        self._run_key: tuple[int, int] | None = None  # (series, epoch) of the last frame
        self.frames = 0  # frames whose atoms were posted (atom thread)
        self.capped = 0  # frames with more atoms than evidence and tracks are computed for (atom thread)
        self.hops = 0  # hop events published (atom thread)
        self.last_count: int | None = None
        self.last_weak: int | None = None
        self._ms: deque[float] = deque(maxlen=self.RECENT)  # wall time per frame
        self._cpu_ms: deque[float] = deque(maxlen=self.RECENT)  # the thread's CPU time per frame

    @property
    def annotated(self) -> bool:
        """Evidence or tracks on: the atoms handled are capped at :data:`MAX_ATOMS_ANNOTATED`."""
        return self.evidence or self.tracker is not None

    def submit(self, delivered: Delivered) -> None:
        """Publisher hook: queue one frame; skip the oldest waiting ones beyond the backlog."""
        item = _AtomsJob(
            delivered.series_id, delivered.image_id, delivered.start_time, delivered.epoch, delivered.denoised,
            delivered.raw if self.evidence else None,
        )
        self._put(item, item.nbytes)

    def counters(self) -> dict[str, Any]:
        """Stats fields: frames done, skipped, failed and capped, the newest count, wall and CPU time
        per frame (find + evidence + tracks, last 256 frames); the weak count, hops and tracks when on."""
        p50, p99 = _percentiles(self._ms)
        cpu50, cpu99 = _percentiles(self._cpu_ms)
        out: dict[str, Any] = {
            "atoms_frames": self.frames,
            "atoms_skipped": self.skipped,
            "atoms_failed": self.failed,
            "atoms_last": self.last_count,
            "atoms_ms_p50": p50,
            "atoms_ms_p99": p99,
            "atoms_cpu_ms_p50": cpu50,
            "atoms_cpu_ms_p99": cpu99,
        }
        if self.annotated:
            out["atoms_capped"] = self.capped
        if self.evidence:
            out["atoms_weak_last"] = self.last_weak
        if self.tracker is not None:
            out |= {"hops": self.hops, "tracks_live": self.tracker.live, "tracks_resets": self.tracker.resets}
        return out

    def _handle(self, item: _AtomsJob) -> None:
        try:
            messages = self._find(item)
        except Exception as exc:  # noqa: BLE001 - a bug, or a frame the finder cannot take: count, go on
            self._failed("atom finding failed on series %s image %s: %r", item.series_id, item.image_id, exc)
            return
        for parts in messages:  # a failure to post is the stage's: the daemon's failure path
            self.publisher.post(parts)

    def _begin(self) -> None:
        """Each stage once on a small frame, uncounted, before the first real one: a first call costs
        ~10 ms (caches, the interpreter's first passes), which the per-frame figures would carry."""
        yy, xx = np.mgrid[:32, :32]
        frame = np.exp(-((xx - 15.3) ** 2 + (yy - 16.6) ** 2) / 1.5).astype(np.float32)
        try:
            atoms = find_atoms(frame, threshold=0.4)
            ids = Tracker().update(atoms.positions, image_id=0, shape=frame.shape)
            if self.evidence:
                ev = atom_evidence(frame * 5.0, atoms.positions)
                TrackEvidence().update(ids, ev.z, ev.llr)
        except Exception as exc:  # noqa: BLE001 - the real frames will say what is wrong, counted
            log.debug("atom finder warm-up failed: %r", exc)

    def _new_run(self, item: _AtomsJob) -> None:
        """End every track where a new run of frames starts: another series or epoch (a restart).
        (The tracker resets itself on another frame size, and when image ids go back.)"""
        key = (item.series_id, item.epoch)
        if self._run_key is not None and key != self._run_key and self.tracker is not None:
            self.tracker.reset()
        self._run_key = key

    def _find(self, item: _AtomsJob) -> list[list]:
        t0, cpu0 = time.perf_counter(), time.thread_time()
        if self.relative:
            atoms = find_atoms(item.denoised, threshold=None, rel_threshold=self.threshold)
        else:
            atoms = find_atoms(item.denoised, threshold=self.threshold)
        finder_ms = (time.perf_counter() - t0) * 1e3
        n = len(atoms)
        ids: dict[str, Any] = {"series_id": item.series_id, "image_id": item.image_id}
        if item.start_time is not None:
            ids["start_time"] = item.start_time
        header = ids | {"time_ns": time.time_ns(), "background": atoms.background, "finder_ms": round(finder_ms, 3)}
        extra: dict[str, Any] = {}
        messages = []
        if self.annotated:
            k = min(n, MAX_ATOMS_ANNOTATED)
            if n > k:
                self.capped += 1
                self._capped_log.warning(
                    "series %s image %s: %d atoms; evidence and tracks for the %d tallest only (a noise frame?)",
                    item.series_id, item.image_id, n, k,
                )
            positions = atoms.positions[:k]
            z = llr = None
            if self.evidence:
                assert item.raw is not None
                ev = atom_evidence(item.raw, positions)
                z, llr = ev.z, ev.llr
            if self.tracker is not None:
                resets = self.tracker.resets
                self._new_run(item)
                track_ids = self.tracker.update(positions, image_id=item.image_id, shape=item.denoised.shape)
                if self.track_evidence is not None:
                    if self.tracker.resets != resets:
                        self.track_evidence.reset()
                    assert z is not None and llr is not None
                    z, _, _ = self.track_evidence.update(track_ids, z, llr)
                extra["track_ids"] = np.where(track_ids >= 0, track_ids % _ID_WRAP, -1).astype(np.int32)
                landed: dict[int, list] = {}
                for h in self.tracker.hops:  # confirmed now; each names the frame it landed on
                    landed.setdefault(h.image_id_after, []).append(h)
                for image_id, hops in sorted(landed.items()):
                    messages.append(self._hops_message(ids | {"image_id": image_id}, hops))
            if z is not None:
                weak = int(np.count_nonzero(~(z >= self.weak_z)))
                extra |= {"evidence": z, "weak": weak, "weak_z": self.weak_z}
                self.last_weak = weak
            listed = slice(0, k)  # the tallest k: what the message lists anyway
        else:
            listed = slice(None)
        ms = (time.perf_counter() - t0) * 1e3
        cpu_ms = (time.thread_time() - cpu0) * 1e3
        header |= {"analysis_ms": round(ms, 3), "analysis_cpu_ms": round(cpu_ms, 3)}
        messages.append(encode_atoms(
            header, atoms.positions[listed], atoms.intensities[listed], atoms.heights[listed],
            threshold=atoms.threshold, count=n, **extra,
        ))
        self._ms.append(ms)
        self._cpu_ms.append(cpu_ms)
        self.frames += 1
        self.last_count = n
        return messages

    def _hops_message(self, ids: dict[str, Any], hops: list) -> list:
        """``[b"hops", header]`` for the hop events that landed on frame ``ids["image_id"]`` (the
        first :data:`MAX_HOPS` listed), sent before the atoms of the frame that confirmed them."""
        listed = hops[:MAX_HOPS]
        self.hops += len(hops)
        return encode_hops(
            ids | {"time_ns": time.time_ns()},
            np.array([h.track_id % _ID_WRAP for h in listed], np.int64),
            np.array([h.before for h in listed], np.float64).reshape(-1, 2),
            np.array([h.after for h in listed], np.float64).reshape(-1, 2),
            np.array([h.image_id_before % _ID_WRAP for h in listed], np.int64),
            count=len(hops),
        )


def _percentiles(values: deque[float]) -> tuple[float | None, float | None]:
    """p50 and p99 of ``values`` (ms, rounded to µs); None for none."""
    if not values:
        return None, None
    p50, p99 = np.percentile(np.array(values, dtype=np.float64), [50, 99])
    return round(float(p50), 3), round(float(p99), 3)
