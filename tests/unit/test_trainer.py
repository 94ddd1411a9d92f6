"""The Noise2Atom trainer: losses by hand, sub-model shapes, a short real training, export, resume.

CPU only and small: a scaled-down preset (64 x 64 crops, a few channels) where a test needs
training steps; the shipped presets where the test is about their shapes.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from livedenoise.engine import METADATA_KEY, ModelCard, Normalisation, causal_windows, normalise
from livedenoise.errors import LivedenoiseError
from trainer import losses
from trainer.checkpoint import load_checkpoint
from trainer.domains import CleanDomain, FittedDomain, NoisyDomain, clean_domain, frame_statistics, load_frames
from trainer.export import op_histogram, run_onnx, to_onnx_bytes, verify, with_card
from trainer.loop import Trainer, polarity
from trainer.networks import Critic, LowPass, UNet, gaussian_kernel
from trainer.presets import LITE, PAPER, RT, TINY, CriticConfig, NetConfig, Preset

MICRO = Preset(
    name="micro",
    generator=NetConfig(widths=(4, 8, 8, 8), xception=(3, 5), n_res=1, conv="reflect"),
    critic=CriticConfig(widths=(4, 8, 8, 8), conv="reflect"),
    crop=64,
    steps=10,
)


@pytest.fixture(scope="module")
def movie() -> np.ndarray:
    from livedenoise.sim import SimConfig, simulate_movie

    return simulate_movie(SimConfig(size=128, frames=8, seed=5)).noisy


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


# ------------------------------------------------------------------------------- losses by hand


def test_wasserstein_is_the_mean_of_the_product():
    y = torch.tensor([[1.0], [2.0], [3.0]])
    assert losses.wasserstein(1.0, y).item() == pytest.approx(2.0)
    assert losses.wasserstein(-1.0, y).item() == pytest.approx(-2.0)
    assert losses.wasserstein(torch.tensor([[1.0], [-1.0], [1.0]]), y).item() == pytest.approx(2.0 / 3)


def test_cycle_loss_is_the_mean_absolute_difference():
    c = torch.zeros(2, 1, 4, 4)
    cycled = torch.full((2, 1, 4, 4), 0.5)
    cycled[1] = -0.25
    assert losses.cycle_loss(c, cycled).item() == pytest.approx((0.5 + 0.25) / 2)


def test_lfc_loss_compares_low_passed_images():
    lp = LowPass(33, 15.0)
    s = torch.ones(1, 1, 40, 40)
    cycled = torch.full((1, 1, 40, 40), 0.25)
    # A normalised filter keeps constants: |1 - 0.25| everywhere on the valid 8 x 8 output.
    assert losses.lfc_loss(lp, s, cycled).item() == pytest.approx(0.75, abs=1e-5)
    # Zero-mean high-frequency noise is (almost) invisible to the low-frequency cycle.
    checker = (torch.arange(40)[:, None] + torch.arange(40)[None, :]) % 2 * 2.0 - 1.0
    assert losses.lfc_loss(lp, torch.zeros(1, 1, 40, 40), checker[None, None]).item() < 0.01


def test_gradient_penalty_is_per_sample():
    # D(y) = 0.5 * |y|^2 per sample has gradient y: norms 1 and 3 give (0 + 4) / 2 = 2, where a
    # single norm over the batch would give (1 - sqrt(10))^2 = 4.68.
    def critic(y):
        return 0.5 * (y**2).flatten(1).sum(1, keepdim=True)

    y = torch.zeros(2, 1, 2, 2)
    y[0, 0, 0, 0] = 1.0
    y[1, 0, 1, 1] = 3.0
    assert losses.gradient_penalty(critic, y).item() == pytest.approx(2.0)
    # Interpolates between identical real and fake images are those images whatever u is.
    loss, info = losses.critic_loss(critic, y, y, gp_lambda=10.0)
    w = -critic(y).mean() + critic(y).mean()
    assert loss.item() == pytest.approx(w.item() + 10 * 2.0)
    assert info["gp"] == pytest.approx(2.0)


def test_critic_loss_by_hand_and_interpolation_weights():
    real = torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1)
    fake = torch.tensor([-1.0, 0.0]).reshape(2, 1, 1, 1)

    def critic(y):  # D(y) = y: gradient 1 everywhere, so the penalty is 0
        return y.flatten(1)

    loss, info = losses.critic_loss(critic, real, fake)
    assert loss.item() == pytest.approx(-1.5 + -0.5)
    assert info["gp"] == pytest.approx(0.0)
    y = losses.interpolate(real, fake, u=torch.tensor([0.25, 1.0]).reshape(2, 1, 1, 1))
    assert y.flatten().tolist() == pytest.approx([0.25 * 1 + 0.75 * -1, 2.0])


def test_adversarial_loss_maps_translated_images_to_true():
    scores = torch.tensor([[2.0], [4.0]])
    assert losses.adversarial_loss(lambda x: scores, torch.zeros(2, 1, 2, 2)).item() == pytest.approx(-3.0)


# ------------------------------------------------------------------------------- sub-models


def test_ms2b_is_a_fixed_normalised_gaussian():
    lp = LowPass()
    k = lp.kernel[0, 0].double()
    assert k.shape == (33, 33)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(k, k.T) and torch.equal(k, k.flip(0))
    assert k.argmax().item() == 16 * 33 + 16
    # sigma 15: the profile falls as exp(-d^2 / (2 * 15^2))
    assert (k[16, 0] / k[16, 16]).item() == pytest.approx(math.exp(-(16**2) / (2 * 15.0**2)), rel=1e-5)
    assert list(lp.parameters()) == []  # no bias, never trained
    assert lp(torch.zeros(1, 1, 128, 128)).shape == (1, 1, 96, 96)  # no padding
    # The presets read the paper's "variance of sigma = 15.0" as variance 15 (docs/training.md).
    assert all(p.lfc_sigma == pytest.approx(15**0.5) and p.lfc_size == 33 for p in (PAPER, LITE))


@pytest.mark.parametrize("norm", ["instance", "layer"])
def test_paper_generator_keeps_128(norm):
    net = UNet(PAPER.with_norm(norm).generator).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 1, 128, 128))
    assert y.shape == (1, 1, 128, 128)
    assert y.abs().max() <= 1.0


def test_small_presets_keep_512_and_odd_sizes_through_engine_padding():
    for preset in (TINY, LITE):
        net = UNet(preset.generator).eval()
        m = preset.generator.size_multiple
        assert m == 8
        with torch.no_grad():
            assert net(torch.randn(1, 1, 512, 512)).shape == (1, 1, 512, 512)
        # a 130 x 141 frame: the engine's rule (reflect-pad to the multiple, run, crop back)
        x = np.random.default_rng(0).normal(size=(130, 141)).astype(np.float32)
        padded = np.pad(x, ((0, -130 % m), (0, -141 % m)), mode="reflect")
        with torch.no_grad():
            y = net(torch.from_numpy(padded)[None, None])[0, 0, :130, :141]
        assert y.shape == (130, 141)


def test_rt_student_runs_on_sub_pixel_phases_and_exports_as_one_depth_to_space():
    net_cfg = RT.student_net
    assert net_cfg.shuffle == 2 and net_cfg.size_multiple == 16 and RT.generator == TINY.generator
    net = UNet(net_cfg).eval()
    assert net.stem.branches[0].in_channels == 4  # the 2 x 2 phases of one input frame
    m = net_cfg.size_multiple
    x = np.random.default_rng(0).normal(size=(130, 141)).astype(np.float32)
    padded = np.pad(x, ((0, -130 % m), (0, -141 % m)), mode="reflect")
    with torch.no_grad():
        y = net(torch.from_numpy(padded)[None, None])[0, 0]
    assert y.shape == padded.shape and y.abs().max() <= 1.0
    blocks = y.reshape(y.shape[0] // 2, 2, y.shape[1] // 2, 2)
    assert float((blocks - blocks.mean(dim=(1, 3), keepdim=True)).abs().max()) > 1e-3  # full resolution out
    ops = op_histogram(to_onnx_bytes(net))
    assert ops.get("DepthToSpace") == 1 and ops.get("InstanceNormalization", 0) > 0


def test_valid_conv_pairs_keep_sizes_without_padding():
    net = UNet(NetConfig(widths=(4, 4, 4, 4), xception=(1, 3, 5, 7), n_res=1, conv="valid")).eval()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert all(tuple(c.padding) == (0, 0) for c in convs)
    with torch.no_grad():
        for size in (64, 72, 200):
            assert net(torch.randn(2, 1, size, size)).shape == (2, 1, size, size)


def test_critic_scores_each_sample():
    d = Critic(TINY.critic, 128).eval()
    assert d(torch.randn(3, 1, 128, 128)).shape == (3, 1)
    drops = [m for m in d.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 4 and all(m.p == 0.25 for m in drops)


# ------------------------------------------------------------------------------- domains


def test_clean_domain_background_at_minus_one_peaks_at_one():
    c = CleanDomain().sample(4, np.random.default_rng(0))
    assert c.shape == (4, 1, 128, 128)
    for img in c:
        assert img.min().item() == pytest.approx(-1.0, abs=1e-4)
        assert img.max().item() == pytest.approx(1.0, abs=1e-6)
        assert (img < -0.9).float().mean() > 0.3  # mostly background


def test_clean_domain_peak_variance_sets_the_peak_width():
    narrow = CleanDomain(variance=(0.5, 0.5)).sample(4, np.random.default_rng(0))
    wide = CleanDomain(variance=(10.0, 10.0)).sample(4, np.random.default_rng(0))
    # Same lattice (same RNG stream), narrower kernel: far fewer pixels above the background.
    assert (narrow > -0.5).float().mean() < 0.5 * (wide > -0.5).float().mean()
    assert PAPER.clean_variance == (1.0, 10.0)  # the paper's range


@pytest.fixture(scope="module")
def lattice_content():
    from livedenoise.analysis import estimate_content
    from livedenoise.sim import DenseConfig, simulate_dense

    return estimate_content(simulate_dense(DenseConfig(kind="mos2", size=160, frames=24, seed=1)).noisy, 0.04)


def test_fitted_domain_has_the_movies_local_density_width_and_spacing(lattice_content):
    from livedenoise.analysis import estimate_content

    domain, line = clean_domain("fitted", lattice_content)
    assert isinstance(domain, FittedDomain) and "fitted to the movie" in line and "lattice" in line
    c = domain.sample(8, np.random.default_rng(0)).numpy()
    assert c.shape == (8, 1, 128, 128) and c.min() == -1.0 and np.allclose(c.max(axis=(1, 2, 3)), 1.0)
    # scattered columns (the default) at the lattice's local density, never closer than its
    # closest pair of sites, peaks of the measured width: measured again on the clean samples
    cell = abs(np.linalg.det(np.asarray(lattice_content.basis)))
    assert domain.density == pytest.approx(2 / cell)
    found = [estimate_content((img[0] + 1) * 50) for img in c]
    full = [f for f in found if f.density_px > 0.6 * domain.density]  # the others have an edge or are a particle
    assert len(full) >= 3 and all(f.density_px < 1.6 * domain.density for f in found)
    assert np.median([f.width_px for f in found]) == pytest.approx(lattice_content.width_px, rel=0.3)
    assert not any(f.lattice for f in found)
    # lattice scenes, where asked: the movie's cell (rotated by <= 4 degrees, scaled by <= 3 %)
    lattice = FittedDomain(lattice_content, lattice_share=1.0).sample(8, np.random.default_rng(1)).numpy()
    side = np.hypot(*np.asarray(lattice_content.basis).T).mean()
    found = [estimate_content((img[0] + 1) * 50) for img in lattice]
    same = [f for f in found if f.lattice and len(f.basis) == 2 and abs(np.hypot(*np.asarray(f.basis).T).mean() / side - 1) < 0.05]
    assert len(same) >= 4, [(f.lattice, f.basis) for f in found]


def test_clean_domain_is_the_papers_where_the_movie_is_like_it(movie, lattice_content):
    from livedenoise.analysis import estimate_content

    sparse = estimate_content(movie)
    domain, line = clean_domain("fitted", sparse, variance=(1.0, 10.0))
    assert isinstance(domain, CleanDomain) and "like the paper's world" in line
    assert isinstance(clean_domain("paper", lattice_content)[0], CleanDomain)
    weak = estimate_content(np.zeros((4, 128, 128), np.float32))
    domain, line = clean_domain("fitted", weak)
    assert isinstance(domain, CleanDomain) and "cannot estimate" in line and "constant" in line
    with pytest.raises(LivedenoiseError, match="--domain 'lattice'"):
        clean_domain("lattice", sparse)


def test_noisy_domain_uses_the_serving_normalisation(movie):
    norm = frame_statistics(movie)
    assert norm.offset == pytest.approx(float(np.median(movie)))
    top = np.percentile(normalise(movie, norm), 99.9)
    assert top == pytest.approx(1.0, abs=1e-4)
    dom = NoisyDomain(movie, norm, 64)
    assert np.array_equal(dom.frames[:, 0], normalise(movie, norm))
    crops = dom.sample(5, np.random.default_rng(1))
    assert crops.shape == (5, 1, 64, 64)
    flat = frame_statistics(movie, flatten_sigma=10.0)
    assert flat.flatten_sigma == 10.0


def test_noisy_domain_crops_a_causal_window_at_one_place(movie):
    from trainer.domains import sample_frames

    windows, idx = sample_frames(movie, 4, np.random.default_rng(0), input_frames=3)
    assert windows.shape == (4, 3, 128, 128) and idx.shape == (4,)
    assert np.array_equal(windows[:, -1], movie[idx]) and np.array_equal(windows[:, 0], movie[np.maximum(idx - 2, 0)])
    norm = frame_statistics(movie)
    crops = NoisyDomain(windows, norm, 64).sample(6, np.random.default_rng(1)).numpy()
    assert crops.shape == (6, 3, 64, 64)
    full = normalise(windows, norm)
    for crop in crops:  # every frame of a window comes from the same sampled frame and place
        hits = [
            (i, y, x)
            for i in range(4)
            for y, x in zip(*np.nonzero(full[i, 2, : 128 - 63, : 128 - 63] == crop[2, 0, 0]))
            if np.array_equal(full[i, :, y : y + 64, x : x + 64], crop)
        ]
        assert hits, "crop is not one window cropped at one place"


# ------------------------------------------------------------------------------- training


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_a_few_dozen_steps_lower_the_cycle_losses(movie):
    norm = frame_statistics(movie)
    tr = Trainer(MICRO, movie, norm, seed=0, check_every=0, log=lambda m: None)
    tr.run(40, progress=False, log_every=0)
    h = tr.state.history
    first = {k: np.mean([r[k] for r in h[:5]]) for k in ("cycle", "lfc")}
    last = {k: np.mean([r[k] for r in h[-5:]]) for k in ("cycle", "lfc")}
    assert last["cycle"] < 0.8 * first["cycle"], (first, last)
    assert last["lfc"] < 0.8 * first["lfc"], (first, last)


def test_resume_continues_exactly(movie, tmp_path):
    norm = frame_statistics(movie)
    quiet = {"check_every": 0, "log": lambda m: None}
    straight = Trainer(MICRO, movie, norm, seed=3, **quiet)
    straight.run(4, progress=False, log_every=0)

    ckpt = tmp_path / "m.ckpt"
    first = Trainer(MICRO, movie, norm, seed=3, **quiet)
    first.run(2, checkpoint_path=ckpt, progress=False, log_every=0)
    again = Trainer(MICRO, movie, norm, seed=99, **quiet)  # everything comes from the checkpoint
    again.restore(load_checkpoint(ckpt))  # weights_only: a real checkpoint needs nothing else
    assert again.state.step == 2
    opt_a = again.opt["cycle"].state_dict()["state"]
    opt_f = first.opt["cycle"].state_dict()["state"]
    assert all(torch.equal(opt_a[i]["square_avg"], opt_f[i]["square_avg"]) for i in opt_f)
    again.run(4, progress=False, log_every=0)
    assert again.state.step == 4
    for name in ("ms2c", "mc2s", "critic", "ms2c_ema"):
        a, b = _state(getattr(straight, name)), _state(getattr(again, name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["cycle"] for r in again.state.history] == [r["cycle"] for r in straight.state.history]


def test_ctrl_c_leaves_a_checkpoint(movie, tmp_path, monkeypatch):
    tr = Trainer(MICRO, movie, frame_statistics(movie), seed=0, check_every=0, log=lambda m: None)
    real_step = tr.train_step

    def step():
        if tr.state.step == 2:
            raise KeyboardInterrupt
        return real_step()

    monkeypatch.setattr(tr, "train_step", step)
    ckpt = tmp_path / "m.ckpt"
    with pytest.raises(LivedenoiseError, match="resume with --resume"):
        tr.run(10, checkpoint_path=ckpt, progress=False, log_every=0)
    assert load_checkpoint(ckpt)["state"]["step"] == 2


class _MakesADirectory:
    """Unpickling it calls ``os.mkdir(path)``: what a crafted ``--resume`` file could do instead."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_resume_refuses_a_crafted_pickle_without_running_it(container, movie, tmp_path, monkeypatch, capsys):
    import pickle

    import tifffile

    pickle.loads(pickle.dumps(_MakesADirectory(tmp_path / "control")))  # the payload works when unpickled
    assert (tmp_path / "control").is_dir()
    target = tmp_path / "created"
    crafted = tmp_path / "evil.ckpt"
    evil = {"format": 1, "state": {"step": 0}, "payload": _MakesADirectory(target)}
    if container == "pickle":
        crafted.write_bytes(pickle.dumps(evil))
    else:
        torch.save(evil, crafted)
    with pytest.raises(LivedenoiseError, match=r"^cannot resume from .*evil\.ckpt: not a livedenoise checkpoint \(") as err:
        load_checkpoint(crafted)
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)
    frames = tmp_path / "movie.tif"
    tifffile.imwrite(frames, movie, photometric="minisblack")
    code, out = _cli(monkeypatch, capsys, "--frames", str(frames), "--out", str(tmp_path / "m.onnx"), "--resume", str(crafted))
    assert code == 2 and out.strip().splitlines() == [f"error: {err.value}"], out
    assert not target.exists()


