"""``serve --atoms`` end to end: the ``atoms`` topic on real sockets, from a real onnxruntime session.

The detector side is a PUSH socket (``serve --pull``), so no frame is lost to PUB/SUB's slow
joiner. The clean-frame tests use a near-identity model (``clean = tanh(3 x)`` with the input
normalised by the model card), so the published atoms can be held to the simulator's truth.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt loads (the viewer test)

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import livedenoise.daemon._atoms
from livedenoise.analysis import HopEvent, link_frames
from livedenoise.daemon import AtomsConfig, QueueConfig
from livedenoise.engine import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelCard, Normalisation
from livedenoise.errors import LivedenoiseError, MalformedMessage
from livedenoise.protocol import (
    MAX_ATOMS,
    MAX_ATOMS_ANNOTATED,
    TOPIC_ATOMS,
    TOPIC_HOPS,
    decode_atoms,
    decode_hops,
    encode_atoms,
    encode_image,
    encode_published,
    encode_start,
    pack,
)
from livedenoise.scoring import hop_scores, match_points, true_hops
from livedenoise.scoring._trackscore import identity_switches
from livedenoise.sim import SimConfig, render_atoms, simulate_movie

REPO = Path(__file__).resolve().parents[2]


def tanh_model(path: Path, scale: float = 3.0, offset: float = 0.0) -> Path:
    """A real ONNX "denoiser" close to identity: ``clean = tanh(scale * (frame - offset))``, no convolution.

    Atoms keep their positions and stay Gaussian-like (tanh only compresses the peaks a little):
    published at ``(clean + 1) / 2``, a frame in [0, 1] has background 0.5 and an atom ~0.95
    (0.45 above the background: over the default threshold, 0.4).
    """
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Tanh", [INPUT_NAME], [OUTPUT_NAME])],
        "tanh",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1, "H", "W"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    card = ModelCard(preset="tanh-identity", normalisation=Normalisation(offset=offset, scale=scale))
    helper.set_model_props(model, {METADATA_KEY: card.to_json()})
    onnx.save(model, str(path))
    return path


@pytest.fixture
def identity_model(tmp_path) -> Path:
    return tanh_model(tmp_path / "tanh.onnx")


def start_atoms_daemon(daemon_factory, subscriber, detector, model, atoms=None, **fields):
    """A started daemon finding atoms (``atoms``: default settings), PULL input from a PUSH detector
    bound first, and a ready subscriber."""
    push, source = detector()
    daemon = daemon_factory(model=model, source=source, pull=True, atoms=atoms or AtomsConfig(), **fields)
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    return daemon, push, sub


def collect_atoms(sub, n: int, timeout: float = 20.0) -> tuple[dict, dict]:
    """Read until ``n`` atoms messages came; returns ``({ids: AtomsMessage}, {ids: denoised})``."""
    atoms, denoised = {}, {}
    deadline = time.monotonic() + timeout
    while len(atoms) < n and time.monotonic() < deadline:
        msg = sub.recv(0.2)
        if msg is None:
            continue
        ids = (msg.header.get("series_id"), msg.header.get("image_id"))
        if msg.topic == TOPIC_ATOMS:
            atoms[ids] = decode_atoms(msg)
        elif msg.topic == b"denoised":
            denoised[ids] = msg
    return atoms, denoised


def nearest_distance(true_xy: np.ndarray, found_xy: np.ndarray) -> np.ndarray:
    """For each true atom, the distance to the closest found one (inf if none was found)."""
    if len(found_xy) == 0:
        return np.full(len(true_xy), np.inf)
    diff = np.asarray(true_xy, np.float64)[:, None, :] - np.asarray(found_xy, np.float64)[None, :, :]
    return np.hypot(diff[..., 0], diff[..., 1]).min(axis=1)


# --------------------------------------------------------------------------- against the truth


def test_atoms_of_clean_simulated_frames_match_the_truth_within_half_a_pixel(
    identity_model, detector, daemon_factory, subscriber
):
    movie = simulate_movie(SimConfig(frames=4, seed=11))  # 128², single atoms and clusters
    _daemon, push, sub = start_atoms_daemon(daemon_factory, subscriber, detector, identity_model)
    push.send_multipart(encode_start(3))
    for t, truth in enumerate(movie.truth):
        clean = (truth / truth.max()).astype("<f4")
        push.send_multipart(encode_image(clean, series_id=3, image_id=t, start_time=1000 + t))
    atoms, denoised = collect_atoms(sub, len(movie.truth))
    push.close()

    assert sorted(atoms) == [(3, t) for t in range(len(movie.truth))]
    for t, true_xy in enumerate(movie.positions):
        msg = atoms[3, t]
        assert msg.count == len(msg) == len(true_xy)  # nothing missed, nothing extra (27 atoms)
        assert msg.positions.dtype == np.float32 and msg.positions.shape == (len(true_xy), 2)
        dist = nearest_distance(true_xy, msg.positions)
        assert dist.max() < 0.5, f"frame {t}: an atom published {dist.max():.2f} px from the truth"
        assert np.median(dist) < 0.1
        # heights and intensities are those of the published denoised frame, brightest first
        frame = denoised[3, t].data
        assert np.all(np.diff(msg.heights) <= 0) and np.all(msg.heights > msg.threshold)
        assert msg.threshold == pytest.approx(0.4)  # serve's default
        assert msg.header["background"] == pytest.approx(float(np.median(frame)))
        assert np.all(msg.intensities > msg.heights)  # summed over 5x5 px of a 2 px wide peak
        assert msg.header["start_time"] == 1000 + t and msg.header["finder_ms"] >= 0
        assert abs(msg.header["time_ns"] - time.time_ns()) < 60e9
    stats = sub.stats_until(lambda s: s.get("atoms_frames") == len(movie.truth))
    assert stats["atoms_last"] == len(movie.positions[-1])
    assert stats["atoms_skipped"] == stats["atoms_failed"] == 0
    assert stats["atoms_ms_p50"] > 0 and stats["atoms_ms_p99"] >= stats["atoms_ms_p50"]
    assert stats["atoms_cpu_ms_p50"] > 0 and stats["atoms_cpu_ms_p99"] >= stats["atoms_cpu_ms_p50"]


def test_atoms_on_a_non_square_frame_are_x_y_in_pixels(identity_model, detector, daemon_factory, subscriber):
    # 72 x 100 (rows x columns) is not a multiple of the model's 8 on one side: padded and cropped back
    true_xy = np.array([[12.3, 15.7], [40.6, 20.2], [80.45, 50.9], [60.1, 60.55], [25.8, 55.3]])
    frame = render_atoms(true_xy, (72, 100), peak=1.0)
    _daemon, push, sub = start_atoms_daemon(daemon_factory, subscriber, detector, identity_model)
    push.send_multipart(encode_image(frame.astype("<f4"), series_id=1, image_id=0))
    atoms, _ = collect_atoms(sub, 1)
    push.close()
    (msg,) = atoms.values()
    assert msg.count == 5
    assert nearest_distance(true_xy, msg.positions).max() < 0.1  # x is the column, y the row
    assert np.all(msg.positions[:, 0] < 100) and np.all(msg.positions[:, 1] < 72)


def test_relative_threshold_counts_against_the_frame_s_highest_peak(
    identity_model, detector, daemon_factory, subscriber
):
    true_xy = np.array([[20.0, 20.0], [44.0, 20.0], [20.0, 44.0]])
    frame = render_atoms(true_xy[:1], 64, peak=1.0) + render_atoms(true_xy[1:], 64, peak=0.25)
    # the faint two are ~0.32 above the background: under the default 0.4, over 10 % of the brightest
    _daemon, push, sub = start_atoms_daemon(
        daemon_factory, subscriber, detector, identity_model, atoms=AtomsConfig(threshold=0.1, relative=True)
    )
    push.send_multipart(encode_image(frame.astype("<f4"), series_id=1, image_id=0))
    atoms, _ = collect_atoms(sub, 1)
    push.close()
    (msg,) = atoms.values()
    assert msg.count == 3 and nearest_distance(true_xy, msg.positions).max() < 0.1
    assert nearest_distance(true_xy[:1], msg.positions[:1])[0] < 0.1  # the brightest first
    assert msg.heights[1] < 0.4 and msg.threshold == pytest.approx(0.1 * msg.heights[0])  # the absolute one applied


# --------------------------------------------------------------------------- evidence, tracks and hops

#: Dose (e-/px/frame) of the counting movie below: an atom's peak is ~80 counts over ~3, so the
#: near-identity model's output has atoms ~0.5 above the background and noise well under 0.4.
COUNTS_DOSE = 10_000.0


@pytest.fixture
def counts_model(tmp_path) -> Path:
    """:func:`tanh_model` for raw counts at :data:`COUNTS_DOSE`: the background (~3 counts) maps to
    0.5 when published, an atom's peak (~80) to ~1."""
    return tanh_model(tmp_path / "tanh-counts.onnx", scale=0.05, offset=3.0)


