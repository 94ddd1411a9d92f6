"""The four sub-models of Noise2Atom (paper, section "Network Architectures").

* :class:`UNet` -- Ms2c (noisy -> clean) and Mc2s (clean -> noisy), two identical U-Nets: Xception
  modules with parallel kernels {1, 3, 5, 7} at full resolution, downsampling "transposed conv 3
  then conv 3 stride 2", upsampling "transposed conv 4 stride 2 then conv 3", residual blocks at
  the bottom, normalisation followed by leaky ReLU everywhere, tanh at the last layer.
* :class:`LowPass` -- Ms2b, a single fixed 33 x 33 normalised Gaussian filter, no padding, no bias,
  never trained (written from the paper's description).
* :class:`Critic` -- D, four downsampling modules (transposed conv 3, conv 3 stride 2, dropout)
  and a fully connected layer.

"No zero padding" (paper): a valid transposed convolution of kernel k grows a map by k - 1 and
the valid convolution after it shrinks it back, so every pair keeps the size without padding
(:func:`conv_pair`). The ``"reflect"`` style used by the CPU presets replaces the pair by one
convolution with reflection padding.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .presets import CriticConfig, NetConfig

LEAK = 0.2


class LayerNorm1(nn.Module):
    """The released code's "instance normalisation": per sample, over channels and pixels
    together, with one scalar scale and one scalar shift.

    Computed as an instance norm of the sample viewed as one channel, so it exports as a single
    ONNX ``InstanceNormalization`` (between two reshapes), never as a chain of elementwise ops.
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = torch.flatten(x, 1).unsqueeze(1)  # static ops in ONNX: Flatten, Unsqueeze
        y = F.instance_norm(flat, weight=self.weight, bias=self.bias, eps=self.eps)
        return y.reshape_as(x)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        return LayerNorm1()
    raise ValueError(f"unknown normalisation {kind!r} (instance or layer)")


class _ReflectPad(torch.autograd.Function):
    """``F.pad(x, [p] * 4, mode="reflect")`` that exports as one ONNX ``Pad`` (mode reflect).

    The TorchScript exporter otherwise spells each reflection pad as a dozen shape ops.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: int) -> torch.Tensor:
        ctx.p = p
        return F.pad(x, [p, p, p, p], mode="reflect")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Only inference is exported; training uses the autograd of F.pad (see ReflectConv).
        raise RuntimeError("_ReflectPad is for export only")

    @staticmethod
    def symbolic(g, x, p: int):
        pads = g.op("Constant", value_t=torch.tensor([0, 0, p, p, 0, 0, p, p], dtype=torch.int64))
        return g.op("Pad", x, pads, mode_s="reflect")


class ReflectConv(nn.Conv2d):
    """A convolution with reflection padding ``k // 2`` (same size; half size with stride 2)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__(cin, cout, k, stride=stride)
        self.pad = k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            if torch.onnx.is_in_onnx_export():
                x = _ReflectPad.apply(x, self.pad)
            else:
                x = F.pad(x, [self.pad] * 4, mode="reflect")
        return self._conv_forward(x, self.weight, self.bias)


def conv_pair(cin: int, cout: int, k: int, style: str, stride: int = 1) -> nn.Module:
    """A size-keeping convolution of kernel ``k`` (``stride`` 2 halves the size, rounding up).

    ``"valid"``: transposed conv k (H -> H + k - 1) then valid conv k (-> H, or ceil(H / 2) with
    stride 2), the paper's pairing. ``"reflect"``: one conv with reflection padding.
    """
    if style == "valid":
        return nn.Sequential(nn.ConvTranspose2d(cin, cout, k), nn.Conv2d(cout, cout, k, stride=stride))
    if style == "reflect":
        return ReflectConv(cin, cout, k, stride=stride)
    raise ValueError(f"unknown convolution style {style!r} (valid or reflect)")


def up_pair(cin: int, cout: int, style: str) -> nn.Module:
    """Upsampling by 2: transposed conv 4 stride 2 (H -> 2H + 2) then valid conv 3 (-> 2H)."""
    if style == "valid":
        return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2), nn.Conv2d(cout, cout, 3))
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), conv_pair(cout, cout, 3, style)
    )


class ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, cfg: NetConfig, stride: int = 1):
        super().__init__(conv_pair(cin, cout, k, cfg.conv, stride), make_norm(cfg.norm, cout), nn.LeakyReLU(LEAK))


