"""Archives on a Dask cluster (livedenoise.archive): several simulated movies denoised on a real
2-worker LocalCluster (processes on 127.0.0.1) equal, byte for byte, what the one-process
``denoise`` writes; a worker killed in the middle of a range, the job still completes, each file
written once; a file that cannot be read, an output that cannot be written, an unreachable
scheduler: one line each, the other files finish. And stage-1 trainings as Dask tasks give the
weights the sequential runs give."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed", reason='the distributed extra: pip install -e ".[distributed]"')

from livedenoise.archive import DenoiseSpec, denoise_files, output_paths
from livedenoise.cluster import ClusterSpec, connect
from livedenoise.engine import default_model_path
from livedenoise.io import write_imagej
from livedenoise.sim import SimConfig, simulate_movie

N_MOVIES = 3
FRAMES = 40
MODEL = "temporal"  # a 3-frame model: a range needs the frames before it as history


def run_cli(*args, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livedenoise", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict[str, list[Path]]:
    """Three simulated movies (calibrated ImageJ TIFFs) and what the one-process ``denoise`` makes of each."""
    root = tmp_path_factory.mktemp("archive")
    movies, refs, printed = [], [], []
    for i in range(N_MOVIES):
        sim = simulate_movie(SimConfig(frames=FRAMES, seed=10 + i))
        path = root / f"movie{i}.tif"
        write_imagej(path, sim.noisy_as("<u2"), pixel_size_nm=0.04, frame_time_s=0.05 * (i + 1))
        movies.append(path)
        ref = root / "ref" / f"movie{i}.tif"
        ref.parent.mkdir(exist_ok=True)
        proc = run_cli("denoise", path, "-o", ref, "--model", MODEL)
        assert proc.returncode == 0, proc.stderr
        refs.append(ref)
        printed.append(proc.stdout + proc.stderr)
    return {"movies": movies, "refs": refs, "printed": printed}


@pytest.fixture(scope="module")
def client():
    with connect(ClusterSpec(workers=2)) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


def spec() -> DenoiseSpec:
    return DenoiseSpec(model=str(default_model_path().with_name(f"{MODEL}.onnx")), threads=1)


def assert_same_files(outputs: list[Path], refs: list[Path]) -> None:
    for out, ref in zip(outputs, refs, strict=True):
        assert out.read_bytes() == ref.read_bytes(), out  # pixels, calibration and ImageJ metadata


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_cli_on_two_local_workers_equals_one_process(archive, tmp_path):
    out = tmp_path / "out"
    pattern = str(archive["movies"][0].parent / "movie*.tif")
    proc = run_cli("denoise", pattern, "-o", out, "--workers", 2, "--model", MODEL)
    assert proc.returncode == 0, proc.stderr
    assert "2 workers" in proc.stdout and f"{N_MOVIES} of {N_MOVIES} movies denoised" in proc.stdout
    assert_same_files([out / p.name for p in archive["movies"]], archive["refs"])
    assert leftovers(out) == []


def test_ranges_across_workers_equal_one_process_and_zarr_keeps_calibration(archive, client, tmp_path):
    # 16-frame ranges: each movie is 3 tasks, on both workers; ranges after the first get their history
    outs = output_paths(archive["movies"], tmp_path, "tif")
    report = denoise_files(archive["movies"], outs, spec(), client=client, task_pixels=16 * 128 * 128)
    assert report.failed == [] and report.tasks == N_MOVIES * (1 + 3 + 1)  # prepare, 3 ranges, check
    assert_same_files(outs, archive["refs"])
    for f, printed in zip(report.files, archive["printed"], strict=True):  # the figures denoise prints for one file
        c = f.checked
        assert c is not None and f"mean CSS output: {c.css_mean:.4f}" in printed, printed
        assert f"score: {c.model_db:+.2f} dB over raw" in printed and f"best causal filter {c.filter_db:+.2f} dB" in printed
        assert c.guard in ("fits", "does not fit", "undecided") and c.guard_message in printed
    used = client.run(lambda: __import__("livedenoise.archive._tasks", fromlist=["x"]).engines_loaded())
    assert sorted(used.values()) == [1, 1]  # one engine per worker process, for all its tasks

    import tifffile
    import zarr

    zouts = output_paths(archive["movies"][:1], tmp_path / "z", "zarr")
    zouts[0].parent.mkdir()
    report = denoise_files(archive["movies"][:1], zouts, DenoiseSpec(**{**spec_fields(), "format": "zarr"}),
                           client=client, task_pixels=16 * 128 * 128)
    assert report.failed == []
    arr = zarr.open_array(str(zouts[0]), mode="r")
    np.testing.assert_array_equal(arr[:], tifffile.imread(archive["refs"][0]))
    assert arr.attrs["pixel_size_nm"] == pytest.approx(0.04) and arr.attrs["frame_time_s"] == pytest.approx(0.05)


def spec_fields() -> dict:
    s = spec()
    return {f: getattr(s, f) for f in s.__slots__}


@pytest.mark.parametrize("name", ["rt", "temporal"])
def test_the_engine_gives_the_same_bits_whatever_its_batch_and_threads(name):
    # why a range may run on a worker with one onnxruntime thread: the CPU output does not depend on it
    from livedenoise.engine import Engine

    frames = simulate_movie(SimConfig(frames=12, seed=3)).noisy_as("<u2")
    model = default_model_path().with_name(f"{name}.onnx")
    outs = []
    for batch, threads in ((8, 0), (3, 1), (1, 2)):
        engine = Engine(model, provider="cpu", max_batch=batch, threads=threads)
        got = []
        for a in range(0, len(frames), batch):
            got += engine.infer(list(frames[a : a + batch]), [0] * len(frames[a : a + batch])).outputs
        outs.append(np.stack(got))
    for other in outs[1:]:
        np.testing.assert_array_equal(other, outs[0])


def test_a_worker_killed_mid_job_the_job_completes_each_file_once(archive, tmp_path):
    marker = tmp_path / "killed-once"

    def kill_once(path: str) -> str:  # a local function: pickled by value for the workers
        import os as os_
        import signal
        from pathlib import Path as P

        if not P(path).exists():
            P(path).touch()
            os_.kill(os_.getpid(), signal.SIGKILL)  # the worker dies while its other thread denoises a range
        return "spared"

    outs = output_paths(archive["movies"], tmp_path / "out", "tif")
    outs[0].parent.mkdir()
    # two task threads per worker: the killer runs beside a range task, not after it
    with connect(ClusterSpec(workers=2, threads=2)) as c:
        c.wait_for_workers(2, timeout=60)
        victim = sorted(c.scheduler_info()["workers"])[0]
        killer = []

        def on_progress(done: int, known: int) -> None:
            if done and not killer:
                killer.append(c.submit(kill_once, str(marker), workers=[victim], allow_other_workers=True, pure=False, priority=100))

        c.run(lambda: None)  # both up
        report = denoise_files(archive["movies"], outs, spec(), client=c, task_pixels=8 * 128 * 128,
                               on_progress=on_progress)
        assert killer and killer[0].result(timeout=60) == "spared"  # run again elsewhere, after the kill
    assert marker.exists()
    assert report.failed == [], [f.error for f in report.failed]
    assert_same_files(outs, archive["refs"])
    assert sorted(p.name for p in outs[0].parent.iterdir()) == sorted(p.name for p in outs)  # once each, no partials


def test_bad_inputs_one_line_each_the_others_finish(archive, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in archive["movies"][:2]:
        os.symlink(p, folder / p.name)
    (folder / "broken.tif").write_bytes(b"II*\x00 not a tiff at all")
    out = tmp_path / "out"
    out.mkdir()
    (out / "movie1.tif").mkdir()  # its output cannot be written: a folder has the name
    proc = run_cli("denoise", folder / "*.tif", "-o", out, "--workers", 2, "--model", MODEL)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, errors
    assert any("broken.tif" in e for e in errors) and any("movie1.tif" in e for e in errors)
    assert "1 of 3 movies denoised" in proc.stdout
    assert_same_files([out / "movie0.tif"], archive["refs"][:1])
    assert leftovers(out) == []

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    proc = run_cli("denoise", folder / "movie*.tif", "-o", blocked / "out", "--workers", 2, "--model", MODEL)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: cannot write to the output folder {blocked / 'out'}: Not a directory"
    ], proc.stderr


def test_an_unreachable_scheduler_is_one_line(archive, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    proc = run_cli("denoise", *archive["movies"][:2], "-o", tmp_path, "--scheduler", f"tcp://127.0.0.1:{port}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_stage1_runs_as_dask_tasks_equal_the_sequential_runs(tmp_path):
    torch = pytest.importorskip("torch")
    import tifffile

    from livedenoise.engine import Engine
    from trainer.checkpoint import load_checkpoint
    from trainer.run import TrainConfig, train

    movie = simulate_movie(SimConfig(size=128, frames=8, seed=5)).noisy
    frames = tmp_path / "movie.tif"
    tifffile.imwrite(frames, movie, photometric="minisblack")
    # seed 2: both runs upright after their one step (no re-initialisation to spend time on)
    common = {"frames": frames, "preset": "tiny", "teachers": 2, "steps": 1, "distil_steps": 1, "check_every": 0,
              "figures": False, "progress": False, "seed": 2, "sample_frames": 4}
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's CPU sums depend on the thread count: both paths run each run on one
    try:
        seq = train(TrainConfig(out=tmp_path / "seq.onnx", **common), log=lambda m: None)
        logs: list[str] = []
        par = train(TrainConfig(out=tmp_path / "par.onnx", parallel=True, workers=2, threads=1, **common), log=logs.append)
    finally:
        torch.set_num_threads(before)
    assert any("2 runs as Dask tasks on 2 worker(s)" in line for line in logs), logs
    a, b = load_checkpoint(tmp_path / "seq.ckpt"), load_checkpoint(tmp_path / "par.ckpt")
    assert a["teacher"] == b["teacher"] == 1 and [r["seed"] for r in b["teachers"]] == [2, 1002]
    for ra, rb in zip(a["teachers"], b["teachers"], strict=True):
        assert ra["ms2c"].keys() == rb["ms2c"].keys()
        assert all(torch.equal(ra["ms2c"][k], rb["ms2c"][k]) for k in ra["ms2c"])
    assert [r["final_losses"] for r in seq["teachers"]] == [r["final_losses"] for r in par["teachers"]]
    served = [np.stack(Engine(tmp_path / f"{n}.onnx", provider="cpu").infer(list(movie[:2])).outputs) for n in ("seq", "par")]
    np.testing.assert_array_equal(*served)
    assert sorted(p.name for p in tmp_path.glob("par*.ckpt")) == ["par.ckpt"]  # the runs' own checkpoints removed
