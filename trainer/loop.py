"""The training schedule of Noise2Atom (paper, "Training Details" and the sub-model list after it).

Per batch (one "step"): a batch of ``batch`` noisy crops ``s`` and ``batch`` simulated clean
images ``c``, then

1. the critic D is trained ``n_critic`` (5) times: clean images to "True", translated noisy images
   ``Ms2c(s)`` to "False", with the per-sample gradient penalty (``losses.critic_loss``);
2. Ms2c once, adversarially, with D fixed: ``Ms2c(s)`` to "True", weight alpha;
3. Mc2s o Ms2c once on the low-frequency cycle ``L_lfc`` (Ms2b fixed);
4. Ms2c o Mc2s once on the clean cycle ``L_cycle``, weight beta.

Each composed model has its own RMSProp optimiser, as separately compiled models would.

The loop also guards against the paper's failure case 1 (inverted mapping, "once in every ten
trials"): every ``check_every`` steps it measures the polarity of Ms2c (:func:`polarity`), and an
inverted model during the first half of training is re-initialised (logged); the final polarity
goes into the model card.

Checkpoints hold everything needed to continue exactly: step, weights, optimiser states, the
numpy and torch RNG states, the loss history and the sampled frame indices.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from livedenoise.analysis import SampleContent
from livedenoise.engine import Normalisation
from livedenoise.errors import LivedenoiseError

from . import losses
from .checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from .domains import NoisyDomain, clean_domain
from .networks import Critic, LowPass, UNet, WindowMean, gaussian_kernel
from .presets import Preset

CYCLE_TARGET = 0.05  # paper: "the cycle consistency loss is less than 0.05"
LFC_TARGET = 0.1  # paper: "and the low-frequency cycle loss is less than 0.1"
LOSS_KEYS = ("critic", "wdist", "gp", "adv", "lfc", "cycle")
MAX_REINITS = 3  # re-initialisations on an inverted mapping per run


def probe_batch(noisy: NoisyDomain, preset: Preset, seed: int) -> torch.Tensor:
    """The fixed batch the polarity check reads (its own RNG: it must not shift the training stream)."""
    return noisy.sample(min(12, 4 * preset.batch), np.random.default_rng(seed + 7919))


def teacher_seed(seed: int, index: int) -> int:
    """The seed of stage-1 run ``index`` of a training with ``seed`` (run 0 is the plain training)."""
    return seed + 1000 * index


def generator_from_state(preset: Preset, state_dict: dict[str, torch.Tensor], device: str = "cpu") -> torch.nn.Module:
    """A finished stage-1 Ms2c from its weights (:attr:`Trainer.generator`'s form: behind the window
    mean for a multi-frame preset), in eval mode."""
    ms2c = UNet(preset.generator, in_channels=1)
    ms2c.load_state_dict(state_dict)
    ms2c = ms2c.to(device).eval()
    return torch.nn.Sequential(WindowMean(), ms2c).eval() if preset.generator.input_frames > 1 else ms2c


@dataclass
class TrainState:
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    reinits: int = 0
    converged_at: int | None = None
    polarity: float | None = None
    elapsed_s: float = 0.0
    restart_at: int = 0  # step of the last re-initialisation: the networks then get the full budget again


def polarity(ms2c: Callable[[torch.Tensor], torch.Tensor], noisy: torch.Tensor, sigma: float = 2.0) -> float:
    """Pearson correlation between the smoothed noisy input and Ms2c's output.

    Positive for a proper mapping (bright areas -> atomic peaks); negative for the paper's
    failure case 1 (bright areas mapped to background, dark ones to peaks). Both images are
    smoothed at the scale of an atom (``sigma`` pixels) so shot noise does not dominate.
    """
    k = gaussian_kernel(int(6 * sigma) | 1, sigma)[None, None].to(noisy)
    with torch.no_grad():
        out = ms2c(noisy)
        a = F.conv2d(noisy[:, :1], k).flatten()
        b = F.conv2d(out, k).flatten()
    a = a - a.mean()
    b = b - b.mean()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else 0.0


def progress_bar(label: str, enabled: bool):
    """A rich progress bar on stderr (steps, ``info`` text, elapsed, ETA); off when ``enabled`` is
    false or stderr is not a terminal, where the callers log a line every so many steps instead."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    columns = (TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    return Progress(*columns, console=console, disable=not (enabled and console.is_terminal))


