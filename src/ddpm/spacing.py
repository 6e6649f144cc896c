"""Step spacings: at which of the T discrete timesteps a sampler with a given number of steps calls the network.

A spacing is a decreasing map from u in [0, 1] to a continuous timestep tau(u) in [0, T - 1], tau(0) = T - 1 and
tau(1) = 0, evaluated at evenly spaced u and rounded to the discrete schedule the network was trained on:

* ``uniform``: tau = (T - 1)(1 - u), even steps in t (Ho et al.; DDIM's default).
* ``quadratic``: tau = (T - 1)(1 - u)^2, steps that shrink towards t = 0 (Song et al. 2021, DDIM's CIFAR-10 runs).
* ``logsnr``: even steps in lambda = log(alpha / sigma) = log SNR / 2, the variable in which DPM-Solver's
  exponential integrator is exact for the linear part (Lu et al. 2022, sec. 3.3); tau is found by interpolating the
  schedule's lambda_t.
* ``karras``: sigma_EDM = sigma / alpha = sqrt((1 - abar) / abar) spaced as (s_max^(1/rho) + u (s_min^(1/rho) -
  s_max^(1/rho)))^rho with rho = 7 (Karras et al. 2022, eq. 5), between the schedule's own sigma_EDM at t = T - 1 and
  t = 0, mapped back to t by interpolating log sigma_EDM.
* ``trailing``: t_k = round(T k / N) - 1 for k = N, ..., 1 (diffusers' "trailing"; Lin et al. 2024, sec. 3.3): even
  steps that start at T - 1 and stop one step short of t = 0, the same for every sampler. A grid of N steps is
  every other point of the grid of 2N (k / N = 2k / 2N), which is what progressive distillation needs
  (:mod:`ddpm.distill`): a student step spans exactly two steps of its teacher.

Samplers end with a step to the clean image (alpha-bar = 1). Two conventions for the last network call exist and
both are kept, so that every sampler stays what its paper and diffusers compute: DDPM and DDIM call the network
at t = 0 too (``steps`` points from u = 0 to u = 1), while the DPM-Solver family lets the step to sigma = 0 stand in
for t = 0 (``steps`` points u = i / steps, i < steps), as diffusers' ``DPMSolverMultistepScheduler`` does.

Rounding can put two points on one timestep where the spacing is dense (small t with ``karras``); such points are
moved apart by one, so the grid is strictly decreasing, which every multistep formula needs (h = 0 divides by zero).
"""

from __future__ import annotations

import math

import numpy as np

from ddpm.errors import ConfigError
from ddpm.schedules import NoiseSchedule

SPACINGS = ("uniform", "quadratic", "logsnr", "karras", "trailing")
KARRAS_RHO = 7.0


def _tau(spacing: str, u: np.ndarray, diffusion: NoiseSchedule) -> np.ndarray:
    """Continuous timesteps tau(u) in [0, T - 1] of the non-uniform spacings (see the module docstring)."""
    T = diffusion.timesteps
    if spacing == "quadratic":
        return (T - 1) * (1 - u) ** 2
    abar = diffusion.alphas_cumprod.double().numpy()
    if spacing == "logsnr":
        level = 0.5 * np.log(abar / (1 - abar))  # lambda_t, decreasing in t
    elif spacing == "karras":
        level = -np.log(np.sqrt((1 - abar) / abar))  # -log sigma_EDM, decreasing in t
    else:
        raise ConfigError(f"unknown time spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if T == 1:
        return np.zeros_like(u)
    if spacing == "logsnr":
        target = level[-1] + u * (level[0] - level[-1])
    else:
        s_max, s_min = math.exp(-level[-1]), math.exp(-level[0])
        target = -np.log((s_max ** (1 / KARRAS_RHO) + u * (s_min ** (1 / KARRAS_RHO) - s_max ** (1 / KARRAS_RHO)))
                         ** KARRAS_RHO)
    # np.interp needs increasing x: level is decreasing in t, so interpolate on the reversed arrays.
    return np.interp(target, level[::-1], np.arange(T - 1, -1, -1, dtype=np.float64))


def uniform_grid(timesteps: int, steps: int, call_at_zero: bool = True) -> list[int]:
    """``steps`` timesteps evenly spaced from T - 1 down, rounded to integers: to 0 included (``call_at_zero``), or
    the first ``steps`` of ``steps`` + 1 points to 0. The integer arithmetic gives exactly the rounding of diffusers'
    "linspace" spacing."""
    n = max(steps - 1, 1) if call_at_zero else steps  # intervals between T - 1 and the point of t = 0
    return [round(i * (timesteps - 1) / n) for i in range(n, n - steps, -1)]


def time_grid(spacing: str, diffusion: NoiseSchedule, steps: int, call_at_zero: bool = True) -> list[int]:
    """The ``steps`` timesteps, from T - 1 down, at which a sampler calls the network.

    ``call_at_zero``: the last call is at t = 0 (DDPM, DDIM); otherwise the grid has ``steps`` + 1 points from T - 1
    to 0 and the last, t = 0, is left to the final step to sigma = 0 (the DPM-Solver family). ``uniform`` with
    ``call_at_zero`` is :func:`ddpm.samplers.sampling_timesteps`, and without it the rounded linspace of diffusers'
    "linspace" spacing.
    """
    T = diffusion.timesteps
    most = T if call_at_zero else max(T - 1, 1)
    if not 1 <= steps <= most:
        what = "T" if call_at_zero else "T - 1"
        raise ConfigError(f"sampling steps must be between 1 and {what} = {most}, got {steps}")
    if spacing not in SPACINGS:
        raise ConfigError(f"unknown time spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if spacing == "uniform":
        grid = uniform_grid(T, steps, call_at_zero)
    elif spacing == "trailing":  # T / N >= 1 apart: strictly decreasing already; halves are exact floats, rounded to even
        return [round(T * k / steps) - 1 for k in range(steps, 0, -1)]
    else:
        n = max(steps - 1, 1) if call_at_zero else steps
        grid = [round(float(t)) for t in _tau(spacing, np.arange(steps) / n, diffusion)]
    grid[0] = T - 1
    floor = 0 if call_at_zero or T == 1 else 1
    for i in range(1, len(grid)):  # strictly decreasing: push coinciding points down, then back up from the floor
        grid[i] = min(grid[i], grid[i - 1] - 1)
    grid[-1] = max(grid[-1], floor)
    for i in range(len(grid) - 2, -1, -1):  # never past T - 1: grid[i] <= T - 1 - i after the first pass
        grid[i] = max(grid[i], grid[i + 1] + 1)
    return grid