class Xception(nn.Module):
    """Parallel branches of kernel sizes ``cfg.xception``, concatenated, normalised, activated."""

    def __init__(self, cin: int, cout: int, cfg: NetConfig):
        super().__init__()
        n = len(cfg.xception)
        split = [cout // n + (1 if i < cout % n else 0) for i in range(n)]
        self.branches = nn.ModuleList(conv_pair(cin, c, k, cfg.conv) for c, k in zip(split, cfg.xception))
        self.post = nn.Sequential(make_norm(cfg.norm, cout), nn.LeakyReLU(LEAK))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(torch.cat([b(x) for b in self.branches], dim=1))


class Residual(nn.Module):
    def __init__(self, channels: int, cfg: NetConfig):
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(channels, channels, 3, cfg),
            conv_pair(channels, channels, 3, cfg.conv),
            make_norm(cfg.norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Up(nn.Module):
    """Upsample, concatenate the skip connection, fuse."""

    def __init__(self, cin: int, cout: int, cfg: NetConfig, full_resolution: bool):
        super().__init__()
        self.up = nn.Sequential(up_pair(cin, cout, cfg.conv), make_norm(cfg.norm, cout), nn.LeakyReLU(LEAK))
        self.fuse = Xception(2 * cout, cout, cfg) if full_resolution else ConvNormAct(2 * cout, cout, 3, cfg)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """Ms2c / Mc2s: ``[N, input_frames, H, W]`` -> ``[N, 1, H, W]`` in [-1, 1].

    H and W must be multiples of :attr:`NetConfig.size_multiple` (the serving engine reflect-pads
    other sizes and crops back). With ``cfg.shuffle`` > 1 the U-Net runs on the frame's sub-pixel
    phases (pixel unshuffle) and its head gives them back (pixel shuffle).
    """

    def __init__(self, cfg: NetConfig, in_channels: int | None = None):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        cin = cfg.input_frames if in_channels is None else in_channels
        self.shuffle = cfg.shuffle
        self.stem = Xception(cin * cfg.shuffle**2, w[0], cfg)
        self.downs = nn.ModuleList(
            nn.Sequential(ConvNormAct(w[i], w[i + 1], 3, cfg, stride=2), ConvNormAct(w[i + 1], w[i + 1], 3, cfg))
            for i in range(len(w) - 1)
        )
        self.bottom = nn.Sequential(*(Residual(w[-1], cfg) for _ in range(cfg.n_res)))
        self.ups = nn.ModuleList(Up(w[i + 1], w[i], cfg, full_resolution=(i == 0)) for i in reversed(range(len(w) - 1)))
        self.head = conv_pair(w[0], cfg.shuffle**2, 3, cfg.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shuffle > 1:
            x = F.pixel_unshuffle(x, self.shuffle)
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = self.bottom(skips.pop())
        for up in self.ups:
            y = up(y, skips.pop())
        y = self.head(y)
        if self.shuffle > 1:
            y = F.pixel_shuffle(y, self.shuffle)
        return torch.tanh(y)


class WindowMean(nn.Module):
    """The ``temporal`` preset's fixed front of Ms2c: a causal window ``[N, k, H, W]`` -> its mean
    ``[N, 1, H, W]`` (one ONNX ReduceMean), so the exported model reads the k frames serve feeds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """A ``size x size`` 2-D Gaussian of standard deviation ``sigma`` normalised to sum 1."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return (k / k.sum()).to(torch.float32)


class LowPass(nn.Module):
    """Ms2b: one fixed normalised Gaussian filter (33 x 33, sigma 15), valid, no bias, not trained."""

    def __init__(self, size: int = 33, sigma: float = 15.0):
        super().__init__()
        self.register_buffer("kernel", gaussian_kernel(size, sigma)[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel)


class Critic(nn.Module):
    """D: 4 x (transposed conv 3 -> conv 3 stride 2 -> leaky ReLU -> dropout) then one FC layer.

    No normalisation layer: the gradient penalty is per sample, which batch statistics would break.
    """

    def __init__(self, cfg: CriticConfig, crop: int = 128, in_channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in cfg.widths:
            layers += [conv_pair(cin, cout, 3, cfg.conv, stride=2), nn.LeakyReLU(LEAK), nn.Dropout(cfg.dropout)]
            cin = cout
        self.features = nn.Sequential(*layers)
        side = crop
        for _ in cfg.widths:
            side = math.ceil(side / 2)
        self.fc = nn.Linear(cin * side * side, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))