def send_and_wait(push, sub, frame: np.ndarray, series_id: int, image_id: int) -> tuple[object, list]:
    """Send one frame, read until its atoms message: ``(AtomsMessage, [HopsMessage published with
    it])``: the hops this frame confirmed, which name the earlier frame they landed on.

    Lockstep, so the atom thread (which skips frames when behind) sees every frame."""
    push.send_multipart(encode_image(frame, series_id=series_id, image_id=image_id))
    hops = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        msg = sub.recv(0.2)
        if msg is None or msg.header.get("series_id") != series_id:
            continue
        if msg.topic == TOPIC_HOPS:
            hops.append(decode_hops(msg))
        elif msg.topic == TOPIC_ATOMS and msg.header.get("image_id") == image_id:
            return decode_atoms(msg), hops
    raise AssertionError(f"no atoms message for series {series_id} image {image_id}")


def test_evidence_tracks_and_hops_of_a_simulated_movie_and_resets(counts_model, detector, daemon_factory, subscriber):
    """A counting movie with hops through a real daemon: evidence and track ids on every atom, a
    hops message for each true hop (published once the next frame confirms it, naming the frame it
    landed on), tracks reset at a series restart and a size change, and a frame of thousands of
    "atoms" capped and counted."""
    movie = simulate_movie(
        SimConfig(frames=14, seed=5, dose=COUNTS_DOSE, clusters=(), hop_prob=0.12, line_shift=0.0)
    )
    raw = movie.noisy_as("<u2")
    truth_hops = true_hops(movie.positions)
    assert len(truth_hops) >= 5  # the seed's draw: enough hops to score
    _daemon, push, sub = start_atoms_daemon(daemon_factory, subscriber, detector, counts_model)
    push.send_multipart(encode_start(7))
    found, ids, events = [], [], []
    for t in range(len(raw) + 1):  # the last frame once more: it confirms the hops of the last one
        msg, hops = send_and_wait(push, sub, raw[min(t, len(raw) - 1)], 7, t)
        for h in hops:  # the atoms stay where they landed: each hop confirmed by the very next frame
            assert (h.series_id, h.image_id, h.count) == (7, t - 1, len(h))
            events.extend(
                HopEvent(int(i), int(b_id), h.image_id, tuple(map(float, b)), tuple(map(float, a)), 0.0)
                for i, b, a, b_id in zip(h.track_ids, h.before, h.after, h.before_image_ids)
            )
        if t == len(raw):
            break
        assert msg.evidence is not None and msg.track_ids is not None
        assert msg.evidence.dtype == np.float32 and msg.track_ids.dtype == np.int32
        assert len(msg.evidence) == len(msg.track_ids) == len(msg) == msg.count
        assert msg.weak == int(np.count_nonzero(~(msg.evidence >= 3.0))) and msg.weak_z == 3.0
        assert msg.header["analysis_ms"] >= msg.header["finder_ms"] and msg.header["analysis_cpu_ms"] > 0
        # every true atom is found, and the raw counts support it strongly
        ti, fi, _ = match_points(movie.positions[t], msg.positions, 1.5)
        assert ti.size == len(movie.positions[t]), f"frame {t}: {ti.size} of {len(movie.positions[t])} atoms"
        assert np.all(msg.evidence[fi] > 10), msg.evidence[fi]
        found.append(np.array(msg.positions))
        ids.append(np.array(msg.track_ids))
    assert np.all(ids[0] >= 0) and len(np.unique(np.concatenate(ids))) == len(movie.positions[0])  # one track per atom
    assert identity_switches(found, ids, movie.positions)["switches"] == 0
    # exactly the hops of the same rule offline on the same atoms (ids, frames, before, after)...
    _, offline = link_frames([*found, found[-1]], max_disp=7.0)
    key = lambda e: (e.track_id, e.image_id_before, e.image_id_after, e.before, e.after)  # noqa: E731
    assert sorted(map(key, events)) == sorted(map(key, offline)) and len(events) == len(offline)
    # ...and those are the truth's: every hop, named by the frame it landed on, and no other; an
    # atom that hops in two consecutive frames makes one event, from its first site to its last
    moved = {(h.frame, h.atom) for h in truth_hops}
    single = [h for h in truth_hops if (h.frame - 1, h.atom) not in moved and (h.frame + 1, h.atom) not in moved]
    scores = hop_scores(events, movie.positions, max_delay=1)
    assert scores["precision"] == 1.0 and scores["n_matched"] == len(events) >= len(single) >= 5, scores
    assert scores["recall_by_delay"][0] >= len(single) / len(truth_hops) and scores["placement_error_px"] < 0.3
    n_tracks = int(np.concatenate(ids).max()) + 1
    stats = sub.stats_until(lambda s: s["atoms_frames"] == len(raw) + 1)
    assert stats["hops"] == len(events) and stats["tracks_resets"] == 0 and stats["atoms_capped"] == 0
    assert stats["tracks_live"] == len(movie.positions[0])
    assert stats["atoms_weak_last"] == msg.weak

    # a series restart (start, image ids from 0 again): every track ends, new ids from here
    push.send_multipart(encode_start(7))
    again, _ = send_and_wait(push, sub, raw[0], 7, 0)
    assert len(again) == len(movie.positions[0]) and again.track_ids.min() >= n_tracks
    # a restart whose image ids go on counting up: the start message alone ends the tracks
    push.send_multipart(encode_start(7))
    restarted, _ = send_and_wait(push, sub, raw[1], 7, 1)
    assert restarted.track_ids.min() > again.track_ids.max()
    # a frame of another size: the tracks end again
    crop, _ = send_and_wait(push, sub, np.ascontiguousarray(raw[2, :96, :112]), 7, 2)
    assert crop.track_ids.min() > restarted.track_ids.max()
    # a noise frame: thousands of one-pixel spikes, each an "atom" on the identity model's output
    rng = np.random.default_rng(3)
    noise = np.full((192, 192), 3, "<u2")
    yy, xx = np.mgrid[1:192:3, 1:192:3]
    noise[yy + rng.integers(-1, 2, yy.shape), xx + rng.integers(-1, 2, xx.shape)] = 60
    spikes, _ = send_and_wait(push, sub, noise, 7, 3)
    assert spikes.count > MAX_ATOMS_ANNOTATED and len(spikes) == MAX_ATOMS_ANNOTATED
    assert len(spikes.evidence) == len(spikes.track_ids) == MAX_ATOMS_ANNOTATED and spikes.weak is not None
    assert np.all(spikes.track_ids > crop.track_ids.max())
    stats = sub.stats_until(lambda s: s["atoms_frames"] == len(raw) + 5)
    assert stats["tracks_resets"] == 4 and stats["atoms_capped"] == 1 and stats["atoms_failed"] == 0
    assert stats["tracks_live"] == MAX_ATOMS_ANNOTATED and stats["atoms_last"] == spikes.count
    push.close()