@pytest.mark.parametrize(
    "content, reason",
    [(b"not a checkpoint at all", "not a livedenoise checkpoint"), (None, "not a livedenoise checkpoint (no format-1")],
    ids=["bytes", "foreign-torch-file"],
)
def test_resume_refuses_other_files_with_one_line(content, reason, tmp_path):
    path = tmp_path / "other.ckpt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)  # a torch file, but not one of ours
    else:
        path.write_bytes(content)
    with pytest.raises(LivedenoiseError, match=re.escape(reason)) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


class _Inverted(torch.nn.Module):
    """A model with the paper's failure case 1: bright input -> background, dark -> peaks."""

    def forward(self, x):
        return -torch.tanh(4 * x)


def test_polarity_check_fires_on_an_inverted_model(movie):
    norm = frame_statistics(movie)
    s = NoisyDomain(movie, norm, 64).sample(6, np.random.default_rng(0))
    assert polarity(_Inverted(), s) < -0.5
    assert polarity(lambda x: torch.tanh(4 * x), s) > 0.5
    events = []
    tr = Trainer(MICRO, movie, norm, seed=0, check_every=0, log=events.append)
    tr.ms2c = _Inverted()
    tr.check_polarity()
    assert tr.state.reinits == 1 and isinstance(tr.ms2c, UNet)
    assert "inverted mapping" in events[0] and "re-initialising" in events[0]


