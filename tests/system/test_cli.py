"""The pipeline's CLI commands as a user runs them (subprocesses): results, one-line errors, exit codes."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import msgpack
import numpy as np
import pytest
import tifffile
import zmq

from livedenoise.analysis import css_series
from livedenoise.daemon import (
    AtomsConfig,
    DectrisConfig,
    GuardConfig,
    QueueConfig,
    RecordingConfig,
    SecurityConfig,
    ServeConfig,
)
from livedenoise.engine import EngineConfig
from livedenoise.sim import ReplayConfig
from livedenoise.testing import LOOPBACK, REPLAY_BIND, read_address


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "livedenoise", *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr
    for f in fragments:
        assert f in last, last


def test_denoise_writes_stack_and_prints_css(conv_model, write_tiff, frames_u2, tmp_path):
    tiff = write_tiff(frames_u2)
    out = tmp_path / "out.tif"
    proc = run_cli("denoise", tiff, "-o", out, "--model", conv_model, "--max-batch", "5")
    assert proc.returncode == 0, proc.stderr
    result = tifffile.imread(out)
    assert result.shape == frames_u2.shape and result.dtype == np.float32
    assert result.min() >= 0 and result.max() <= 1
    scaled = (frames_u2 - frames_u2.min()) / float(frames_u2.max() - frames_u2.min())
    assert f"mean CSS input (scaled to [0,1] by its min/max): {css_series(scaled).mean():.4f}" in proc.stdout
    assert f"mean CSS output: {css_series(result).mean():.4f}" in proc.stdout


@pytest.mark.parametrize("name, frames_in", [("temporal", 3), ("lowdose", 5)])
def test_denoise_with_a_shipped_multi_frame_model_by_name(name, frames_in, write_tiff, tmp_path):
    from livedenoise.engine import Engine, default_model_path
    from livedenoise.sim import SimConfig, simulate_movie

    frames = simulate_movie(SimConfig(size=64, frames=6, seed=4)).noisy
    out = tmp_path / "out.tif"
    proc = run_cli("denoise", write_tiff(frames), "-o", out, "--model", name)
    assert proc.returncode == 0, proc.stderr
    path = default_model_path().with_name(f"{name}.onnx")
    engine = Engine(path, provider="cpu")
    assert engine.card.input_frames == frames_in
    expected = np.stack(engine.infer(list(frames)).outputs)  # one series, in order: causal history
    np.testing.assert_allclose(tifffile.imread(out), expected, atol=1e-5)
    assert not np.allclose(expected[4], np.stack(Engine(path).infer([frames[4]]).outputs)[0])


def test_denoise_with_the_shipped_cpu_model_by_name(write_tiff, tmp_path):
    from livedenoise.engine import Engine, default_model_path
    from livedenoise.sim import SimConfig, simulate_movie

    frames = simulate_movie(SimConfig(size=128, frames=5, seed=4)).noisy[:, :100, :72]  # not multiples of 16
    out = tmp_path / "out.tif"
    proc = run_cli("denoise", write_tiff(frames), "-o", out, "--model", "rt")
    assert proc.returncode == 0, proc.stderr
    engine = Engine(default_model_path().with_name("rt.onnx"), provider="cpu")
    assert engine.card.preset == "rt" and engine.card.size_multiple == 16 and engine.card.training["distil"]["used"]
    result = tifffile.imread(out)
    assert result.shape == frames.shape
    np.testing.assert_allclose(result, np.stack(engine.infer(list(frames)).outputs), atol=1e-5)
    assert result.std() > 0.01  # a denoised frame, not a constant


def test_css_prints_the_series(write_tiff, frames_u2):
    proc = run_cli("css", write_tiff(frames_u2))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(frames_u2)  # T - 1 pairs and the mean
    assert lines[-1].startswith("mean")
    assert lines[0].split("\t")[:2] == ["0", "1"]


def test_replay_cli_streams_a_tiff(write_tiff, frames_u2):
    """As one series, with the id asked for (--series-id: several replays into one daemon, each its own ids)."""
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "livedenoise", "replay", str(write_tiff(frames_u2)), "--push", "--bind", LOOPBACK,
         "--fps", "200", "--series-id", "7"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    headers = []
    try:
        addr, _ = read_address(proc.stderr, REPLAY_BIND)  # replay binds port 0 and logs the address
        pull.connect(addr)
        while len(headers) < len(frames_u2) + 2 and pull.poll(10_000):
            headers.append(msgpack.unpackb(pull.recv_multipart()[0]))
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        pull.close()
    assert proc.returncode == 0
    assert [h["htype"] for h in headers] == ["start"] + ["image"] * len(frames_u2) + ["end"]
    assert [h["image_id"] for h in headers[1:-1]] == list(range(len(frames_u2)))
    assert {h["series_id"] for h in headers} == {7}


def test_demo_prints_status_lines_with_atoms_by_default(conv_model):
    proc = run_cli("demo", "--model", conv_model, "--duration", "3.5", "--no-view", "--fps", "60", "--size", "64")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("demo: synthetic 64x64 frames") and " + atoms -> " in proc.stdout.splitlines()[0]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("daemon received")]
    assert len(lines) >= 2, proc.stdout
    assert "CSS" in lines[-1] and "p99" in lines[-1] and "dropped" in lines[-1]
    assert "| atoms " in lines[-1], lines[-1]  # the showcase finds atoms unless --no-atoms


# serve option -> (configuration class, field, --help panel): the help text and default come from the field
SERVE_OPTIONS = {
    "source": (ServeConfig, "source", "Stream"),
    "publish": (ServeConfig, "publish", "Stream"),
    "push_output": (ServeConfig, "push_output", "Stream"),
    "pull": (ServeConfig, "pull", "Stream"),
    "scan": (DectrisConfig, "scan", "Stream"),
    "centre": (DectrisConfig, "centre", "Stream"),
    "channel": (DectrisConfig, "channel", "Stream"),
    "dectris_stream": (DectrisConfig, "stream", "Stream"),
    "lossless": (QueueConfig, "lossless", "Queue"),
    "queue": (QueueConfig, "capacity", "Queue"),
    "max_wait_ms": (QueueConfig, "max_wait_ms", "Queue"),
    "max_age_ms": (QueueConfig, "max_age_ms", "Queue"),
    "realtime": (ServeConfig, "realtime", "Engine"),
    "trim_interval": (ServeConfig, "trim_interval", "Engine"),
    "provider": (EngineConfig, "provider", "Engine"),
    "threads": (EngineConfig, "threads", "Engine"),
    "spin": (EngineConfig, "spin", "Engine"),
    "max_batch": (EngineConfig, "max_batch", "Engine"),
    "max_batch_pixels": (EngineConfig, "max_batch_pixels", "Engine"),
    "fp16": (EngineConfig, "fp16", "Engine"),
    "cuda_graph": (EngineConfig, "cuda_graph", "Engine"),
    "trt_cache": (EngineConfig, "trt_cache", "Engine"),
    "record_raw": (RecordingConfig, "raw", "Recording"),
    "record_chunk": (RecordingConfig, "chunk_frames", "Recording"),
    "record_chunk_seconds": (RecordingConfig, "chunk_seconds", "Recording"),
    "atoms_evidence": (AtomsConfig, "evidence", "Atoms"),
    "atoms_tracks": (AtomsConfig, "tracks", "Atoms"),
    "atoms_weak_z": (AtomsConfig, "weak_z", "Atoms"),
    "hop_px": (AtomsConfig, "hop_px", "Atoms"),
    "track_max_disp": (AtomsConfig, "track_max_disp", "Atoms"),
    "hop_confirm": (AtomsConfig, "hop_confirm", "Atoms"),
    "curve_secret": (SecurityConfig, "curve_secret", "Security"),
    "curve_allow": (SecurityConfig, "curve_allow", "Security"),
    "source_curve_server_key": (SecurityConfig, "source_server_key", "Security"),
    "guard_window": (GuardConfig, "window", "Guard"),
    "guard_interval": (GuardConfig, "interval", "Guard"),
    "unexplained_rate": (GuardConfig, "unexplained_rate", "Guard"),
    "score_rate": (GuardConfig, "score_rate", "Guard"),
}


def test_serve_help_is_grouped_in_panels_and_each_help_is_the_config_fields():
    from typer.main import get_command

    from livedenoise._options import default_for, help_for
    from livedenoise.cli import app

    params = {p.name: p for p in get_command(app).commands["serve"].params}
    for name, (cls, field, panel) in SERVE_OPTIONS.items():
        param = params[name]
        assert param.help == help_for(cls, field) and param.help, name
        assert param.default == default_for(cls, field), name
        assert param.rich_help_panel == panel, name
    partial = {"source_format": "Stream", "annulus": "Stream", "mask": "Stream", "model": "Engine", "warmup_size": "Engine", "pipeline_cpus": "Engine", "record": "Recording", "atoms": "Atoms",
               "atoms_threshold": "Atoms", "guard": "Guard", "view": "Viewer and logging", "log_level": "Viewer and logging"}
    assert set(params) == set(SERVE_OPTIONS) | set(partial)  # every option sits in a panel
    for name, panel in partial.items():
        assert params[name].rich_help_panel == panel, name
    assert params["model"].help.startswith(help_for(ServeConfig, "model")) and "lowdose" in params["model"].help
    assert params["warmup_size"].help == help_for(EngineConfig, "shapes") and params["warmup_size"].default == "128x128"
    assert params["record"].help == help_for(RecordingConfig, "directory")
    assert params["mask"].help == help_for(DectrisConfig, "masks") and params["mask"].default is None
    assert params["pipeline_cpus"].help == help_for(ServeConfig, "pipeline_cpus") and params["pipeline_cpus"].default == ""
    assert params["atoms"].help == help_for(ServeConfig, "atoms") and params["atoms"].default is False
    assert help_for(AtomsConfig, "threshold")[1:] in params["atoms_threshold"].help

    replay = {p.name: p for p in get_command(app).commands["replay"].params}
    for name, param in replay.items():
        field = "path" if name == "tiff" else name
        assert param.help == help_for(ReplayConfig, field), name
        if name != "tiff":
            assert param.default == default_for(ReplayConfig, field), name
    demo = {p.name: p for p in get_command(app).commands["demo"].params}
    assert demo["atoms"].default is True and demo["atoms"].help == help_for(ServeConfig, "atoms")

    proc = run_cli("serve", "--help")
    assert proc.returncode == 0
    for panel in ("Stream", "Queue", "Engine", "Recording", "Atoms", "Guard", "Security", "Viewer and logging"):
        assert f"─ {panel} ─" in proc.stdout, panel


def test_help_and_serve_help_load_neither_torch_nor_qt():
    code = textwrap.dedent(
        """
        import sys
        from livedenoise.cli import main
        for args in (["--help"], ["serve", "--help"], ["demo", "--help"], ["view", "--help"]):
            sys.argv = ["livedenoise", *args]
            try:
                main()
            except SystemExit as exc:
                assert exc.code == 0, (args, exc.code)
        forbidden = ("torch", "PySide6", "PyQt6", "PyQt5", "pyqtgraph", "scipy", "skimage", "matplotlib")
        print("LOADED:", ",".join(sorted(m for m in sys.modules if m.split(".")[0] in forbidden)))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED: \n" in proc.stdout, proc.stdout[-500:]