def test_atoms_without_evidence_and_tracks_are_the_plain_message(counts_model, detector, daemon_factory, subscriber):
    _daemon, push, sub = start_atoms_daemon(
        daemon_factory, subscriber, detector, counts_model, atoms=AtomsConfig(evidence=False, tracks=False)
    )
    frame = (3 + render_atoms(np.array([[20.3, 30.6], [40.0, 12.0]]), 64, peak=80.0)).astype("<u2")
    msg, hops = send_and_wait(push, sub, frame, 1, 0)
    push.close()
    assert msg.count == 2 and not hops
    assert msg.evidence is msg.track_ids is msg.weak is msg.weak_z is None
    assert not {"evidence", "track_ids", "weak", "weak_z"} & set(msg.header)
    stats = sub.stats_until(lambda s: s["atoms_frames"] == 1)
    assert not {"hops", "tracks_live", "tracks_resets", "atoms_weak_last", "atoms_capped"} & set(stats)


def test_evidence_without_tracks_is_each_frame_s_own(counts_model, detector, daemon_factory, subscriber):
    """Evidence on, tracks off: the z-score of the frame alone, as atom_evidence gives it."""
    from livedenoise.analysis import atom_evidence

    _daemon, push, sub = start_atoms_daemon(
        daemon_factory, subscriber, detector, counts_model, atoms=AtomsConfig(tracks=False, weak_z=50.0)
    )
    rng = np.random.default_rng(2)
    xy = np.array([[20.3, 30.6], [40.0, 12.0], [50.5, 50.2]])
    frame = rng.poisson(3 + render_atoms(xy, 64, peak=80.0)).astype("<u2")
    msg, hops = send_and_wait(push, sub, frame, 1, 0)
    push.close()
    assert msg.count == 3 and not hops and msg.track_ids is None
    np.testing.assert_allclose(msg.evidence, atom_evidence(frame, msg.positions).z, rtol=1e-5)
    assert msg.weak_z == 50.0 and msg.weak == int(np.count_nonzero(msg.evidence < 50.0))