def test_an_inverted_mapping_at_the_end_gets_fresh_networks_with_a_full_budget(movie, monkeypatch):
    """The exported Ms2c (the weight average) is checked when the budget is spent; inverted, the
    networks are re-initialised and trained for the whole budget again, at most MAX_REINITS times."""
    from trainer.loop import MAX_REINITS

    class InvertedWithWeight(_Inverted):  # trainable, so the schedule's backward passes run
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return super().forward(x) * self.w

    norm = frame_statistics(movie)
    events = []
    tr = Trainer(MICRO, movie, norm, seed=0, check_every=0, log=events.append)
    build = tr._build

    def inverted_build():  # every re-initialisation comes out inverted again
        build()
        tr.ms2c, tr.ms2c_ema = InvertedWithWeight(), InvertedWithWeight()

    monkeypatch.setattr(tr, "_build", inverted_build)
    inverted_build()
    state = tr.run(3, progress=False, log_every=0)
    assert state.reinits == MAX_REINITS and state.polarity < 0
    assert state.restart_at == 3 * MAX_REINITS and state.step == state.restart_at + 3  # each start: all 3 steps
    assert sum("re-initialising" in e for e in events) == MAX_REINITS
    assert f"after {MAX_REINITS} re-initialisations" in events[-1]


# ------------------------------------------------------------------------------- export


