"""The forward-process figure: real images noised by q(x_t | x_0) for the linear and cosine schedules, with the
curves of alpha-bar_t and SNR(t)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ddpm.diffusion import GaussianDiffusion
from ddpm.figures.common import quarter_inches, tile
from ddpm.generate import to_uint8

# The timesteps of the forward-process figure in the paper's count (1 .. T; code t = paper t - 1), given for
# T = 1000 and scaled to other T.
FORWARD_TIMESTEPS = (1, 100, 250, 500, 750, 1000)
SCHEDULE_COLORS = {"linear": "tab:blue", "cosine": "tab:orange"}


def scaled_timesteps(timesteps: int, at_1000: Sequence[int] = FORWARD_TIMESTEPS) -> list[int]:
    """Paper timesteps (1 .. T) given for T = 1000 mapped to the same fraction t/1000 of a process of ``timesteps`` = T
    steps."""
    return sorted({max(1, min(round(t * timesteps / 1000), timesteps)) for t in at_1000})


def forward_figure(images: torch.Tensor, timesteps: int = 1000, beta_start: float | None = None,
                   beta_end: float | None = None, seed: int = 0) -> Figure:
    """q(x_t | x_0) of ``images`` (uint8) at :data:`FORWARD_TIMESTEPS` for the linear and cosine schedules, with
    alpha-bar_t and SNR(t) of both below, all labelled with the paper's t (1 .. T; the code's t - 1 indexes them).

    Each x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps (Ho et al. 2020, eq. 4) uses the same eps in
    every panel, so the columns differ only by alpha-bar_t and the two grids only by the schedule.
    """
    schedules = {name: GaussianDiffusion(timesteps, beta_start, beta_end, name) for name in SCHEDULE_COLORS}
    ts = scaled_timesteps(timesteps)
    x0 = images.float() / 127.5 - 1
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    n = len(images)
    fig = Figure(figsize=(12, quarter_inches(0.75 * n + 4.5)), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[0.75 * n + 0.5, 3.25])
    for col, (name, diffusion) in enumerate(schedules.items()):
        noisy = [to_uint8(diffusion.q_sample(x0, torch.full((n,), t - 1), eps).clamp(-1, 1)).numpy() for t in ts]
        rows = [[x_t[i] for x_t in noisy] for i in range(n)]
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(tile(rows), interpolation="nearest")
        size = images.shape[-1] + 1
        ax.set_xticks([1 + size * (j + 0.5) for j in range(len(ts))], [f"t={t}" for t in ts])
        ax.set_yticks([])
        ax.tick_params(length=0)
        ax.set_title(f"{name} schedule: x_t ~ q(x_t | x_0)", color=SCHEDULE_COLORS[name])
    t_axis = np.arange(1, timesteps + 1)  # the paper's t; alphas_cumprod[t - 1] is alpha-bar_t
    abar = fig.add_subplot(grid[1, 0])
    ratio = fig.add_subplot(grid[1, 1])
    for name, diffusion in schedules.items():
        abar.plot(t_axis, diffusion.alphas_cumprod.numpy(), label=name, color=SCHEDULE_COLORS[name])
        ratio.semilogy(t_axis, diffusion.snr.numpy(), label=name, color=SCHEDULE_COLORS[name])
    for ax, title in ((abar, "ᾱ_t: fraction of the signal's variance left"), (ratio, "SNR(t) = ᾱ_t / (1 − ᾱ_t)")):
        for t in ts:
            ax.axvline(t, color="0.85", lw=0.8, zorder=0)
        ax.set_xlabel("timestep t (the paper's 1 … T)")
        ax.set_title(title)
        ax.legend()
        ax.set_xlim(1, timesteps)
    fig.suptitle(f"The forward process, T = {timesteps} (the same noise ε in every panel)")
    return fig