# --------------------------------------------------------------------------- faults


def test_finder_failures_and_odd_frames_are_counted_and_serving_goes_on(
    identity_model, detector, daemon_factory, subscriber, monkeypatch
):
    real = livedenoise.daemon._atoms.find_atoms

    def flaky(frame, **kw):
        if frame.shape == (40, 40):  # the finder hits a bug on this frame
            raise RuntimeError("injected finder failure")
        return real(frame, **kw)

    monkeypatch.setattr(livedenoise.daemon._atoms, "find_atoms", flaky)
    daemon, push, sub = start_atoms_daemon(daemon_factory, subscriber, detector, identity_model)
    one_atom = render_atoms(np.array([[10.4, 12.6]]), 24, peak=1.0).astype("<f4")
    nan = one_atom.copy()
    nan[3, 3] = np.nan
    frames = [
        (0, np.zeros((32, 32), "<f4")),  # blank: a flat frame has no atoms
        (1, np.zeros((40, 40), "<f4")),  # the finder fails on it
        (2, nan),  # NaN pixels: malformed, never denoised, so no atoms either
        (3, np.ones((5, 3), "<f4")),  # tiny
        (4, one_atom),
    ]
    for image_id, frame in frames:
        push.send_multipart(encode_image(frame, series_id=1, image_id=image_id))
    push.send_multipart([pack({"htype": "image", "series_id": 1})])  # malformed input message
    atoms, denoised = collect_atoms(sub, 3)
    push.close()

    assert sorted(atoms) == [(1, 0), (1, 3), (1, 4)]
    assert (1, 1) in denoised and (1, 2) not in denoised  # 1 was denoised, only its atoms failed
    assert atoms[1, 0].count == atoms[1, 3].count == 0 and len(atoms[1, 0].positions) == 0
    assert atoms[1, 4].count == 1 and nearest_distance([[10.4, 12.6]], atoms[1, 4].positions)[0] < 0.1
    stats = sub.stats_until(lambda s: s["atoms_failed"] == 1 and s["atoms_frames"] == 3)
    assert stats["denoised"] == 4 and stats["malformed"] == 2 and stats["atoms_skipped"] == 0
    assert all(t.is_alive() for t in daemon._threads) and daemon.atoms._thread.is_alive()


