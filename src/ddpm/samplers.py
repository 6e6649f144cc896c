"""Samplers of the reverse process: plain functions of (model, schedule, x_T) that return x_0 in [-1, 1].

* :func:`ddpm_sample` - ancestral sampling, Algorithm 2 of Ho et al. (2020), optionally on a subsequence of
  timesteps ("respacing", Nichol & Dhariwal 2021, sec. 4).
* :func:`ddim_sample` - DDIM, Song et al. (2021), eq. 12; deterministic for ``eta = 0``.
* :func:`dpm_solver_pp_2m` - DPM-Solver++(2M), Lu et al. (2022), Algorithm 2: a second-order multistep solver
  of the diffusion ODE in data-prediction form; :func:`dpm_solver_pp` is the same family to third order.
* :func:`ipndm` - improved PNDM (Zhang & Chen 2023): Adams-Bashforth up to fourth order on eps in DDIM's ODE.

:data:`SAMPLERS` is the registry every command reads its choices and help from; :func:`register_sampler` adds one.

Every sampler calls ``model(x_t, t)`` with ``t`` a long tensor of the *original* integer timesteps (the output is
eps, x_0 or v as the schedule's ``prediction`` says), draws its
noise from ``generator`` (one ``torch.Generator`` or a list with one per image, so that an image depends only on
its own seed, not on the batch it is in) and calls ``callback(i, t, x_t, x0_pred)`` after every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ddpm.errors import ConfigError
from ddpm.schedules import NoiseSchedule, split_prediction
from ddpm.spacing import time_grid, uniform_grid

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
    return uniform_grid(timesteps, steps)


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


def _lambda(diffusion: NoiseSchedule, t: int) -> float:
    """lambda_t = log(alpha_t / sigma_t), half the log-SNR (Lu et al. 2022, sec. 2); +inf for the clean data."""
    abar = _abar(diffusion, t)
    return math.inf if abar >= 1 else 0.5 * (math.log(abar) - math.log1p(-abar))


@torch.no_grad()
def dpm_solver_pp(model: Model, diffusion: NoiseSchedule, x_T: torch.Tensor, timesteps: Sequence[int],
                  order: int = 2, clip_denoised: bool = True, callback: Callback = None) -> torch.Tensor:
    """DPM-Solver++(2M)/(3M) (Lu et al. 2022, Algorithm 2 and its third-order form) on ``timesteps``, then to sigma = 0.

    With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) and h = lambda_s -
    lambda_t, every step is x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D0, plus for order 2 and 3 the
    corrections of the data predictions m0, m1, m2 of this and the previous steps (r0 = h0 / h, r1 = h1 / h):
    D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) with D1_k = (m_k - m_{k+1}) / r_k, D2 = (D1_0 - D1_1) / (r0 + r1), and

        x_s += alpha_s ((e^{-h} - 1) / h + 1) D1 - alpha_s ((e^{-h} - 1 + h) / h^2 - 1/2) D2      (order 3),
        x_s -= alpha_s (e^{-h} - 1) D1_0 / 2                                                   (order 2).

    The first steps lack history and use orders 1, 2, ...; the step to sigma = 0 is first order (h is infinite, so
    x_0 = D0), and with fewer than 15 steps the one before it is at most second order: the choices of Lu et al.'s
    code and of diffusers' ``DPMSolverMultistepScheduler`` (``lower_order_final``), which it reproduces.
    """
    if order not in (1, 2, 3):
        raise ConfigError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
    timesteps = list(timesteps)
    x = x_T
    history: list[tuple[torch.Tensor, float]] = []  # (x0 prediction, lambda) of the steps so far, newest last
    for i, t in enumerate(timesteps):
        _, x0 = _predict(model, diffusion, x, t, clip_denoised)
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        history = (history + [(x0, _lambda(diffusion, t))])[-3:]
        if s < 0:
            x = x0  # sigma_s = 0: e^{-h} = 0 and alpha_s = 1
        else:
            k = min(order, len(history), 2 if len(timesteps) < 15 and i == len(timesteps) - 2 else 3)
            abar_t, abar_s = _abar(diffusion, t), _abar(diffusion, s)
            alpha_s, sigma_t, sigma_s = math.sqrt(abar_s), math.sqrt(1 - abar_t), math.sqrt(1 - abar_s)
            h = _lambda(diffusion, s) - history[-1][1]
            em1 = math.expm1(-h)
            x = (sigma_s / sigma_t) * x - alpha_s * em1 * x0
            if k >= 2:
                r0 = (history[-1][1] - history[-2][1]) / h
                d1_0 = (x0 - history[-2][0]) / r0
                if k == 2:
                    x = x - 0.5 * alpha_s * em1 * d1_0
                else:
                    r1 = (history[-2][1] - history[-3][1]) / h
                    d1_1 = (history[-2][0] - history[-3][0]) / r1
                    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                    d2 = (d1_0 - d1_1) / (r0 + r1)
                    x = x + alpha_s * (em1 / h + 1) * d1 - alpha_s * ((em1 + h) / h**2 - 0.5) * d2
        if callback is not None:
            callback(i, t, x, x0)
    return x


def dpm_solver_pp_2m(model: Model, diffusion: NoiseSchedule, x_T: torch.Tensor, steps: int,
                     clip_denoised: bool = True, callback: Callback = None) -> torch.Tensor:
    """DPM-Solver++(2M) (:func:`dpm_solver_pp`, order 2) on the ``steps`` timesteps round(linspace(T - 1, 0, steps +
    1))[:-1]: the step to sigma = 0 stands in for t = 0, so ``steps`` is at most T - 1 (or 1 when T = 1; the grid
    refuses more)."""
    return dpm_solver_pp(model, diffusion, x_T, time_grid("uniform", diffusion, steps, call_at_zero=False), 2,
                         clip_denoised, callback)


# Adams-Bashforth weights of the newest eps first, by order (iPNDM: the same fixed weights on any step sizes).
ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                   4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@torch.no_grad()
def ipndm(model: Model, diffusion: NoiseSchedule, x_T: torch.Tensor, timesteps: Sequence[int], order: int = 4,
          clip_denoised: bool = True, callback: Callback = None) -> torch.Tensor:
    """Improved PNDM (Zhang & Chen 2023, "DEIS", sec. 4; diff-sampler's ``ipndm``) on ``timesteps``, then to sigma = 0.

    DDIM is Euler's method on the ODE of y = x_t / alpha_t in sigma~ = sigma_t / alpha_t: dy/dsigma~ = eps(x_t, t)
    (Song et al. 2021, eq. 14). iPNDM keeps that step, y_s = y_t + (sigma~_s - sigma~_t) e, but with e the
    Adams-Bashforth extrapolation of the last ``order`` eps predictions (:data:`ADAMS_BASHFORTH`), lower orders on
    the first steps while the history fills. Whatever the network predicts, eps is taken from its output
    (:func:`ddpm.schedules.split_prediction`), after clipping x_0 when ``clip_denoised``. Multistep methods reuse old
    predictions, so they get the accuracy of order ``order`` for one network call per step.
    """
    if order not in ADAMS_BASHFORTH:
        raise ConfigError(f"iPNDM order must be 1 to 4, got {order}")
    timesteps = list(timesteps)
    x = x_T
    history: list[torch.Tensor] = []  # eps of the steps so far, newest first
    for i, t in enumerate(timesteps):
        eps, x0 = _predict(model, diffusion, x, t, clip_denoised)
        history = [eps] + history[: order - 1]
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        abar_t, abar_s = _abar(diffusion, t), _abar(diffusion, s)
        e = sum(w * h for w, h in zip(ADAMS_BASHFORTH[len(history)], history))
        y = x / math.sqrt(abar_t) + (math.sqrt((1 - abar_s) / abar_s) - math.sqrt((1 - abar_t) / abar_t)) * e
        x = math.sqrt(abar_s) * y
        if callback is not None:
            callback(i, t, x, x0)
    return x


# ---------------------------------------------------------------------------------------------- the registry
# Every registered sampler takes (model, schedule, x_T, timesteps, *, eta, clip_denoised, generator, callback) and
# returns x_0; the keywords it has no use for it ignores.
SamplerFunction = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: its function, one line of help, whether its grid calls the network at t = 0
    (:func:`ddpm.spacing.time_grid`), its step count when none is given, and whether it draws noise."""

    function: SamplerFunction
    help: str
    call_at_zero: bool = False
    default_steps: int = 50
    stochastic: bool = False


SAMPLERS: dict[str, Sampler] = {}


def register_sampler(name: str, sampler: Sampler) -> None:
    """Add ``sampler`` under ``name``: ``diffusion.sample``, ``ddpm sample``, ``eval`` and ``visualize`` take it."""
    if not name or name in SAMPLERS:
        raise ValueError(f"a sampler needs a new, non-empty name, got {name!r}")
    SAMPLERS[name] = sampler


def sampler_help() -> str:
    """The sampler choices, one clause each, for ``--help`` texts."""
    return "; ".join(f"{name}: {s.help}" for name, s in SAMPLERS.items())


register_sampler("ddpm", Sampler(
    lambda model, d, x, ts, clip_denoised, generator, callback, **_: ddpm_sample(model, d, x, ts, clip_denoised,
                                                                                  generator, callback),
    "ancestral sampling, Ho et al.'s Algorithm 2 (all T steps unless --sampling-steps respaces them)",
    call_at_zero=True, default_steps=0, stochastic=True))
register_sampler("ddim", Sampler(
    lambda model, d, x, ts, eta, clip_denoised, generator, callback, **_: ddim_sample(model, d, x, ts, eta,
                                                                                       clip_denoised, generator,
                                                                                       callback),
    "DDIM, deterministic unless --eta > 0", call_at_zero=True))
register_sampler("dpm++2m", Sampler(
    lambda model, d, x, ts, clip_denoised, callback, **_: dpm_solver_pp(model, d, x, ts, 2, clip_denoised, callback),
    "DPM-Solver++(2M), second-order multistep"))
register_sampler("dpm++3m", Sampler(
    lambda model, d, x, ts, clip_denoised, callback, **_: dpm_solver_pp(model, d, x, ts, 3, clip_denoised, callback),
    "DPM-Solver++(3M), third-order multistep"))
register_sampler("ipndm", Sampler(
    lambda model, d, x, ts, clip_denoised, callback, **_: ipndm(model, d, x, ts, 4, clip_denoised, callback),
    "improved PNDM, fourth-order Adams-Bashforth on eps"))


def default_steps(sampler: str, timesteps: int) -> int:
    """The steps :func:`sample` takes when given none: all T for "ddpm", else the sampler's default (50) within what
    its grid allows (T, or T - 1 where the step to sigma = 0 stands in for t = 0)."""
    spec = _sampler(sampler)
    most = timesteps if spec.call_at_zero else max(timesteps - 1, 1)
    return most if spec.default_steps == 0 else min(spec.default_steps, most)


def _sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sample(model: Model, diffusion: NoiseSchedule, x_T: torch.Tensor, sampler: str = "ddpm",
           steps: int | None = None, eta: float = 0.0, clip_denoised: bool = True, generator: Generator = None,
           callback: Callback = None, spacing: str = "uniform") -> torch.Tensor:
    """Run ``sampler`` from ``x_T`` in ``steps`` network calls (None: :func:`default_steps`) placed by ``spacing``
    (:func:`ddpm.spacing.time_grid`)."""
    spec = _sampler(sampler)
    steps = default_steps(sampler, diffusion.timesteps) if steps is None else steps
    timesteps = time_grid(spacing, diffusion, steps, spec.call_at_zero)
    return spec.function(model, diffusion, x_T, timesteps, eta=eta, clip_denoised=clip_denoised, generator=generator,
                         callback=callback)
