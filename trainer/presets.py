"""Training presets: the paper's configuration and two smaller generators for real-time CPU use.

All presets share the paper's objective and schedule (section "Full objective" and "Training
Details": alpha = 5, beta = 1, lambda = 10; per batch 5 critic steps, one adversarial generator
step, one low-frequency cycle step, one clean cycle step; RMSProp, learning rate 5e-5,
momentum 0.9, batch 6, 128 x 128 crops, about 120 sampled frames). They differ only in the
size of the networks and in how a convolution keeps the frame size:

* ``"valid"`` (paper, section "Network Architectures"): every convolution is a valid transposed
  convolution followed by a valid convolution of the same kernel, so no zero padding is applied
  and the size is kept;
* ``"reflect"`` (``lite``, ``tiny``): one convolution with reflection padding. Half the
  convolutions of ``"valid"`` for the same receptive field, and no zero border either (the
  reflection continues the image), which is what a CPU at 150 frames/s can afford.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class NetConfig:
    """A U-Net generator (Ms2c and Mc2s are two identical copies).

    ``widths`` are the channels at full resolution and at each of the ``len(widths) - 1``
    downsampled levels; the last level holds ``n_res`` residual blocks. ``xception`` are the
    kernel sizes of the parallel branches of the full-resolution Xception modules.
    """

    widths: tuple[int, ...] = (32, 64, 96, 128)
    xception: tuple[int, ...] = (1, 3, 5, 7)
    n_res: int = 16
    conv: str = "valid"  # "valid" (paper) or "reflect"
    norm: str = "instance"  # "instance" (paper text, per channel) or "layer" (released code)
    input_frames: int = 1
    # Not in the paper: run the U-Net on the shuffle x shuffle sub-pixel phases of the frame
    # (pixel unshuffle in, pixel shuffle out, as FFDNet does): shuffle**2 times fewer positions
    # with wider layers, which is what keeps a CPU's cores busy (docs/benchmarks.md). 1: the paper.
    shuffle: int = 1

    @property
    def size_multiple(self) -> int:
        """Frame sizes the net keeps exactly: one factor 2 per downsampling, times ``shuffle``."""
        return self.shuffle * 2 ** (len(self.widths) - 1)


@dataclass(frozen=True, slots=True)
class CriticConfig:
    """D: 4 downsampling modules (transposed conv 3, conv 3 stride 2, dropout 25 %) and an FC."""

    widths: tuple[int, ...] = (32, 64, 128, 256)
    dropout: float = 0.25
    conv: str = "valid"


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    generator: NetConfig
    critic: CriticConfig
    steps: int = 2000  # default number of batches ("about 100 epochs" of 120 frames / 6)
    batch: int = 6
    crop: int = 128
    lr: float = 5e-5
    momentum: float = 0.9
    rms_alpha: float = 0.9  # RMSProp's decay (Keras' rho); the paper does not state it
    n_critic: int = 5
    alpha: float = 5.0  # weight of L_gan
    beta: float = 1.0  # weight of L_cycle
    gp_lambda: float = 10.0
    # Ms2b: 33 x 33 normalised Gaussian "with a variance of sigma = 15.0" (paper). Read as variance
    # 15 (sigma 3.87 px), the reading that measured better (docs/training.md); --lfc-sigma 15
    # gives the other reading.
    lfc_sigma: float = 15.0**0.5
    lfc_size: int = 33
    clean_variance: tuple[float, float] = (1.0, 10.0)  # domain C kernel variance range
    sample_frames: int = 120
    # Not in the paper: the exported Ms2c is an exponential moving average of its weights (this
    # decay per step), which averages out the adversarial game's oscillation between checkpoints
    # (measured: F1 0.63 -> 0.35 -> ... from one 100-step checkpoint to the next). 0 disables it.
    ema: float = 0.995
    # Not in the paper: stage 2 (trainer/distil.py), an Ms2c with the same input distilled from the
    # stage-1 Ms2c applied to the mean of this many frames centred on each training frame; 0: off.
    distil_window: int = 0
    distil_steps: int = 1200
    # Not in the paper: stage 1 is run this many times (seeds ``seed + 1000 k``) and stage 2 learns
    # from the run whose Ms2c is the most upright (polarity on one probe batch). Which run makes a
    # good teacher rides on the seed (tiny: distilled F1 0.54-0.78 over 12 seeds); the polarity
    # predicts it (Spearman 0.71), so picking takes part of the luck out (docs/training.md).
    teachers: int = 1
    # The distilled Ms2c's network (stage 2 learns from outputs, not from the unpaired game, so it
    # need not be the generator's; its input_frames are the generator's). None: the generator's.
    student: NetConfig | None = None
    # Not in the paper (issue 19): Domain C "fitted" to what the training movie holds
    # (``clean_content``, a SampleContent as a dict, estimated by ``train``), or the paper's; a
    # sparse movie like the paper's world trains on the paper's generator either way
    # (trainer.domains.clean_domain).
    domain: str = "paper"
    clean_content: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def with_norm(self, norm: str) -> Preset:
        return replace(self, generator=replace(self.generator, norm=norm))

    @property
    def student_net(self) -> NetConfig:
        """Stage 2's network, reading what the generator reads."""
        if self.student is None:
            return self.generator
        return replace(self.student, input_frames=self.generator.input_frames)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PAPER = Preset(
    name="paper",
    generator=NetConfig(widths=(32, 64, 96, 128), xception=(1, 3, 5, 7), n_res=16, conv="valid"),
    critic=CriticConfig(widths=(32, 64, 128, 256), conv="valid"),
    steps=2000,
)