def test_a_slow_finder_skips_frames_and_never_holds_back_the_stream(
    identity_model, detector, daemon_factory, subscriber, monkeypatch
):
    real = livedenoise.daemon._atoms.find_atoms

    def slow(frame, **kw):
        time.sleep(0.2)
        return real(frame, **kw)

    monkeypatch.setattr(livedenoise.daemon._atoms, "find_atoms", slow)
    n = 40
    # lossless: frames are never dropped, so a finder that held back publishing would hold back everything
    _daemon, push, sub = start_atoms_daemon(daemon_factory, subscriber, detector, identity_model, queue=QueueConfig(lossless=True))
    frame = render_atoms(np.array([[10.0, 10.0]]), 24, peak=1.0).astype("<f4")
    t0 = time.monotonic()
    for i in range(n):
        push.send_multipart(encode_image(frame, series_id=1, image_id=i))
    denoised, _ = sub.collect(n, timeout=20)
    elapsed = time.monotonic() - t0
    push.close()
    assert len(denoised) == n
    assert elapsed < n * 0.2 / 2, f"{n} frames took {elapsed:.1f} s: publishing waited for the finder"
    stats = sub.stats_until(lambda s: s["atoms_frames"] + s["atoms_skipped"] == n, timeout=20)
    assert stats["atoms_skipped"] > 0 and stats["atoms_failed"] == 0 and stats["dropped"] == 0