@pytest.mark.parametrize("norm", ["instance", "layer"])
def test_export_round_trip_matches_torch_with_one_norm_op_each(norm):
    cfg = replace(MICRO.generator, norm=norm)
    net = UNet(cfg).eval()
    raw = to_onnx_bytes(net)
    ops = op_histogram(raw)
    n_norm = sum(1 for m in net.modules() if isinstance(m, torch.nn.InstanceNorm2d) or type(m).__name__ == "LayerNorm1")
    assert ops.get("InstanceNormalization") == n_norm
    assert not {"ReduceMean", "Pow", "Sqrt", "Div"} & set(ops), ops
    rng = np.random.default_rng(0)
    diff = verify(net, raw, [rng.normal(size=(2, 1, 64, 96)).astype(np.float32), rng.normal(size=(1, 1, 136, 72)).astype(np.float32)])
    assert diff < 1e-4
    card = ModelCard(preset="micro", normalisation=Normalisation(0.5, 0.25, 12.0), training={"steps": 3})
    model = onnx.load_from_string(with_card(raw, card))
    meta = {p.key: p.value for p in model.metadata_props}
    back = ModelCard.from_metadata(meta)
    assert back.normalisation.flatten_sigma == 12.0 and back.training["steps"] == 3
    inputs = {i.name for i in model.graph.input}
    assert inputs == {"noisy"} and [o.name for o in model.graph.output] == ["clean"]
    assert run_onnx(with_card(raw, card), np.zeros((3, 1, 16, 24), np.float32)).shape == (3, 1, 16, 24)


