"""The ``calibration`` header field through a real daemon: passed through on ``raw`` and
``denoised``, kept by the recording, and a pixel size other than the model's training one
warned about once per series and counted in ``stats``."""

from __future__ import annotations

import logging

import numpy as np

from livedenoise.daemon import QueueConfig, RecordingConfig
from livedenoise.engine import EngineConfig, ModelCard
from livedenoise.protocol import Calibration, encode_image
from livedenoise.recording import read_index
from livedenoise.testing import DEFAULT_NORM, build_onnx_model


def test_calibration_passes_through_is_recorded_and_a_mismatch_is_counted(
    tmp_path, detector, daemon_factory, subscriber, caplog
):
    card = ModelCard(preset="test-conv", normalisation=DEFAULT_NORM, pixel_size_nm=0.0384)
    model = build_onnx_model(tmp_path / "m.onnx", card=card)
    push, source = detector()
    daemon = daemon_factory(
        model=model, source=source, pull=True, engine=EngineConfig(provider="cpu", shapes=(), max_batch=4),
        queue=QueueConfig(lossless=True), recording=RecordingConfig(directory=tmp_path / "run", raw=True),
    )
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    same, other = Calibration(0.0390, 0.25), Calibration(0.0768, 0.25)  # +1.6 %: fine; 2x: warned
    frames = np.random.default_rng(0).integers(0, 9, (6, 16, 16)).astype("<u2")
    plan = [(1, same), (1, same), (2, other), (2, other), (2, other), (3, None)]
    with caplog.at_level(logging.WARNING, logger="livedenoise.publish"):
        for i, (series, cal) in enumerate(plan):
            push.send_multipart(encode_image(frames[i], series_id=series, image_id=i, calibration=cal))
        denoised, raw = sub.collect(6)
        stats = sub.stats_until(lambda s: s.get("denoised", 0) >= 6)
    assert [d.header.get("calibration") for d in denoised] == [c.to_header() if c else None for _, c in plan]
    assert [r.header.get("calibration") for r in raw] == [d.header.get("calibration") for d in denoised]
    assert stats["calibration_mismatch"] == 3
    warned = [r for r in caplog.records if "pixel size" in r.getMessage()]
    assert len(warned) == 1 and "series 2" in warned[0].getMessage()  # once per series
    assert daemon.stop() == 0
    recorded = {e.image_ids: e.calibration for e in read_index(tmp_path / "run") if e.kind == "denoised"}
    assert recorded == {(0, 1): same, (2, 3, 4): other, (5,): None}
