"""The self-supervised causal denoiser (issue 24): the clean image learnt from the movie itself.

Noise2Atom draws Gaussian peaks, which a real ADF image is not. This model learns whatever the
sample is, from the noisy movie alone, because the noise of a frame is independent of every other
frame's and of the other scan lines of its own frame:

* **causal**: it reads the current frame and the ``frames - 1`` before it (the engine's
  multi-frame window, series restarts included), so ``serve`` runs it live;
* **blind to the current frame's own scan line**: the output for a pixel of an even line is made
  from the current frame with its even lines replaced by the mean of the odd lines around them
  (and the other way round), and from the previous frames whole. Two passes of one U-Net, one per
  parity. So the output never sees the noise of the pixel it estimates, nor the line's common
  offset or a line shifted by the scan (STEM's correlated noise runs along lines, which a
  single-pixel blind spot would leave in), and the loss can be the plain squared difference to
  the noisy current frame: its minimum is the clean frame (Noise2Self's J-invariance, with the
  lines as the partition). Training and inference run the same function; there is no masking
  at training time that inference does not see (Noise2Void's mismatch).
* **units**: the window is centred and scaled by its own mean and standard deviation inside the
  graph, and the output scaled back, so the network works in units of the window's contrast: a
  slow dose decay, an analog offset or an unknown gain change nothing. The output goes to the
  engine's display range [0, 1] by a fixed map from raw units (``display``: the training movie's
  background and brightest features), or, for a model meant for unknown samples, by each frame's
  own minimum and maximum.

The U-Net runs on the frame's ``shuffle x shuffle`` sub-pixel phases (as the ``rt`` preset), behind
a linear first layer whose part for the previous frames is computed once for both passes, so the
two passes cost less than one ``rt`` pass on a CPU. Training keeps the weights' exponential moving
average and, every ``eval_every`` steps, scores it with the ground-truth-free score
(:func:`livedenoise.analysis.frame_terms`) on frames it never trained on; the best is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from livedenoise.analysis import frame_terms, summarise
from livedenoise.errors import LivedenoiseError

LEAK = 0.1


@dataclass(frozen=True, slots=True)
class SelfSupConfig:
    """The network and its training. ``frames``: the causal window (1: the current frame only,
    a spatial blind spot); ``widths``: the U-Net's channels at each of its levels; ``shuffle``: the
    sub-pixel phases it runs on; ``seconds``: a time budget that ends training early."""

    frames: int = 8
    widths: tuple[int, ...] = (24, 32, 48, 64)
    shuffle: int = 4
    steps: int = 3000
    batch: int = 8
    crop: int = 64
    lr: float = 5e-4
    ema: float = 0.99
    eval_every: int = 250
    seconds: float = 15 * 60.0
    # Not seen in a training movie, but in every session: the stage moves to another area. This
    # share of the training windows has its frames before a random cut taken from elsewhere in
    # the movie, so the model learns to drop a past that does not match the current frame ...
    change_prob: float = 0.15
    # ... and this share has it in a patch only (an atom hops, a column changes): the past of a
    # random square of ``patch`` px comes from elsewhere.
    patch_prob: float = 0.3
    patch: int = 12

    @property
    def size_multiple(self) -> int:
        return self.shuffle * 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


#: The network's sizes: ``rt`` runs at least as fast as the shipped ``rt`` model on a CPU (the
#: default: ``serve`` keeps up at 150 frames/s on 2 cores); ``large`` is for a GPU (or offline).
SIZES: dict[str, tuple[int, ...]] = {"rt": (24, 32, 48, 64), "large": (48, 64, 96, 128)}


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.c2(F.leaky_relu(self.c1(x), LEAK)), LEAK)


class UNet(nn.Module):
    """A small U-Net on ``w[0]`` channels at the top level, ``len(widths)`` levels: one output
    channel per sub-pixel phase (``shuffle ** 2``)."""

    def __init__(self, widths: tuple[int, ...], shuffle: int):
        super().__init__()
        w = widths
        self.down = nn.ModuleList([_Block(w[0], w[0])] + [_Block(w[i - 1], w[i]) for i in range(1, len(w))])
        self.up = nn.ModuleList([_Block(w[i + 1] + w[i], w[i]) for i in range(len(w) - 1)])
        self.out = nn.Conv2d(w[0], shuffle * shuffle, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        for i in range(len(self.up) - 1, -1, -1):
            x = self.up[i](torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skips[i]], 1))
        return self.out(x)


def blind_lines(frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 1, H, W)`` (H even) -> the frame with its even lines replaced by the mean of the odd
    lines above and below, and the frame with its odd lines replaced likewise (edges: the one
    neighbour)."""
    n, c, h, w = frame.shape
    pairs = frame.reshape(n, c, h // 2, 2, w)
    even, odd = pairs[:, :, :, 0], pairs[:, :, :, 1]
    odd_above = torch.cat([odd[:, :, :1], odd[:, :, :-1]], 2)  # the odd line before each even line
    even_below = torch.cat([even[:, :, 1:], even[:, :, -1:]], 2)  # the even line after each odd line
    a = torch.stack([0.5 * (odd_above + odd), odd], 3).reshape(n, c, h, w)
    b = torch.stack([even, 0.5 * (even + even_below)], 3).reshape(n, c, h, w)
    return a, b


def merge_lines(from_a: torch.Tensor, from_b: torch.Tensor) -> torch.Tensor:
    """Even lines of ``from_a``, odd lines of ``from_b``."""
    n, c, h, w = from_a.shape
    a = from_a.reshape(n, c, h // 2, 2, w)[:, :, :, 0]
    b = from_b.reshape(n, c, h // 2, 2, w)[:, :, :, 1]
    return torch.stack([a, b], 3).reshape(n, c, h, w)


class CausalDenoiser(nn.Module):
    """``[N, frames, H, W]`` raw frames (oldest first, the current one last) -> ``[N, 1, H, W]``
    in the engine's output range (``2 * display - 1``). See the module text."""

    def __init__(self, cfg: SelfSupConfig, display: tuple[float, float] | None = None):
        super().__init__()
        self.frames, self.shuffle = cfg.frames, cfg.shuffle
        phases = cfg.shuffle * cfg.shuffle
        # The first layer is linear (1 x 1 on the sub-pixel phases): the previous frames' part is
        # computed once and added to each of the two blind versions of the current frame's part.
        self.stem_past = nn.Conv2d((cfg.frames - 1) * phases, cfg.widths[0], 1) if cfg.frames > 1 else None
        self.stem_current = nn.Conv2d(phases, cfg.widths[0], 1)
        self.unet = UNet(tuple(cfg.widths), cfg.shuffle)
        # a full-resolution 5 x 5 convolution of each pass's output (before the lines are merged, so
        # the blindness holds): the sub-pixel phases of the U-Net's output smoothed into one image
        self.smooth = nn.Conv2d(1, 1, 5, padding=2, padding_mode="reflect", bias=False)
        with torch.no_grad():
            self.smooth.weight.zero_()
            self.smooth.weight[0, 0, 2, 2] = 1.0
        # after training, chosen by the score (:meth:`set_post`): a share of the classical causal
        # filter's output blended in, and a Gaussian over the blend; off (identity) until then
        self.register_buffer("post_weight", torch.tensor(1.0))
        self.register_buffer("post_frames", torch.zeros(cfg.frames))
        self.register_buffer("post_kernel", torch.ones(1))
        self.fixed = display is not None
        lo, hi = display if display is not None else (0.0, 1.0)
        self.register_buffer("lo", torch.tensor(float(lo)))
        self.register_buffer("span", torch.tensor(float(max(hi - lo, 1e-12))))

    def standardise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, sd = self.statistics(x)
        return (x - mu) / sd, mu, sd

    @staticmethod
    def statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each window's mean and spread: the network reads any units."""
        mu = x.mean(dim=(1, 2, 3), keepdim=True)
        sd = torch.sqrt(((x - mu) ** 2).mean(dim=(1, 2, 3), keepdim=True) + 1e-12)
        return mu, sd

    def predict(self, x: torch.Tensor, mu: torch.Tensor | None = None, sd: torch.Tensor | None = None) -> torch.Tensor:
        """The blind estimate of the current frame, standardised, of windows ``x`` standardised by
        ``mu`` and ``sd`` (None: ``x`` is standardised already). The past frames' stem is linear, so
        it runs on the frames as they come (a strided convolution: no unshuffled copy of the window)
        and the standardisation is applied to its few output channels: the same function, and at 16
        frames a third less time on a CPU than standardising and unshuffling the whole window."""
        current = x[:, -1:] if mu is None else (x[:, -1:] - mu) / sd
        a, b = blind_lines(current)
        current = torch.cat([a, b], 0)
        if self.shuffle > 1:
            current = F.pixel_unshuffle(current, self.shuffle)
        h = self.stem_current(current)
        if self.stem_past is not None:
            s, w = self.shuffle, self.stem_past.weight  # (C, (frames - 1) * s * s, 1, 1), unshuffle's channel order
            past = F.conv2d(x[:, :-1], w.view(w.shape[0], self.frames - 1, s, s), stride=s)
            if mu is not None:
                past = (past - mu * w.sum(dim=(1, 2, 3)).view(1, -1, 1, 1)) / sd
            past = past + self.stem_past.bias.view(1, -1, 1, 1)
            h = h + torch.cat([past, past], 0)
        out = self.unet(F.leaky_relu(h, LEAK))
        if self.shuffle > 1:
            out = F.pixel_shuffle(out, self.shuffle)
        out_a, out_b = self.smooth(out).chunk(2, 0)
        return merge_lines(out_a, out_b)

    def set_post(self, weight: float, frame_weights: np.ndarray | None, sigma: float) -> None:
        """The post-processing the score chose: ``weight`` of the network's output, the rest from a
        causal filter of ``frame_weights`` (oldest first, over this model's window), then a Gaussian."""
        from livedenoise.analysis import gaussian_kernel

        self.post_weight.fill_(float(weight))
        fw = np.zeros(self.frames, np.float32)
        if frame_weights is not None:
            fw[self.frames - len(frame_weights):] = frame_weights
        self.post_frames.copy_(torch.from_numpy(fw))
        self.post_kernel = torch.from_numpy(gaussian_kernel(sigma)) if sigma > 0 else torch.ones(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        counts = self.counts(x)
        if self.fixed:
            lo, span = self.lo, self.span
        else:  # each frame's own range: a model for samples it has never seen
            lo = counts.amin(dim=(1, 2, 3), keepdim=True)
            span = counts.amax(dim=(1, 2, 3), keepdim=True) - lo + 1e-12
        return (counts - lo) / span * 2.0 - 1.0

    def counts(self, x: torch.Tensor) -> torch.Tensor:
        """The denoised frames in the input's units (what the score compares), post-processing included."""
        mu, sd = self.statistics(x)
        out = self.predict(x, mu, sd) * sd + mu
        if float(self.post_weight) != 1.0:
            filtered = (x * self.post_frames.view(1, -1, 1, 1)).sum(1, keepdim=True)
            out = self.post_weight * out + (1.0 - self.post_weight) * filtered
        k = self.post_kernel.numel()
        if k > 1:
            r = k // 2
            out = F.conv2d(F.pad(out, (r, r, 0, 0), mode="reflect"), self.post_kernel.view(1, 1, 1, k))
            out = F.conv2d(F.pad(out, (0, 0, r, r), mode="reflect"), self.post_kernel.view(1, 1, k, 1))
        return out


def weights_of(onnx_path, cfg: SelfSupConfig) -> dict[str, torch.Tensor] | None:
    """The parameters of an exported :class:`CausalDenoiser` of this configuration, read back from
    its ONNX file's initializers (the exporter keeps their names), or None where it is another network
    (its card's frames, widths or phases differ, or a parameter is missing)."""
    import onnx
    from onnx import numpy_helper

    from livedenoise.engine import METADATA_KEY, ModelCard

    model = onnx.load(str(onnx_path))
    meta = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    config = (ModelCard.from_json(meta).training or {}).get("config", {}) if meta else {}
    if (config.get("frames"), tuple(config.get("widths", ())), config.get("shuffle")) != (cfg.frames, tuple(cfg.widths), cfg.shuffle):
        return None
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    own = dict(CausalDenoiser(cfg).named_parameters())
    if any(name not in stored or tuple(stored[name].shape) != tuple(p.shape) for name, p in own.items()):
        return None
    return {name: torch.from_numpy(np.array(stored[name], np.float32)) for name in own}


class TrainingDiverged(LivedenoiseError):
    """The loss became NaN or infinite."""


def causal_index(n: int, k: int, starts: list[int]) -> np.ndarray:
    """``(n, k)`` frame indices of each frame's causal window, oldest first, restarting at each
    frame of ``starts`` (a scene change: the window does not reach across it); before a start the
    start frame is repeated, as the engine does at a series' first frame."""
    first = np.zeros(n, np.intp)
    for s in sorted(starts):
        if 0 < s < n:
            first[s:] = s
    lags = np.arange(1 - k, 1)
    return np.maximum(np.arange(n)[:, None] + lags[None, :], first[:, None])


def denoise_counts(model: CausalDenoiser, movie: np.ndarray, index: np.ndarray, batch: int = 4) -> np.ndarray:
    """The model's output in raw units for frames ``index[:, -1]`` of ``movie`` (windows ``index``).
    Frames are padded to the model's size multiple by the caller."""
    out = []
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(index), batch):
            x = torch.from_numpy(np.ascontiguousarray(movie[index[i : i + batch]], np.float32)).to(device)
            out.append(model.counts(x)[:, 0].cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, *movie.shape[1:]), np.float32)


def _changes(batch: np.ndarray, frames: np.ndarray, others: np.ndarray, cfg: SelfSupConfig, rng: np.random.Generator) -> None:
    """Scene changes and local changes in training windows, in place (see ``change_prob``):
    before a random cut, the whole crop or a patch of it shows another place at another time."""
    n, k, crop = batch.shape[0], batch.shape[1], batch.shape[-1]
    hh, ww = frames.shape[1:]
    for j in range(n):
        whole, local = rng.random() < cfg.change_prob, rng.random() < cfg.patch_prob
        if not (whole or local):
            continue
        cut = rng.integers(1, k)
        size = crop if whole else min(cfg.patch, crop)
        py, px = (0, 0) if whole else rng.integers(0, crop - size + 1, 2)
        a, b = rng.integers(0, hh - size + 1), rng.integers(0, ww - size + 1)
        batch[j, :cut, py : py + size, px : px + size] = frames[others[j, :cut]][:, a : a + size, b : b + size]


@dataclass
class SelfSupResult:
    model: CausalDenoiser
    steps: int
    best_step: int
    seconds: float
    curve: list[tuple[int, float]]  # (step, held-out gain over raw, dB)
    loss: float


def train_selfsup(
    movie: np.ndarray,
    train_frames: np.ndarray,
    held_frames: np.ndarray,
    cfg: SelfSupConfig,
    *,
    starts: list[int] | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
    device: str = "cpu",
    init: dict[str, torch.Tensor] | None = None,
) -> SelfSupResult:
    """Train on the causal windows of frames ``train_frames`` of the raw ``(T, H, W)`` movie and
    keep the weights that score best on ``held_frames`` (each needs the two frames after it in the
    movie; at least 3 such frames, else the last weights are kept). ``starts``: scene changes."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    m = cfg.size_multiple
    t, h, w = movie.shape
    hh, ww = h - h % m, w - w % m
    if hh < m or ww < m:
        raise LivedenoiseError(f"frames of {h}x{w} are smaller than the network's {m}-pixel multiple")
    crop = min(cfg.crop, hh, ww)
    crop -= crop % m
    frames = np.ascontiguousarray(movie[:, :hh, :ww], np.float32)
    windows = causal_index(t, cfg.frames, starts or [])
    held = np.asarray([i for i in held_frames if i + 2 < t], np.intp)
    model = CausalDenoiser(cfg).to(device)
    if init is not None:  # fine-tuning: from another model's weights (the shipped generalist's)
        model.load_state_dict(init, strict=False)
    ema = CausalDenoiser(cfg).to(device)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), cfg.lr)
    warm = max(1, cfg.steps // 20)  # a linear warm-up over 5 % of the steps, then a cosine decay to 0

    def rate(i: int) -> float:
        return (i + 1) / warm if i < warm else 0.5 * (1.0 + math.cos(math.pi * (i - warm) / max(1, cfg.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    raw_terms = frame_terms(frames, frames, held) if held.size >= 3 else None
    best = (-math.inf, 0, None)
    curve: list[tuple[int, float]] = []
    t0 = time.monotonic()
    losses: list[float] = []
    step = 0

    def evaluate() -> None:
        nonlocal best
        if raw_terms is None:
            return
        den = np.zeros_like(frames)
        den[held] = denoise_counts(ema, frames, windows[held])
        gain = summarise(frame_terms(frames, den, held), raw_terms).gain_db
        curve.append((step, round(gain, 3)))
        if gain > best[0]:
            best = (gain, step, {k: v.clone() for k, v in ema.state_dict().items()})

    for step in range(1, cfg.steps + 1):
        model.train()
        idx = windows[rng.choice(train_frames, cfg.batch)]
        y0 = rng.integers(0, hh - crop + 1, cfg.batch)
        x0 = rng.integers(0, ww - crop + 1, cfg.batch)
        batch = np.stack([frames[i][:, a : a + crop, b : b + crop] for i, a, b in zip(idx, y0, x0)])
        if cfg.frames > 1:
            _changes(batch, frames, windows[rng.choice(train_frames, cfg.batch)], cfg, rng)
        if rng.random() < 0.5:
            batch = batch[..., ::-1]
        if rng.random() < 0.5:
            batch = batch[..., ::-1, :]
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
        z, _, _ = model.standardise(x)
        loss = F.mse_loss(model.predict(z), z[:, -1:])
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"self-supervised training diverged at step {step} (loss {loss.item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - cfg.ema)
        losses.append(loss.item())
        out_of_time = time.monotonic() - t0 > cfg.seconds
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            evaluate()
            log(f"self-supervised step {step}/{cfg.steps}: loss {np.mean(losses[-50:]):.4f}"
                + (f", held-out gain over raw {curve[-1][1]:+.2f} dB" if curve else "")
                + f" ({time.monotonic() - t0:.0f} s)")
        if out_of_time:
            log(f"self-supervised training stopped at step {step}: its {cfg.seconds / 60:.0f}-minute budget is spent")
            break
    if best[2] is not None:
        ema.load_state_dict(best[2])
    return SelfSupResult(ema.cpu().eval(), step, best[1] or step, time.monotonic() - t0, curve, float(np.mean(losses[-50:])))