def test_daemon_without_atoms_publishes_none(conv_model, detector, daemon_factory, subscriber):
    push, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, pull=True)
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    for i in range(3):
        push.send_multipart(encode_image(np.full((16, 16), 5, "<u2"), series_id=1, image_id=i))
    atoms, denoised = collect_atoms(sub, 1, timeout=2)
    push.close()
    assert not atoms and len(denoised) == 3
    assert "atoms_frames" not in sub.last_stats


# --------------------------------------------------------------------------- the wire format


def test_atoms_message_round_trip_and_cap():
    rng = np.random.default_rng(0)
    k = MAX_ATOMS + 10
    pos, inten, heights = rng.random((k, 2)) * 100, rng.random(k), np.sort(rng.random(k))[::-1]
    parts = encode_atoms({"series_id": 2, "image_id": 9, "start_time": 5}, pos, inten, heights, threshold=0.25)
    assert len(parts) == 2 and parts[0] == TOPIC_ATOMS and len(parts[1]) < 64 * 1024
    msg = decode_atoms(parts)
    assert (msg.series_id, msg.image_id, msg.count, len(msg), msg.threshold) == (2, 9, k, MAX_ATOMS, 0.25)
    np.testing.assert_array_equal(msg.positions, pos[:MAX_ATOMS].astype(np.float32))
    np.testing.assert_array_equal(msg.intensities, inten[:MAX_ATOMS].astype(np.float32))
    np.testing.assert_array_equal(msg.heights, heights[:MAX_ATOMS].astype(np.float32))
    assert msg.header["start_time"] == 5
    empty = decode_atoms(encode_atoms({"series_id": 1, "image_id": 0}, np.zeros((0, 2)), [], [], threshold=0.3))
    assert empty.count == 0 and empty.positions.shape == (0, 2)
    with pytest.raises(ValueError):
        encode_atoms({}, np.zeros(4), np.zeros(4), np.zeros(4), threshold=0.3)  # positions not (K, 2)


def _atoms_header(**changes) -> dict:
    f4 = np.zeros(3, "<f4").tobytes()
    header = {"series_id": 1, "image_id": 4, "count": 3, "threshold": 0.3, "positions": f4 * 2,
              "intensities": f4, "heights": f4}
    return {k: v for k, v in {**header, **changes}.items() if v is not None}


@pytest.mark.parametrize(
    "parts",
    [
        [b"denoised", pack(_atoms_header())],
        [TOPIC_ATOMS, pack(_atoms_header()), b"\x00" * 4],
        [TOPIC_ATOMS, b"\xc1 not msgpack"],
        [TOPIC_ATOMS, pack(_atoms_header(image_id=True))],
        [TOPIC_ATOMS, pack(_atoms_header(count=None))],
        [TOPIC_ATOMS, pack(_atoms_header(count=2))],
        [TOPIC_ATOMS, pack(_atoms_header(threshold="high"))],
        [TOPIC_ATOMS, pack(_atoms_header(positions=[1.0, 2.0]))],
        [TOPIC_ATOMS, pack(_atoms_header(positions=b"\x00" * 20))],
        [TOPIC_ATOMS, pack(_atoms_header(heights=b"\x00" * 8))],
        [TOPIC_ATOMS, pack(_atoms_header(count=MAX_ATOMS + 1, positions=b"\x00" * 8 * (MAX_ATOMS + 1),
                                         intensities=b"\x00" * 4 * (MAX_ATOMS + 1), heights=b"\x00" * 4 * (MAX_ATOMS + 1)))],
    ],
    ids=["topic", "payload", "not-msgpack", "bool-id", "no-count", "count-too-small", "threshold-str",
         "positions-list", "positions-odd", "lengths-differ", "too-many"],
)
def test_bad_atoms_messages_are_rejected(parts):
    with pytest.raises(MalformedMessage):
        decode_atoms(parts)


