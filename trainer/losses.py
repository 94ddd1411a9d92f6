"""The Noise2Atom objective (paper, sections "Adversarial loss" to "Full objective").

``L_n2a = alpha * L_gan + beta * L_cycle + L_lfc`` with alpha = 5, beta = 1, lambda = 10:

* ``W(x, y) = E[x * y]`` -- the Wasserstein loss; labels +1 / -1 select the sign;
* ``L_gan`` -- the critic's Wasserstein loss with a gradient penalty ``G`` averaged over the batch
  of per-sample terms ``G'_i = (1 - ||dD(y_i)/dy_i||_2)^2`` at random interpolates
  ``y_i = u_i * c_i + (1 - u_i) * Ms2c(s_i)``, ``u_i ~ U[0, 1]`` (one weight per sample);
* ``L_cycle = E|c - Ms2c(Mc2s(c))|``;
* ``L_lfc = E|Ms2b(s) - Ms2b(Mc2s(Ms2c(s)))|``.

Sign convention: the critic is trained to score clean images high ("True", label -1 in ``W``, so
minimising ``W(-1, D(c)) = -E[D(c)]`` raises it) and translated noisy images low; the
adversarial generator step maps translated noisy images to "True".
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def wasserstein(label: float | torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """``W(x, y) = E[x * y]``."""
    return (label * score).mean()


def interpolate(real: torch.Tensor, fake: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
    """``R(x, y) = u * x + (1 - u) * y`` with one uniform weight per sample (shape ``[N, 1, 1, 1]``)."""
    if u is None:
        u = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), dtype=real.dtype, device=real.device)
    return u * real + (1 - u) * fake


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """``G = mean_i (1 - ||dD(y_i)/dy_i||)^2``: the norm is taken per sample, then averaged.

    ``D`` scores samples independently, so the gradient of ``sum_i D(y_i)`` with respect to
    ``y_i`` is each sample's own gradient.
    """
    y = y.detach().requires_grad_(True)
    scores = critic(y)
    (grad,) = torch.autograd.grad(scores.sum(), y, create_graph=True)
    norms = grad.flatten(1).norm(dim=1)
    return ((1.0 - norms) ** 2).mean()


def critic_loss(
    critic: Callable[[torch.Tensor], torch.Tensor],
    clean: torch.Tensor,
    fake: torch.Tensor,
    gp_lambda: float = 10.0,
    u: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_gan`` for the critic step: ``W(-1, D(c)) + W(1, D(Ms2c(s))) + lambda * G``."""
    scores = critic(torch.cat([clean, fake]))  # one pass: D scores samples independently
    real_score, fake_score = scores[: clean.shape[0]], scores[clean.shape[0] :]
    gp = gradient_penalty(critic, interpolate(clean, fake, u))
    w = wasserstein(-1.0, real_score) + wasserstein(1.0, fake_score)
    loss = w + gp_lambda * gp
    return loss, {"critic": float(loss.detach()), "wdist": float(-w.detach()), "gp": float(gp.detach())}


def adversarial_loss(critic: Callable[[torch.Tensor], torch.Tensor], fake: torch.Tensor) -> torch.Tensor:
    """The generator's side of ``L_gan``: translated noisy images mapped to "True", ``W(-1, D(Ms2c(s)))``."""
    return wasserstein(-1.0, critic(fake))


def cycle_loss(clean: torch.Tensor, cycled: torch.Tensor) -> torch.Tensor:
    """``L_cycle = E|c - Ms2c(Mc2s(c))|``."""
    return (clean - cycled).abs().mean()


def lfc_loss(lowpass: Callable[[torch.Tensor], torch.Tensor], noisy: torch.Tensor, cycled: torch.Tensor) -> torch.Tensor:
    """``L_lfc = E|Ms2b(s) - Ms2b(Mc2s(Ms2c(s)))|``."""
    return (lowpass(noisy) - lowpass(cycled)).abs().mean()
