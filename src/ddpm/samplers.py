"""Samplers of the reverse process: plain functions of (model, schedule, x_T) that return x_0 in [-1, 1].

* :func:`ddpm_sample` - ancestral sampling, Algorithm 2 of Ho et al. (2020), optionally on a subsequence of
  timesteps ("respacing", Nichol & Dhariwal 2021, sec. 4).
* :func:`ddim_sample` - DDIM, Song et al. (2021), eq. 12; deterministic for ``eta = 0``.
* :func:`dpm_solver_pp_2m` - DPM-Solver++(2M), Lu et al. (2022), Algorithm 2: a second-order multistep solver
  of the diffusion ODE in data-prediction form.

Every sampler calls ``model(x_t, t)`` with ``t`` a long tensor of the *original* integer timesteps (the output is
eps, x_0 or v as the schedule's ``prediction`` says), draws its
noise from ``generator`` (one ``torch.Generator`` or a list with one per image, so that an image depends only on
its own seed, not on the batch it is in) and calls ``callback(i, t, x_t, x0_pred)`` after every step.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ddpm.config import SAMPLERS
from ddpm.errors import ConfigError
from ddpm.schedules import NoiseSchedule, split_prediction

# What the samplers call: ``model(x_t, t)`` -> eps, x_0 or v (the schedule's ``prediction``), t a long tensor.
Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None] | None


def randn(shape: Sequence[int], generator: Generator, device: torch.device | str) -> torch.Tensor:
    """Standard normal noise of ``shape``; with a list of generators, row i comes from generator i."""
    if generator is None:
        return torch.randn(tuple(shape), device=device)
    if isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device) for g in generator]).to(device)


def sampling_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps evenly spaced from T-1 down to 0 (both included), rounded to integers."""
    if not 1 <= steps <= timesteps:
        raise ConfigError(f"sampling steps must be between 1 and T = {timesteps}, got {steps}")
    if steps == 1:
        return [timesteps - 1]
    return [round(i * (timesteps - 1) / (steps - 1)) for i in reversed(range(steps))]


def _predict(model: Model, diffusion: NoiseSchedule, x: torch.Tensor, t: int, clip: bool):
    """eps and x_0 of the network's output at (x_t, t), whatever it predicts (:func:`ddpm.schedules.split_prediction`),
    with x_0 optionally clipped to [-1, 1].

    When clipping, eps is recomputed from the clipped x_0 so that the two stay consistent.
    """
    abar = diffusion.alphas_cumprod[t].item()
    output = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).to(x.dtype)
    eps, x0 = split_prediction(output, x, math.sqrt(abar), math.sqrt(1 - abar), diffusion.prediction)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
    return eps, x0


def _abar(diffusion: NoiseSchedule, t: int) -> float:
    """alpha-bar_t, with alpha-bar_{-1} = 1 (the clean data) for the step past t = 0."""
    return diffusion.alphas_cumprod[t].item() if t >= 0 else 1.0


@torch.no_grad()
def ddpm_sample(model: Model, diffusion: NoiseSchedule, x_T: torch.Tensor, timesteps: Sequence[int] | None = None,
                clip_denoised: bool = True, generator: Generator = None, callback: Callback = None) -> torch.Tensor:
    """Ancestral sampling x_{s} ~ p(x_s | x_t) = N(mu~(x_t, x0_pred), sigma_t^2) (Ho et al., Algorithm 2).

    Between consecutive timesteps t > s of ``timesteps`` (default: all of T-1 .. 0) the step uses the respaced
    beta = 1 - alpha-bar_t / alpha-bar_s; the mean is the posterior mean of eq. 7 and sigma^2 is beta
    ("fixed_large") or the posterior variance beta-tilde ("fixed_small"). No noise is added at the last step.
    """
    timesteps = list(range(diffusion.timesteps - 1, -1, -1)) if timesteps is None else list(timesteps)
    x = x_T
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        abar_t, abar_s = _abar(diffusion, t), _abar(diffusion, s)
        beta = 1 - abar_t / abar_s
        _, x0 = _predict(model, diffusion, x, t, clip_denoised)
        # Posterior mean, eq. 7, with the respaced beta.
        x = (math.sqrt(abar_s) * beta / (1 - abar_t)) * x0 + (math.sqrt(1 - beta) * (1 - abar_s) / (1 - abar_t)) * x
        if s >= 0:
            var = beta if diffusion.variance == "fixed_large" else beta * (1 - abar_s) / (1 - abar_t)
            x = x + math.sqrt(var) * randn(x.shape, generator, x.device).to(x.dtype)
        if callback is not None:
            callback(i, t, x, x0)
    return x