def test_viewer_buffer_counts_bad_atoms_and_finds_those_of_the_shown_frame():
    from livedenoise.viewer import StreamBuffer

    buf = StreamBuffer()

    def atoms(image_id, k, series_id=1):
        xy = np.full((k, 2), float(image_id))
        return encode_atoms({"series_id": series_id, "image_id": image_id}, xy, np.ones(k), np.ones(k), threshold=0.3)

    buf.ingest_parts([TOPIC_ATOMS, pack(_atoms_header(count=1))])
    buf.ingest_parts(encode_published(TOPIC_ATOMS, {"series_id": 1}, np.zeros((2, 2), "<f4")))
    assert buf.counts["malformed"] == 2 and buf.last_atoms is None and buf.atoms_version == 0
    for i, k in ((3, 2), (5, 4), (6, 1)):
        buf.ingest_parts(atoms(i, k))
    buf.ingest_parts(atoms(7, 9, series_id=2))
    assert buf.counts["atoms"] == 4 and buf.atoms_version == 4
    assert buf.atoms_for(1, 5).image_id == 5  # its own
    assert buf.atoms_for(1, 4).image_id == 3  # not here yet: the newest of an earlier frame
    assert buf.atoms_for(1, 2) is None  # nothing earlier
    assert buf.atoms_for(1, 40) is None  # too far behind to stand in
    assert buf.atoms_for(2, 7).count == 9 and buf.atoms_for(3, 7) is None
    hist = buf.history()
    np.testing.assert_array_equal(hist.atoms, [2, 4, 1, 9])
    assert hist.atoms_t.shape == (4,) and np.all(np.diff(hist.atoms_t) >= 0)


# --------------------------------------------------------------------------- the commands


def test_atoms_threshold_option():
    from livedenoise.cli._serve import atoms_config
    from livedenoise.daemon import AtomsConfig

    assert atoms_config(False, None) is None  # atom finding off
    assert atoms_config(True, None) == AtomsConfig()  # the defaults
    assert atoms_config(True, "0.15") == AtomsConfig(threshold=0.15, relative=False)
    assert atoms_config(True, " 25% ") == AtomsConfig(threshold=0.25, relative=True)
    for text, atoms in (("0.2", False), ("lots", True), ("%", True)):
        with pytest.raises(LivedenoiseError):
            atoms_config(atoms, text)
    for thr, rel in ((-0.1, False), (1.5, True), (float("nan"), False)):
        with pytest.raises(LivedenoiseError, match="atoms-threshold"):
            AtomsConfig(threshold=thr, relative=rel)
    # evidence and tracks: options given without --atoms are refused; bad values are one-line errors
    assert atoms_config(True, "0.3", hop_px=3.0, tracks=False) == AtomsConfig(threshold=0.3, hop_px=3.0, tracks=False)
    with pytest.raises(LivedenoiseError, match="--hop-px, --atoms-weak-z needs --atoms"):
        atoms_config(False, None, given=("hop-px", "atoms-weak-z"), hop_px=3.0)
    for fields in ({"hop_px": 8.0}, {"hop_px": 0.0}, {"track_max_disp": -1.0}, {"weak_z": float("inf")},
                   {"hop_confirm": -1}):
        with pytest.raises(LivedenoiseError):
            AtomsConfig(**fields)
    with pytest.raises(LivedenoiseError, match="--hop-confirm needs --atoms"):
        atoms_config(False, None, given=("hop-confirm",), hop_confirm=2)