@pytest.mark.slow
def test_train_end_to_end_writes_model_card_figures_and_resumes(movie, tmp_path):
    import onnxruntime as ort
    import tifffile

    from livedenoise.engine import Engine
    from trainer.run import TrainConfig, train

    frames = tmp_path / "movie.tif"
    tifffile.imwrite(frames, movie, photometric="minisblack")
    out = tmp_path / "m.onnx"
    logs = []
    summary = train(
        TrainConfig(
            frames=frames, out=out, preset="tiny", steps=2, flatten=20.0, peak_variance=(0.5, 1.5), check_every=0, distil_steps=3,
            teachers=1,
        ),
        log=logs.append,
    )
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    card = ModelCard.from_metadata(sess.get_modelmeta().custom_metadata_map)
    assert card.preset == "tiny" and card.size_multiple == 8 and card.input_frames == 1
    assert card.normalisation.flatten_sigma == 20.0
    assert card.training["steps"] == 2 and "L_cycle" in card.training["final_losses"]
    assert card.training["peak_variance"] == [0.5, 1.5]
    assert card.training["distil"]["window"] == 5 and card.training["distil"]["steps"] == 3  # tiny's stage 2
    assert {"version", "date", "frame_stats"} <= set(card.training)
    # the movie is sparse like the paper's world: fitted Domain C is the paper's generator
    assert card.expects["reliable"] and not card.expects["lattice"] and card.expects["density_px"] > 0
    assert "the paper's generator" in card.training["domain_c"]["generator"] and card.training["domain_c"]["choice"] == "fitted"
    assert summary["export"]["max_abs_diff"] < 1e-3
    assert (tmp_path / "m.losses.png").stat().st_size > 1000 and (tmp_path / "m.preview.png").stat().st_size > 1000
    assert any("max |onnxruntime - torch|" in line for line in logs)
    again = train(TrainConfig(frames=frames, out=out, steps=3, resume=tmp_path / "m.ckpt", check_every=0), log=logs.append)
    assert again["steps"] == 3 and any("resuming" in line and "step 2" in line for line in logs)
    assert again["peak_variance"] == [0.5, 1.5]  # the checkpoint's domain C, not the preset's
    assert again["distil"]["steps"] == 3  # and the checkpoint's distillation
    assert METADATA_KEY in sess.get_modelmeta().custom_metadata_map
    # tiny's stage 1 distilled anew into rt's faster student, nothing else trained
    rt = train(TrainConfig(frames=frames, out=tmp_path / "rt.onnx", preset="rt", steps=3, resume=tmp_path / "m.ckpt",
                           distil_steps=2, check_every=0, figures=False, teachers=1), log=logs.append)
    engine = Engine(tmp_path / "rt.onnx", provider="cpu")
    assert engine.card.preset == "rt" and engine.card.size_multiple == 16 and rt["steps"] == 3
    assert rt["distil"]["network"]["shuffle"] == 2 and rt["distil"]["steps"] == 2
    assert engine.card.normalisation == card.normalisation  # stage 1's, from the checkpoint
    assert np.stack(engine.infer(list(movie[:2])).outputs).shape == (2, *movie.shape[1:])  # 128 x 128 via padding
    with pytest.raises(LivedenoiseError, match="only a preset with the same stage 1"):
        train(TrainConfig(frames=frames, out=out, preset="lite", resume=tmp_path / "m.ckpt", check_every=0), log=logs.append)


