"""What a trained DDPM does with given images rather than pure noise: reverse samples from a shared x_t (Ho et al.
2020, Fig. 7), interpolation in x_t (Fig. 8) and inpainting (the replacement method, with RePaint's resampling,
Lugmayr et al. 2022).

Each runs the reverse process of :func:`ddpm.samplers.ddpm_sample` from some x_t, on all timesteps from t down to 0
or on ``steps`` of them (respaced, Nichol & Dhariwal 2021). Noise comes from ``torch.Generator`` objects, one per
image as in ``ddpm sample``, so every result is reproducible from its seeds.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.samplers import Model, ddpm_sample, randn, sampling_timesteps
from ddpm.schedules import split_prediction

MASKS = ("centre", "half", "random")


def timesteps_from(t: int, steps: int | None) -> list[int]:
    """The reverse process's timesteps from ``t`` down to 0: all t + 1 of them, or ``steps`` evenly spaced ones
    (both ends kept, at most t + 1)."""
    if steps is None or steps >= t + 1:
        return list(range(t, -1, -1))
    if steps < 2:
        return [t] if t == 0 else [t, 0]
    return [round(i * t / (steps - 1)) for i in reversed(range(steps))]


def encode(diffusion: GaussianDiffusion, x0: torch.Tensor, t: int, generator) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) = N(sqrt(alpha-bar_t) x_0, (1 - alpha-bar_t) I) (eq. 4), the stochastic encoder of Fig. 7-8."""
    noise = randn(x0.shape, generator, x0.device).to(x0.dtype)
    return diffusion.q_sample(x0, torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.long), noise)


def decode(model: Model, diffusion: GaussianDiffusion, x_t: torch.Tensor, t: int, generator,
           steps: int | None = None, clip_denoised: bool = True) -> torch.Tensor:
    """x_0 ~ p_theta(x_0 | x_t): ancestral sampling from x_t at timestep ``t`` (Algorithm 2 from step t)."""
    return ddpm_sample(model, diffusion, x_t, timesteps_from(t, steps), clip_denoised, generator)


def generators(seeds: Sequence[int], device) -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(s) for s in seeds]