def mean_recent(history: list[dict[str, float]], key: str, n: int = 20) -> float:
    recent = [h[key] for h in history[-n:] if key in h]
    return float(np.mean(recent)) if recent else math.nan


class Trainer:
    """Noise2Atom on one set of sampled, normalised frames."""

    def __init__(
        self,
        preset: Preset,
        frames: np.ndarray,
        norm: Normalisation,
        *,
        seed: int = 0,
        device: str = "cpu",
        frame_indices: np.ndarray | None = None,
        check_every: int = 100,
        log: Callable[[str], None] = print,
    ):
        self.preset = preset
        self.norm = norm
        self.device = torch.device(device)
        self.seed = seed
        self.check_every = check_every
        self.log = log
        self.frame_indices = np.arange(len(frames)) if frame_indices is None else np.asarray(frame_indices)
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.noisy = NoisyDomain(frames, norm, preset.crop)
        content = SampleContent.from_dict(preset.clean_content) if preset.clean_content else None
        self.clean, _ = clean_domain(preset.domain, content, preset.crop, preset.clean_variance)
        self.lowpass = LowPass(preset.lfc_size, preset.lfc_sigma).to(self.device)
        self.state = TrainState()
        self._build()
        self.probe = probe_batch(self.noisy, preset, seed).to(self.device)
        # Saved with every checkpoint: the stage-1 runs already finished (``trainer.stage1.run_stage1``).
        self.extra: dict[str, Any] = {}

    # -- construction -------------------------------------------------------------------
    def _build(self) -> None:
        p = self.preset
        self.ms2c = UNet(p.generator, in_channels=1).to(self.device)
        self.mc2s = UNet(p.generator, in_channels=1).to(self.device)
        self.critic = Critic(p.critic, p.crop).to(self.device)

        def rms(params):
            return torch.optim.RMSprop(params, lr=p.lr, alpha=p.rms_alpha, momentum=p.momentum)

        self.ms2c_ema = copy.deepcopy(self.ms2c).requires_grad_(False) if p.ema else None
        both = list(self.ms2c.parameters()) + list(self.mc2s.parameters())
        self.opt = {
            "critic": rms(self.critic.parameters()),
            "adv": rms(self.ms2c.parameters()),
            "lfc": rms(both),
            "cycle": rms(both),
        }

    @property
    def generator(self) -> torch.nn.Module:
        """The Ms2c that gets exported: the weight average where the preset asks for one, behind
        the fixed window mean for a multi-frame preset."""
        ms2c = self._exported_ms2c
        return torch.nn.Sequential(WindowMean(), ms2c) if self.preset.generator.input_frames > 1 else ms2c

    @property
    def _exported_ms2c(self) -> torch.nn.Module:
        """The weight average where the preset asks for one, else Ms2c itself."""
        return self.ms2c_ema if self.ms2c_ema is not None else self.ms2c

    def finished(self, index: int) -> dict[str, Any]:
        """This run as stage-1 run ``index`` of a training: the exported Ms2c's weights (on the CPU)
        and the run's state, kept in later checkpoints and read by stage 2."""
        return {
            "index": index,
            "seed": self.seed,
            "ms2c": {k: v.detach().cpu().clone() for k, v in self._exported_ms2c.state_dict().items()},
            "state": vars(self.state).copy(),
        }

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.preset.ema
        for pe, p in zip(self.ms2c_ema.parameters(), self.ms2c.parameters()):
            pe.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for be, b in zip(self.ms2c_ema.buffers(), self.ms2c.buffers()):
            be.copy_(b)

    # -- one batch ----------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        p = self.preset
        self.ms2c.train()
        self.mc2s.train()
        self.critic.train()
        s = self.noisy.sample(p.batch, self.rng).to(self.device)
        c = self.clean.sample(p.batch, self.rng).to(self.device)
        with torch.no_grad():
            fake = self.ms2c(s)

        # 1. critic, n_critic times on this batch.
        for _ in range(p.n_critic):
            self.opt["critic"].zero_grad(set_to_none=True)
            loss_d, info = losses.critic_loss(self.critic, c, fake, p.gp_lambda)
            loss_d.backward()
            self.opt["critic"].step()

        # 2. adversarial step of Ms2c, D fixed.
        self.critic.requires_grad_(False)
        self.opt["adv"].zero_grad(set_to_none=True)
        adv = losses.adversarial_loss(self.critic, self.ms2c(s))
        (p.alpha * adv).backward()
        self.opt["adv"].step()
        self.critic.requires_grad_(True)

        # 3. low-frequency cycle s -> Ms2c -> Mc2s, compared through Ms2b.
        self.opt["lfc"].zero_grad(set_to_none=True)
        lfc = losses.lfc_loss(self.lowpass, s, self.mc2s(self.ms2c(s)))
        lfc.backward()
        self.opt["lfc"].step()

        # 4. clean cycle c -> Mc2s -> Ms2c.
        self.opt["cycle"].zero_grad(set_to_none=True)
        cyc = losses.cycle_loss(c, self.ms2c(self.mc2s(c)))
        (p.beta * cyc).backward()
        self.opt["cycle"].step()

        if self.ms2c_ema is not None:
            self._update_ema()

        record = dict(info, adv=float(adv.detach()), lfc=float(lfc.detach()), cycle=float(cyc.detach()))
        self.state.step += 1
        record["step"] = self.state.step
        self.state.history.append(record)
        return record

    # -- failure case 1 -----------------------------------------------------------------
    def check_polarity(self, model: torch.nn.Module | None = None) -> float:
        """Failure case 1: a negative polarity re-initialises Ms2c, Mc2s, D and their optimisers
        (at most ``MAX_REINITS`` times in a run), and the fresh networks get the whole step budget
        again (``state.restart_at``): a late re-initialisation must not leave them half-trained."""
        model = self.ms2c if model is None else model
        model.eval()
        corr = polarity(model, self.probe)
        model.train()
        self.state.polarity = corr
        if corr < 0:
            step = self.state.step
            if self.state.reinits < MAX_REINITS:
                self.state.reinits += 1
                self.state.restart_at = step
                msg = (
                    f"step {step}: inverted mapping detected (polarity {corr:+.3f}: bright areas -> background, "
                    f"paper failure case 1); re-initialising Ms2c, Mc2s, D and their optimisers, full step budget "
                    f"again (re-initialisation {self.state.reinits}/{MAX_REINITS})"
                )
                self._build()
            else:
                msg = f"step {step}: inverted mapping (polarity {corr:+.3f}) after {MAX_REINITS} re-initialisations"
            self.state.events.append(msg)
            self.log(msg)
        return corr

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "preset": self.preset.to_dict(),
            "normalisation": {
                "offset": self.norm.offset,
                "scale": self.norm.scale,
                "flatten_sigma": self.norm.flatten_sigma,
            },
            "seed": self.seed,
            "frame_indices": self.frame_indices.tolist(),
            "ms2c": self.ms2c.state_dict(),
            "mc2s": self.mc2s.state_dict(),
            "critic": self.critic.state_dict(),
            "ms2c_ema": self.ms2c_ema.state_dict() if self.ms2c_ema is not None else None,
            "opt": {k: o.state_dict() for k, o in self.opt.items()},
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "state": vars(self.state).copy(),
            **self.extra,
        }

    def save(self, path: Path) -> None:
        save_checkpoint(self.checkpoint(), path)

    def restore(self, ckpt: dict[str, Any]) -> None:
        # Rebuild first: re-initialisations may have happened, and weights replace everything.
        self.ms2c.load_state_dict(ckpt["ms2c"])
        self.mc2s.load_state_dict(ckpt["mc2s"])
        self.critic.load_state_dict(ckpt["critic"])
        if self.ms2c_ema is not None and ckpt.get("ms2c_ema") is not None:
            self.ms2c_ema.load_state_dict(ckpt["ms2c_ema"])
        for k, o in self.opt.items():
            o.load_state_dict(ckpt["opt"][k])
        self.rng.bit_generator.state = ckpt["numpy_rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        self.state = TrainState(**ckpt["state"])

    # -- the loop -----------------------------------------------------------------------
    def run(
        self,
        total_steps: int,
        *,
        checkpoint_path: Path | None = None,
        checkpoint_every: int = 100,
        log_every: int = 50,
        progress: bool = True,
    ) -> TrainState:
        """Train until ``total_steps`` (counting steps already done, from the last re-initialisation
        on); Ctrl-C saves and re-raises. Ends with the polarity of the exported Ms2c (the weight
        average): inverted, it is re-initialised and trained again while retries remain."""

        def end() -> int:
            return self.state.restart_at + total_steps

        start_step = self.state.step
        t0 = time.monotonic()
        elapsed0 = self.state.elapsed_s
        bar = progress_bar("train", progress)
        try:
            with bar:
                task = bar.add_task("train", total=end(), completed=start_step, info="")
                while self.state.step < end():
                    rec = self.train_step()
                    step = self.state.step
                    self.state.elapsed_s = elapsed0 + time.monotonic() - t0
                    cyc, lfc = mean_recent(self.state.history, "cycle"), mean_recent(self.state.history, "lfc")
                    if self.state.converged_at is None and step >= 20 and cyc < CYCLE_TARGET and lfc < LFC_TARGET:
                        self.state.converged_at = step
                        self.log(
                            f"step {step}: paper's convergence criteria met "
                            f"(L_cycle {cyc:.4f} < {CYCLE_TARGET}, L_lfc {lfc:.4f} < {LFC_TARGET})"
                        )
                    if self.check_every and step % self.check_every == 0:
                        self.check_polarity()
                    if step == end():  # budget spent: the exported Ms2c must be upright too
                        self.check_polarity(self.generator)  # re-initialised if not, which moves end()
                    bar.update(
                        task,
                        completed=step,
                        total=end(),
                        info=f"L_cycle {cyc:.4f} L_lfc {lfc:.4f} W {rec['wdist']:+.3f} gp {rec['gp']:.3f}",
                    )
                    if log_every and (step % log_every == 0 or step == end()) and not bar.live.is_started:
                        rate = (step - start_step) / max(time.monotonic() - t0, 1e-9)
                        eta = (end() - step) / rate if rate > 0 else math.inf
                        self.log(
                            f"step {step}/{end()}  L_cycle {cyc:.4f}  L_lfc {lfc:.4f}  "
                            f"W {mean_recent(self.state.history, 'wdist'):+.3f}  "
                            f"adv {mean_recent(self.state.history, 'adv'):+.3f}  "
                            f"{rate:.2f} steps/s  ETA {eta / 60:.1f} min"
                        )
                    if checkpoint_path is not None and checkpoint_every and step % checkpoint_every == 0:
                        self.save(checkpoint_path)
        except KeyboardInterrupt:
            if checkpoint_path is not None:
                self.save(checkpoint_path)
                raise LivedenoiseError(
                    f"interrupted at step {self.state.step}; checkpoint saved: resume with --resume {checkpoint_path}"
                ) from None
            raise
        if checkpoint_path is not None:
            self.save(checkpoint_path)
        return self.state