@pytest.mark.slow
def test_several_stage1_runs_pick_the_most_upright_and_resume_run_by_run(movie, tmp_path, monkeypatch):
    import tifffile

    from livedenoise.engine import Engine
    from trainer.run import TrainConfig, train

    frames = tmp_path / "movie.tif"
    tifffile.imwrite(frames, movie, photometric="minisblack")
    quiet = {"check_every": 0, "figures": False, "steps": 2}
    new = {"frames": frames, "preset": "tiny", "distil_steps": 2, **quiet}
    one = train(TrainConfig(out=tmp_path / "one.onnx", teachers=1, **new), log=lambda m: None)
    logs: list[str] = []
    two = train(TrainConfig(out=tmp_path / "two.onnx", teachers=2, **new), log=logs.append)
    runs = two["teachers"]
    assert [r["seed"] for r in runs] == [0, 1000] and two["steps"] == sum(r["steps"] for r in runs) >= 4
    chosen = max(runs, key=lambda r: r["probe_polarity"])
    assert [r["chosen"] for r in runs] == [r is chosen for r in runs]
    assert two["distil"]["teacher_polarity"] == chosen["probe_polarity"] and two["final_losses"] == chosen["final_losses"]
    assert runs[0]["final_losses"] == one["teachers"][0]["final_losses"]  # run 1 is the one-run training
    assert runs[0]["probe_polarity"] == one["teachers"][0]["probe_polarity"] == one["distil"]["teacher_polarity"]
    assert any(f"stage 2 learns from run {runs.index(chosen) + 1}" in line for line in logs)
    served = np.stack(Engine(tmp_path / "two.onnx", provider="cpu").infer(list(movie[:2])).outputs)

    # the one-run checkpoint continued with a second run: the same two runs, the same model
    train(TrainConfig(frames=frames, out=tmp_path / "more.onnx", resume=tmp_path / "one.ckpt", teachers=2, **quiet),
          log=lambda m: None)
    np.testing.assert_array_equal(np.stack(Engine(tmp_path / "more.onnx", provider="cpu").infer(list(movie[:2])).outputs), served)

    # Ctrl-C in run 2: the checkpoint holds run 1 finished and run 2 in progress; --resume ends both
    real_step = Trainer.train_step

    def step(self):
        if self.seed == 1000 and self.state.step == 1:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(LivedenoiseError, match="--resume"):
        train(TrainConfig(out=tmp_path / "cut.onnx", teachers=2, **new), log=lambda m: None)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    ckpt = load_checkpoint(tmp_path / "cut.ckpt")
    assert ckpt["teacher"] == 1 and len(ckpt["teachers"]) == 1 and ckpt["state"]["step"] == 1 and ckpt["base_seed"] == 0
    resumed = train(TrainConfig(frames=frames, out=tmp_path / "cut.onnx", resume=tmp_path / "cut.ckpt", **quiet), log=lambda m: None)
    assert [r["final_losses"] for r in resumed["teachers"]] == [r["final_losses"] for r in runs]
    np.testing.assert_array_equal(np.stack(Engine(tmp_path / "cut.onnx", provider="cpu").infer(list(movie[:2])).outputs), served)