def test_serve_with_atoms_imports_neither_torch_nor_qt(identity_model):
    """The import boundary with atom finding on and frames flowing through it."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        import numpy as np, zmq
        from livedenoise.daemon import AtomsConfig, Daemon, ServeConfig
        from livedenoise.engine import EngineConfig
        from livedenoise.protocol import encode_image
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.bind("tcp://127.0.0.1:*")  # the detector first, on port 0; the daemon connects to it
        source = push.getsockopt_string(zmq.LAST_ENDPOINT)
        daemon = Daemon(ServeConfig(model=Path({str(identity_model)!r}), source=source, pull=True,
                                    publish="tcp://127.0.0.1:*", engine=EngineConfig(provider="cpu", shapes=()),
                                    atoms=AtomsConfig()))
        daemon.start()
        for i in range(5):
            push.send_multipart(encode_image(np.zeros((32, 32), "<f4"), series_id=1, image_id=i))
        deadline = time.monotonic() + 20
        while daemon.atoms.frames < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        daemon.stop()
        push.close(0)
        print("FRAMES:", daemon.atoms.frames)
        print("LOADED:", ",".join(sorted(m for m in sys.modules if m.split(".")[0] in
              ("torch", "PySide6", "PyQt6", "PyQt5", "pyqtgraph", "scipy", "skimage", "matplotlib"))))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "FRAMES: 5\n" in proc.stdout and "LOADED: \n" in proc.stdout, proc.stdout


def test_protocol_doc_atoms_example_runs_against_a_real_daemon(identity_model, detector, daemon_factory):
    """The subscriber lines of docs/protocol.md's atoms section, run as written."""
    text = (REPO / "docs" / "protocol.md").read_text()
    section = text[text.index("### Atoms subscriber") :]
    start = section.index("```python") + len("```python")
    example = section[start : section.index("```", start)]
    push, source = detector()
    daemon = daemon_factory(model=identity_model, source=source, pull=True, atoms=AtomsConfig())
    proc = subprocess.Popen(
        [sys.executable, "-c", example, daemon.publish_address, "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    frame = render_atoms(np.array([[10.4, 12.6], [20.0, 8.0]]), 32, peak=1.0).astype("<f4")
    try:
        deadline = time.monotonic() + 60
        i = 0
        while proc.poll() is None and time.monotonic() < deadline:  # until the example has 3 (slow joiner)
            push.send_multipart(encode_image(frame, series_id=1, image_id=i))
            i += 1
            time.sleep(0.05)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        push.close()
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3 and all("2 atoms" in line for line in lines), out
    assert "[10.4, 12.6]" in lines[0] or "[20.0, 8.0]" in lines[0], out


def test_viewer_draws_the_atoms_of_a_live_daemon(qtbot, identity_model, detector, daemon_factory, tmp_path):
    """serve --atoms -> view: rings on the denoised frame at the published positions, and a count plot."""
    pytest.importorskip("pyqtgraph", reason="the viewer extra is not installed")
    from livedenoise.viewer import MonitorWindow

    true_xy = np.array([[12.3, 15.7], [40.6, 20.2], [30.45, 50.9]])
    frame = render_atoms(true_xy, 64, peak=1.0).astype("<f4")
    push, source = detector()
    daemon = daemon_factory(model=identity_model, source=source, pull=True, atoms=AtomsConfig())
    win = MonitorWindow(daemon.publish_address, snapshot_dir=tmp_path)
    qtbot.addWidget(win)
    try:
        win.show()
        qtbot.waitExposed(win)
        sent = iter(range(10**6))

        def drawn() -> bool:  # keep sending until the subscription is in effect and atoms are drawn
            push.send_multipart(encode_image(frame, series_id=1, image_id=next(sent)))
            qtbot.wait(30)
            return win.atoms_shown is not None and win.atoms_shown.image_id == win.frame.image_id

        qtbot.waitUntil(drawn, timeout=15000)
        spots = np.array(win.atoms_overlay.getData()).T
        assert spots.shape == (3, 2) and win.atoms_overlay.isVisible()
        assert nearest_distance(true_xy + 0.5, spots).max() < 0.1  # pixel centres at +0.5 on the image item
        qtbot.waitUntil(lambda: win.atoms_points.getData()[1] is not None, timeout=3000)  # the 2 Hz plots
        assert set(win.atoms_points.getData()[1]) == {3}
    finally:
        push.close()
        win.close()


def test_the_status_line_says_what_runs():
    """serve's console line and the monitor's text are one function of the stats message."""
    from livedenoise.protocol import status_line, status_parts

    line = status_line({"fps_in": 150.0, "atoms_frames": 9, "atoms_last": 27, "atoms_ms_p50": 0.61})
    assert line.startswith("daemon received –") and "in 150.0 fps" in line
    assert line.endswith("| atoms newest 27  finder p50 0.61 ms  skipped –  failed –")
    full = status_parts({"atoms_last": 27, "atoms_weak_last": 2, "hops": 5, "tracks_live": 3, "tracks_resets": 0,
                         "guard": "does not fit", "score_db": 2.04, "score_filter_db": 3.1, "score_frames": 40})
    assert full["atoms"].endswith("weak 2  tracks 3 (resets 0)  hops 5")
    assert full["guard"] == "does not fit  score +2.0 dB, best filter +3.1 dB (40 frames)"
    assert list(status_parts({"fps_in": 150.0, "css": "odd"})) == ["daemon"]
    assert "CSS odd" in status_line({"css": "odd"})  # a daemon of another version: shown as it came