LITE = Preset(
    name="lite",
    generator=NetConfig(widths=(16, 32, 48, 64), xception=(1, 3, 5, 7), n_res=4, conv="reflect"),
    critic=CriticConfig(widths=(16, 32, 64, 128), conv="reflect"),
    steps=2000,
)

TINY = Preset(
    name="tiny",
    generator=NetConfig(widths=(8, 16, 32, 48), xception=(3, 5), n_res=2, conv="reflect"),
    critic=CriticConfig(widths=(8, 16, 32, 64), conv="reflect"),
    # Measured on the project's simulated movies (docs/training.md): a narrower Ms2b and an early
    # stop beat longer training, where Ms2c turns more and more noise into atoms; distillation
    # from a 5-frame view of the movie lifts atom F1 from 0.58 to 0.75 and PSNR by 1.8 dB.
    steps=300,
    lfc_sigma=1.5,
    distil_window=5,
    distil_steps=600,  # chosen on a validation movie: 600 / 800 / 1200 / 1800 steps, F1 0.75 / 0.74 / 0.70 / 0.66
    # Three stage-1 runs, the most upright teaches: 17-21 min on 2 cores instead of 7.5, for a
    # result that rides less on the seed and survives a run refused as inverted (docs/training.md).
    teachers=3,
)

# Past the paper (issue "speed", CPU real time): tiny's stage 1, distilled into a U-Net that runs on
# the frame's 2 x 2 sub-pixel phases with wider layers: about twice tiny's frames per second on a
# 2-core CPU (docs/benchmarks.md), at some cost in atom F1 (docs/training.md, docs/quality.md).
RT = replace(
    TINY,
    name="rt",
    student=NetConfig(widths=(16, 24, 32, 48), xception=(3, 5), n_res=2, conv="reflect", shuffle=2),
)

# Past the paper (issue "temporal context"): tiny on a causal window of the current frame and the
# 2 before it, which a live stream has for free (latency does not grow). Ms2c is tiny's net behind
# a fixed mean of the window: the same losses and schedule, applied to the window means (Domain S
# becomes the movie's causal 3-frame means, with 3x the dose per frame). A learned window (Ms2c on
# 3 channels, Mc2s back to 3) was tried first and came out inverted (docs/training.md).
TEMPORAL = replace(TINY, name="temporal", generator=replace(TINY.generator, input_frames=3), distil_window=0, teachers=1)

PRESETS: dict[str, Preset] = {p.name: p for p in (PAPER, LITE, TINY, RT, TEMPORAL)}


def get_preset(name: str) -> Preset:
    from livedenoise.errors import LivedenoiseError

    try:
        return PRESETS[name]
    except KeyError:
        raise LivedenoiseError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