# ------------------------------------------------------------------------------- bad input


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from livedenoise import cli

    monkeypatch.setattr(sys, "argv", ["livedenoise", "train", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.slow
def test_a_lattice_movie_trains_on_a_fitted_domain_c_kept_by_the_card_and_on_resume(tmp_path):
    from livedenoise.io import write_imagej
    from livedenoise.sim import DenseConfig, simulate_dense
    from trainer.run import TrainConfig, train

    frames = tmp_path / "mos2.tif"
    write_imagej(frames, simulate_dense(DenseConfig(kind="mos2", size=128, frames=12, seed=3)).noisy, pixel_size_nm=0.04)
    out = tmp_path / "f.onnx"
    logs: list[str] = []
    quiet = {"check_every": 0, "figures": False}
    train(TrainConfig(frames=frames, out=out, steps=2, distil=0, **quiet), log=logs.append)
    card = ModelCard.from_json(_card_json(out))
    assert card.expects["lattice"] and len(card.expects["motif"]) == 2 and card.expects["density_nm2"] > 10
    assert card.training["domain_c"]["generator"].startswith("Domain C fitted to the movie")
    ckpt = load_checkpoint(tmp_path / "f.ckpt")
    assert ckpt["preset"]["domain"] == "fitted" and ckpt["preset"]["clean_content"]["lattice"]
    train(TrainConfig(frames=frames, out=out, steps=3, resume=tmp_path / "f.ckpt", **quiet), log=logs.append)
    assert sum(line.startswith("Domain C fitted to the movie") for line in logs) == 2  # the checkpoint's, on resume
    train(TrainConfig(frames=frames, out=tmp_path / "p.onnx", steps=1, distil=0, domain="paper", **quiet), log=logs.append)
    assert any("the paper's generator (--domain paper)" in line for line in logs)


@pytest.mark.slow
def test_a_sparse_movie_trains_the_same_model_with_either_domain_choice(movie, tmp_path):
    """Nothing is lost on the movies the paper's Domain C fits: ``fitted`` draws the very same
    samples there, so the weights are the paper choice's bit for bit."""
    import tifffile

    from trainer.run import TrainConfig, train

    frames = tmp_path / "movie.tif"
    tifffile.imwrite(frames, movie, photometric="minisblack")
    weights = {}
    for choice in ("fitted", "paper"):
        train(TrainConfig(frames=frames, out=tmp_path / f"{choice}.onnx", steps=3, distil=0, domain=choice, check_every=0,
                          figures=False), log=lambda m: None)
        weights[choice] = load_checkpoint(tmp_path / f"{choice}.ckpt")["ms2c"]
    assert weights["fitted"].keys() == weights["paper"].keys()
    assert all(torch.equal(weights["fitted"][k], weights["paper"][k]) for k in weights["paper"])


def _card_json(path: Path) -> str:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map[METADATA_KEY]


def test_temporal_preset_trains_exports_and_serves_on_a_causal_window(movie, tmp_path):
    import tifffile

    from livedenoise.engine import Engine
    from trainer.run import TrainConfig, denoise, train

    frames = tmp_path / "movie.tif"
    tifffile.imwrite(frames, movie, photometric="minisblack")
    out = tmp_path / "t.onnx"
    train(TrainConfig(frames=frames, out=out, preset="temporal", steps=2, check_every=0, figures=False), log=lambda m: None)
    engine = Engine(out, provider="cpu")
    assert engine.card.preset == "temporal" and engine.card.input_frames == 3
    served = np.stack(engine.infer(list(movie)).outputs)

    ckpt = load_checkpoint(tmp_path / "t.ckpt")
    net = UNet(TINY.generator)
    net.load_state_dict(ckpt["ms2c_ema"])
    means = causal_windows(movie.astype(np.float32), 3).mean(axis=1)  # what Ms2c reads: the window mean
    np.testing.assert_allclose(served, denoise(net, means, engine.card.normalisation, 8), atol=1e-4)
    train(TrainConfig(frames=frames, out=out, resume=tmp_path / "t.ckpt", steps=3, check_every=0, figures=False), log=lambda m: None)
    assert Engine(out, provider="cpu").card.training["steps"] == 3
    # stage 2 on a multi-frame preset: the student reads the same causal window (its mean)
    train(TrainConfig(frames=frames, out=out, preset="temporal", steps=2, distil=5, distil_steps=2, check_every=0, figures=False),
          log=lambda m: None)
    engine = Engine(out, provider="cpu")
    assert engine.card.input_frames == 3 and engine.card.training["distil"]["window"] == 5
    assert np.stack(engine.infer(list(movie)).outputs).shape == movie.shape


@pytest.mark.parametrize(
    "case, message",
    [
        ("small", "at least 128x128"),
        ("rgb", "RGB"),
        ("single", "single frame"),
        ("nan", "NaN"),
        ("corrupt", "cannot read"),
        ("unwritable", "cannot write"),
        ("cuda", "no CUDA GPU"),
        ("peakvar", "--peak-variance"),
        ("distil", "--distil 99: choose 0 (off) to 64"),
        ("teachers", "several stage-1 runs need the distillation"),
        ("domain", "--domain 'sparse': choose fitted or paper"),
    ],
)
def test_cli_bad_input_gives_one_line_and_exit_2(case, message, tmp_path, monkeypatch, capsys):
    import tifffile

    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")

    def write_tiff(data, name="stack.tif"):
        path = tmp_path / name
        tifffile.imwrite(path, data, photometric="rgb" if data.shape[-1] == 3 else "minisblack")
        return path

    rng = np.random.default_rng(0)
    good = rng.poisson(1.0, (3, 128, 128)).astype(np.uint16)
    makers = {
        "small": lambda: rng.poisson(1.0, (3, 64, 64)).astype(np.uint16),
        "rgb": lambda: rng.integers(0, 255, (3, 128, 128, 3), dtype=np.uint8),
        "single": lambda: good[0],
        "nan": lambda: np.where(rng.random((3, 128, 128)) < 0.01, np.nan, 1.0).astype(np.float32),
    }
    frames = write_tiff(makers[case]()) if case in makers else None
    if case == "corrupt":
        frames = tmp_path / "broken.tif"
        frames.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    if frames is None:
        frames = write_tiff(good)
    out = tmp_path / ("missing-dir/m.onnx" if case == "unwritable" else "m.onnx")
    args = ["--frames", str(frames), "--out", str(out), "--steps", "1"]
    if case == "cuda":
        args += ["--device", "cuda"]
    if case == "peakvar":
        args += ["--peak-variance", "2", "1"]
    if case == "distil":
        args += ["--distil", "99"]
    if case == "teachers":
        args += ["--teachers", "2", "--distil", "0"]
    if case == "domain":
        args += ["--domain", "sparse"]
    code, err = _cli(monkeypatch, capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err


def test_load_frames_accepts_npy(tmp_path):
    path = tmp_path / "f.npy"
    np.save(path, np.zeros((2, 130, 140), np.float32))
    assert load_frames(path).shape == (2, 130, 140)


def test_gaussian_kernel_sums_to_one():
    assert gaussian_kernel(7, 1.0).sum().item() == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------- stage 2: distillation


def test_teacher_targets_average_the_eight_views_and_turn_each_back():
    from trainer.distil import dihedral_mean

    x = np.random.default_rng(3).normal(size=(2, 5, 7)).astype(np.float32)  # not square: views are 7 x 5
    np.testing.assert_allclose(dihedral_mean(lambda f: f * 2, x), x * 2, atol=1e-6)  # an equivariant teacher
    seen = []

    def biased(f):  # a teacher that adds a ramp along its input's last axis, whatever the view
        seen.append(f.shape)
        return f + np.arange(f.shape[-1], dtype=np.float32)

    out = dihedral_mean(biased, x)
    assert sorted(set(seen)) == [(2, 5, 7), (2, 7, 5)] and len(seen) == 8
    bias = out - x  # the ramp, seen from all 8 views and averaged: symmetric, a bowl along both axes
    np.testing.assert_allclose(bias, bias[..., ::-1, :], atol=1e-5)
    np.testing.assert_allclose(bias, bias[..., ::-1], atol=1e-5)
    np.testing.assert_allclose(bias.mean(), (3 + 2) / 2, atol=1e-5)  # mean of the ramps 0..6 and 0..4


def test_centred_means_clamp_at_the_ends_of_the_movie():
    from trainer.distil import centred_means

    movie = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)  # frame t == t
    means = centred_means(movie, np.array([0, 2, 5]), 3)
    np.testing.assert_allclose(means[:, 0, 0], [(0 + 0 + 1) / 3, (1 + 2 + 3) / 3, (4 + 5 + 5) / 3])
    assert means.shape == (3, 2, 3) and means.dtype == np.float32
    np.testing.assert_allclose(centred_means(movie, np.array([3]), 1)[0], movie[3])
    np.testing.assert_allclose(centred_means(movie, np.array([3]), 4)[0, 0, 0], (1 + 2 + 3 + 4) / 4)  # k//2 before


def test_distillation_learns_the_teachers_output_and_is_deterministic():
    """The student is pulled toward the teacher's output on the same crops (L1 falls well below
    where it starts), and the same seed gives the same student."""
    from scipy.ndimage import gaussian_filter

    from trainer.distil import DistilConfig, distil

    rng = np.random.default_rng(0)
    inputs = rng.normal(0.0, 1.0, (6, 48, 48)).astype(np.float32)
    targets = np.tanh(np.stack([gaussian_filter(f, 2.0) * 4 for f in inputs])).astype(np.float32)
    cfg = DistilConfig(window=3, steps=60, batch=4, lr=3e-3)
    student, losses = distil(TINY.generator, inputs, targets, cfg, crop=32, seed=1, log=lambda m: None, progress=False)
    assert len(losses) == 60 and np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])
    again, _ = distil(TINY.generator, inputs, targets, cfg, crop=32, seed=1, log=lambda m: None, progress=False)
    for a, b in zip(student.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():
        out = student(torch.from_numpy(inputs[:2, None]))
    assert out.shape == (2, 1, 48, 48)