@torch.no_grad()
def ddim_sample(model: Model, diffusion: NoiseSchedule, x_T: torch.Tensor, timesteps: Sequence[int],
                eta: float = 0.0, clip_denoised: bool = True, generator: Generator = None,
                callback: Callback = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) from t to the next timestep s:

    x_s = sqrt(abar_s) x0_pred + sqrt(1 - abar_s - sigma^2) eps + sigma z,
    sigma = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)   (eq. 16).
    ``eta = 0`` is the deterministic DDIM; ``eta = 1`` is DDPM with the posterior variance.
    """
    if eta < 0:
        raise ConfigError(f"eta must be >= 0, got {eta}")
    timesteps = list(timesteps)
    x = x_T
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        abar_t, abar_s = _abar(diffusion, t), _abar(diffusion, s)
        eps, x0 = _predict(model, diffusion, x, t, clip_denoised)
        sigma = eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
        x = math.sqrt(abar_s) * x0 + math.sqrt(max(1 - abar_s - sigma**2, 0.0)) * eps
        if eta > 0:
            x = x + sigma * randn(x.shape, generator, x.device).to(x.dtype)
        if callback is not None:
            callback(i, t, x, x0)
    return x


@torch.no_grad()
def dpm_solver_pp_2m(model: Model, diffusion: NoiseSchedule, x_T: torch.Tensor, steps: int,
                     clip_denoised: bool = True, callback: Callback = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on the timesteps round(linspace(T-1, 0, steps + 1))[:-1].

    With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) and h = lambda_s -
    lambda_t, each step is x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D, where D is the data prediction
    x0 at the first step and (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}, r = h_{i-1} / h_i, after it. The last step goes to
    sigma = 0 with the first-order update, which returns the final data prediction.

    The grid holds ``steps`` distinct timesteps of {1, ..., T-1} (the step to sigma = 0 stands in for t = 0), so
    ``steps`` is at most T - 1 (or 1 when T = 1); more would repeat a timestep and divide by h = 0.
    """
    T = diffusion.timesteps
    if not 1 <= steps <= max(T - 1, 1):
        raise ConfigError(f"dpm++2m sampling steps must be between 1 and T - 1 = {max(T - 1, 1)}, got {steps}")
    timesteps = [round(i * (T - 1) / steps) for i in reversed(range(1, steps + 1))]
    x = x_T
    previous_x0, previous_h = None, None
    for i, t in enumerate(timesteps):
        _, x0 = _predict(model, diffusion, x, t, clip_denoised)
        if i == len(timesteps) - 1:
            x = x0  # sigma_s = 0: e^{-h} = 0, so x_s = alpha_s * x0 with alpha_s = 1
        else:
            s = timesteps[i + 1]
            abar_t, abar_s = _abar(diffusion, t), _abar(diffusion, s)
            alpha_s, sigma_t, sigma_s = math.sqrt(abar_s), math.sqrt(1 - abar_t), math.sqrt(1 - abar_s)
            h = 0.5 * (math.log(abar_s / (1 - abar_s)) - math.log(abar_t / (1 - abar_t)))
            if previous_x0 is None:
                d = x0
            else:
                r = previous_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
            x = (sigma_s / sigma_t) * x - alpha_s * math.expm1(-h) * d
            previous_x0, previous_h = x0, h
        if callback is not None:
            callback(i, t, x, x0)
    return x


def default_steps(sampler: str, timesteps: int) -> int:
    """The steps :func:`sample` takes when given none: all T for "ddpm", 50 for "ddim" and "dpm++2m" (at most T for
    "ddim" and T - 1 for "dpm++2m", see :func:`dpm_solver_pp_2m`)."""
    if sampler == "ddpm":
        return timesteps
    return min(50, timesteps if sampler == "ddim" else max(timesteps - 1, 1))


def sample(model: Model, diffusion: NoiseSchedule, x_T: torch.Tensor, sampler: str = "ddpm",
           steps: int | None = None, eta: float = 0.0, clip_denoised: bool = True, generator: Generator = None,
           callback: Callback = None) -> torch.Tensor:
    """Run ``sampler`` from ``x_T`` in ``steps`` steps (None: :func:`default_steps`)."""
    T = diffusion.timesteps
    if sampler == "ddpm":
        ts = None if steps is None or steps == T else sampling_timesteps(T, steps)
        return ddpm_sample(model, diffusion, x_T, ts, clip_denoised, generator, callback)
    if sampler == "ddim":
        steps = default_steps(sampler, T) if steps is None else steps
        return ddim_sample(model, diffusion, x_T, sampling_timesteps(T, steps), eta, clip_denoised, generator, callback)
    if sampler == "dpm++2m":
        steps = default_steps(sampler, T) if steps is None else steps
        return dpm_solver_pp_2m(model, diffusion, x_T, steps, clip_denoised, callback)
    raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