@torch.no_grad()
def shared_xt(model: Model, diffusion: GaussianDiffusion, x0: torch.Tensor, ts: Sequence[int], samples: int,
              seed: int = 0, steps: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each t of ``ts``: one x_t ~ q(x_t | x_0) of the single image ``x0`` (1, C, H, W) and ``samples`` reverse
    samples x_0 ~ p_theta(x_0 | x_t) from that same x_t (Ho et al. 2020, Fig. 7). x_t uses seed ``seed``, sample k
    seed ``seed + 1 + j * samples + k`` at the j-th t (its own noise at every t, so that no column of the figure
    shares reverse noise with another). Returns [(x_t (1, C, H, W), samples (S, C, H, W))] in the order of ``ts``."""
    out = []
    for j, t in enumerate(ts):
        x_t = encode(diffusion, x0, t, generators([seed], x0.device))
        batch = x_t.expand(samples, *x_t.shape[1:]).contiguous()
        first = seed + 1 + j * samples
        out.append((x_t, decode(model, diffusion, batch, t, generators(range(first, first + samples), x0.device),
                                steps)))
    return out


@torch.no_grad()
def interpolate(model: Model, diffusion: GaussianDiffusion, x0_a: torch.Tensor, x0_b: torch.Tensor, t: int,
                lambdas: Sequence[float], seed: int = 0, steps: int | None = None) -> torch.Tensor:
    """Decode x_t = (1 - lambda) x_t^a + lambda x_t^b for each lambda (Ho et al. 2020, Fig. 8), x_t^a and x_t^b
    from q(x_t | x_0) with seeds ``seed`` and ``seed + 1``; the reverse noise has seed ``seed + 2`` for every lambda,
    so lambda = 0 and 1 give :func:`reconstruct` of the two images. Returns (len(lambdas), C, H, W)."""
    x_a = encode(diffusion, x0_a, t, generators([seed], x0_a.device))
    x_b = encode(diffusion, x0_b, t, generators([seed + 1], x0_b.device))
    mixed = torch.cat([(1 - lam) * x_a + lam * x_b for lam in lambdas])
    return decode(model, diffusion, mixed, t, generators([seed + 2] * len(lambdas), mixed.device), steps)


@torch.no_grad()
def reconstruct(model: Model, diffusion: GaussianDiffusion, x0: torch.Tensor, t: int, encode_seed: int,
                decode_seed: int, steps: int | None = None) -> torch.Tensor:
    """One image (1, C, H, W) encoded to x_t with ``encode_seed`` and decoded back with ``decode_seed``."""
    x_t = encode(diffusion, x0, t, generators([encode_seed], x0.device))
    return decode(model, diffusion, x_t, t, generators([decode_seed], x0.device), steps)


def make_mask(kind: str, size: int, generator: torch.Generator | None = None, fraction: float = 0.5) -> torch.Tensor:
    """A (1, 1, size, size) bool mask, True where a pixel is known: ``"centre"`` hides the centre square of half the
    side, ``"half"`` the right half, ``"random"`` each pixel with probability ``fraction``."""
    known = torch.ones(1, 1, size, size, dtype=torch.bool)
    if kind == "centre":
        a, b = size // 4, size - size // 4
        known[..., a:b, a:b] = False
    elif kind == "half":
        known[..., size // 2:] = False
    elif kind == "random":
        if not 0 <= fraction <= 1:
            raise ConfigError(f"the masked fraction must be in [0, 1], got {fraction}")
        known = torch.rand(1, 1, size, size, generator=generator) >= fraction
    else:
        raise ConfigError(f"unknown mask {kind!r}; choose one of {', '.join(MASKS)}")
    return known


def repaint_schedule(levels: int, jump_length: int = 10, resample: int = 1) -> list[int]:
    """The walk over the levels K = ``levels`` .. 0 of RePaint (Lugmayr et al. 2022, Algorithm 1): down
    one level at a time, and at every ``jump_length``-th level (1, 1 + j, 1 + 2j, ... below K - j + 1) back up
    ``jump_length`` levels, ``resample - 1`` times. ``resample = 1`` is the plain walk K, K - 1, ..., 0."""
    if resample < 1 or jump_length < 1:
        raise ConfigError(f"RePaint needs --resample >= 1 and --jump-length >= 1, got {resample} and {jump_length}")
    remaining = {level: resample - 1 for level in range(1, levels - jump_length + 1, jump_length)}
    level, path = levels, [levels]
    while level > 0:
        level -= 1
        path.append(level)
        if remaining.get(level, 0) > 0:
            remaining[level] -= 1
            for _ in range(jump_length):
                level += 1
                path.append(level)
    return path


@torch.no_grad()
def inpaint(model: Model, diffusion: GaussianDiffusion, x0: torch.Tensor, known: torch.Tensor,
            steps: int | None = None, resample: int = 1, jump_length: int = 10, generator=None,
            clip_denoised: bool = True) -> torch.Tensor:
    """Fill the pixels of ``x0`` where ``known`` is False (the replacement method; RePaint with ``resample`` > 1).

    On the timesteps tau_1 < ... < tau_K (all T, or ``steps`` respaced ones) and tau_0 = -1 (the clean image): start
    from x ~ N(0, I); each step down from tau_l to tau_{l-1} = s draws the unknown pixels from p_theta(x_s | x_t)
    (the respaced ancestral step of :func:`ddpm.samplers.ddpm_sample`) and the known ones from q(x_s | x_0), the
    clean x_0 itself at the last step, so the result keeps the known pixels exactly. A step up (RePaint) renoises
    the whole image, x_t = sqrt(alpha-bar_t / alpha-bar_s) x_s + sqrt(1 - alpha-bar_t / alpha-bar_s) eps.
    """
    T = diffusion.timesteps
    taus = [-1] + sorted(sampling_timesteps(T, T if steps is None else steps))

    def abar(t: int) -> float:
        return diffusion.alphas_cumprod[t].item() if t >= 0 else 1.0

    known = known.to(x0.device).expand_as(x0)
    x = randn(x0.shape, generator, x0.device).to(x0.dtype)
    path = repaint_schedule(len(taus) - 1, jump_length, resample)
    for level, nxt in zip(path[:-1], path[1:]):
        if nxt > level:  # up: forward-noise from tau_level to tau_nxt
            ratio = abar(taus[nxt]) / abar(taus[level])
            x = math.sqrt(ratio) * x + math.sqrt(1 - ratio) * randn(x.shape, generator, x.device).to(x.dtype)
            continue
        t, s = taus[level], taus[nxt]
        abar_t, abar_s = abar(t), abar(s)
        beta = 1 - abar_t / abar_s
        output = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).to(x.dtype)
        _, x0_hat = split_prediction(output, x, math.sqrt(abar_t), math.sqrt(1 - abar_t), diffusion.prediction)
        if clip_denoised:
            x0_hat = x0_hat.clamp(-1, 1)
        x = (math.sqrt(abar_s) * beta / (1 - abar_t)) * x0_hat + (math.sqrt(1 - beta) * (1 - abar_s) / (1 - abar_t)) * x
        if s >= 0:
            var = beta if diffusion.variance == "fixed_large" else beta * (1 - abar_s) / (1 - abar_t)
            x = x + math.sqrt(var) * randn(x.shape, generator, x.device).to(x.dtype)
            x_known = math.sqrt(abar_s) * x0 + math.sqrt(1 - abar_s) * randn(x.shape, generator, x.device).to(x.dtype)
        else:
            x_known = x0
        x = torch.where(known, x_known, x)
    return x