@pytest.fixture
def busy_addr():
    """An address whose port is held by another socket."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield f"tcp://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_errors_are_one_line_with_exit_code_2(conv_model, build_model, write_tiff, frames_u2, tmp_path, busy_addr):
    not_tiff = tmp_path / "notes.tif"
    not_tiff.write_text("not an image")
    rgb = write_tiff(np.zeros((2, 8, 8, 3), np.uint8), "rgb.tif")
    junk_model = tmp_path / "junk.onnx"
    junk_model.write_bytes(b"\x00\x01garbage")
    bare = build_model("bare.onnx", with_card=False)
    out = tmp_path / "o.tif"
    tiff = write_tiff(frames_u2)

    assert_one_line_error(run_cli("denoise", not_tiff, "-o", out, "--model", conv_model), "as TIFF")
    assert_one_line_error(run_cli("css", not_tiff), "as TIFF")
    assert_one_line_error(run_cli("css", tmp_path / "absent.tif"), "not found")
    assert_one_line_error(run_cli("css", rgb), "grey frames")
    assert_one_line_error(run_cli("css", write_tiff(frames_u2[:1], "one.tif")), "at least two frames")
    assert_one_line_error(run_cli("denoise", tiff, "-o", out, "--model", junk_model), "cannot load model")
    assert_one_line_error(run_cli("denoise", tiff, "-o", out, "--model", bare), "no 'livedenoise' metadata")
    assert_one_line_error(run_cli("denoise", tiff, "-o", out, "--model", tmp_path / "none.onnx"), "not found")
    assert_one_line_error(
        run_cli("denoise", tiff, "-o", tmp_path / "no" / "dir" / "o.tif", "--model", conv_model), "cannot write"
    )
    assert_one_line_error(run_cli("serve", "--model", conv_model, "--publish", busy_addr), "cannot publish")
    assert_one_line_error(run_cli("serve", "--model", conv_model, "--source", "nonsense://x"), "cannot connect")
    assert_one_line_error(run_cli("replay", "--synthetic", "--bind", busy_addr), "cannot bind")
    assert_one_line_error(run_cli("replay", not_tiff), "as TIFF")
    assert_one_line_error(run_cli("serve", "--model", junk_model), "cannot load model")
    assert_one_line_error(run_cli("serve", "--model", conv_model, "--provider", "nope"), "not available")
    assert_one_line_error(run_cli("serve", "--model", conv_model, "--max-batch-pixels", "0"), "at least 1")
    assert_one_line_error(run_cli("serve", "--model", conv_model, "--warmup-size", "128x128,12"), "'12'", "HEIGHTxWIDTH")
    assert_one_line_error(run_cli("serve", "--model", conv_model, "--record-raw"), "--record-raw needs --record")
    assert_one_line_error(run_cli("serve", "--model", conv_model, "--atoms-threshold", "0.2"), "needs --atoms")
    assert_one_line_error(run_cli("demo", "--no-atoms", "--atoms-threshold", "0.2"), "needs --atoms")
    assert_one_line_error(run_cli("demo", "--atoms-threshold", "lots"), "expected a number (0.4) or a percentage")
    assert_one_line_error(run_cli("serve", "--model", conv_model, "--hop-px", "3"), "--hop-px needs --atoms")
    assert_one_line_error(run_cli("demo", "--hop-px", "9"), "need 0 < hop < max displacement")
    assert_one_line_error(run_cli("view", "--after", "1"), "--after needs --screenshot")
    assert_one_line_error(run_cli("view", "--screenshot", tmp_path / "no" / "shot.png"), "cannot write screenshot")
    assert_one_line_error(run_cli("view", "--screenshot", tmp_path / "shot.png", "--after", "-1"), "at least 0")


@pytest.mark.parametrize("kind", ["mos2", "particle"])
def test_simulate_dense_writes_movie_truth_and_positions_that_evaluate_reads(kind, tmp_path):
    import json

    noisy, truth, atoms, report = (tmp_path / n for n in ("n.tif", "t.tif", "a.json", "rep.json"))
    proc = run_cli(
        "simulate", "dense", "--kind", kind, "--out", noisy, "--truth", truth, "--positions", atoms,
        "--frames", "3", "--size", "96", "--seed", "2",
    )
    assert proc.returncode == 0, proc.stderr
    n, t = tifffile.imread(noisy), tifffile.imread(truth)
    assert n.shape == t.shape == (3, 96, 96) and n.dtype == t.dtype == np.float32
    meta = json.loads(atoms.read_text())
    k = len(meta["group_id"])
    assert meta["kind"] == kind and meta["pixel_size_A"] == 0.4
    assert np.asarray(meta["frames"]).shape == (3, k, 2) and len(meta["weights"]) == len(meta["site"]) == k
    assert n.mean() == pytest.approx(meta["dose_e_per_px"] * t.mean() + 0.5, rel=0.05)
    assert f"dose {meta['dose_e_per_px']:.4g} e-/px" in proc.stdout
    # the truth itself finds every column and adatom
    proc = run_cli("evaluate", "--denoised", truth, "--truth", truth, "--positions", atoms, "--json", report)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(report.read_text())
    assert rep["n_true"] == 3 * k and rep["f1"] > 0.99
    assert_one_line_error(run_cli("simulate", "dense", "--kind", "graphene", "--out", noisy), "--kind", "mos2, particle")
