"""The reverse-process figures: a sampler's x_t and predicted x_0 recorded step by step, drawn as a strip and as an
animated GIF."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from ddpm.diffusion import GaussianDiffusion
from ddpm.figures.common import paper_t, quarter_inches, tile
from ddpm.generate import to_uint8
from ddpm.samplers import Model, default_steps, randn


@dataclass
class Trajectory:
    """Snapshots of a reverse process: at step i (the code's timestep t, the paper's t + 1) the input x_t and the x_0
    predicted from it."""

    steps: list[int]
    timesteps: list[int]
    x_t: list[np.ndarray]   # each (N, H, W, C) uint8
    x0_pred: list[np.ndarray]
    seeds: list[int]
    sampler: str


@torch.no_grad()
def record_trajectory(model: Model, diffusion: GaussianDiffusion, seeds: Sequence[int], shape: tuple[int, int, int],
                      keep: set[int] | None = None, sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0,
                      clip_denoised: bool = True, device: torch.device | str = "cpu", labels: Sequence[int] | None = None,
                      guidance_scale: float = 1.0, spacing: str = "uniform") -> Trajectory:
    """Run ``sampler`` from the noise of ``seeds`` and keep (x_t, predicted x_0) at the step indices in ``keep``
    (all steps if None).

    The noise comes from one generator per seed, as in ``ddpm sample --seed``, so the last x_0 is the image that
    command draws for that seed. The samplers' ``callback(i, t, x, x0_pred)`` hands over the state *after*
    step i; the x_t that step i denoised is the state after step i - 1 (x_T for i = 0). A class-conditional model
    draws seed i of class ``labels[i]`` (None: no class) with classifier-free guidance ``guidance_scale``;
    ``spacing`` places the steps (:func:`ddpm.spacing.time_grid`).
    """
    generators = [torch.Generator(device).manual_seed(s) for s in seeds]
    x_T = randn((len(seeds), *shape), generators, device)
    x_t = x_T
    record = Trajectory([], [], [], [], list(seeds), sampler)

    def callback(i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        nonlocal x_t
        if keep is None or i in keep:
            record.steps.append(i)
            record.timesteps.append(t)
            record.x_t.append(to_uint8(x_t.clamp(-1, 1)).numpy())
            record.x0_pred.append(to_uint8(x0.clamp(-1, 1)).numpy())
        x_t = x

    diffusion.sample(model, (len(seeds), *shape), sampler=sampler, steps=steps, eta=eta,
                     clip_denoised=clip_denoised, generator=generators, device=device, callback=callback, x_T=x_T,
                     labels=None if labels is None else torch.tensor(list(labels), dtype=torch.long),
                     guidance_scale=guidance_scale, spacing=spacing)
    return record


def number_of_steps(diffusion: GaussianDiffusion, sampler: str, steps: int | None) -> int:
    """The network evaluations ``sampler`` makes with ``steps`` (None: :func:`ddpm.samplers.default_steps`)."""
    return default_steps(sampler, diffusion.timesteps) if steps is None else steps


def every_k(total: int, every: int) -> set[int]:
    """Step indices 0, k, 2k, ... and always the last one, whose predicted x_0 is the sample."""
    return set(range(0, total, every)) | {total - 1}


def trajectory_figure(record: Trajectory, keep: set[int]) -> Figure:
    """A strip: for each seed a row of x_t and a row of the x_0 predicted from it, one column per kept step, labelled
    with the paper's t (:func:`~ddpm.figures.common.paper_t`)."""
    columns = [k for k, i in enumerate(record.steps) if i in keep]
    rows, labels = [], []
    for n, seed in enumerate(record.seeds):
        rows.append([record.x_t[k][n] for k in columns])
        rows.append([record.x0_pred[k][n] for k in columns])
        labels += [f"seed {seed}: x_t", "predicted x̂₀"]
    fig = Figure(figsize=(quarter_inches(0.75 * len(columns) + 1.5), quarter_inches(0.75 * len(rows) + 1)),
                 layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(tile(rows), interpolation="nearest")
    size = record.x_t[0].shape[1] + 1
    ax.set_xticks([1 + size * (j + 0.5) for j in range(len(columns))],
                  [f"t={paper_t(record.timesteps[k])}" for k in columns], fontsize=8)
    ax.set_yticks([1 + size * (j + 0.5) for j in range(len(rows))], labels, fontsize=8)
    ax.tick_params(length=0)
    ax.set_title(f"Reverse process ({record.sampler}): x_t and the x̂₀ predicted from it; the last x̂₀ is the sample")
    return fig


def trajectory_gif(record: Trajectory, path: str | Path, scale: int = 3, frame_ms: int = 100) -> tuple[int, int]:
    """An animated GIF of every recorded step: x_t above, predicted x_0 below, one column per seed, the timestep
    in a caption; upscaled ``scale`` times (nearest neighbour) and the last frame held for a second.
    Returns the frame size (width, height) in pixels."""
    frames = []
    caption = 16
    for k, t in enumerate(record.timesteps):
        grid = tile([list(record.x_t[k]), list(record.x0_pred[k])], pad=1)
        image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
        frame = Image.new("RGB", (image.width, image.height + caption), "white")
        frame.paste(image, (0, 0))
        ImageDraw.Draw(frame).text((4, image.height + 2), f"{record.sampler}  t={paper_t(t)}", fill="black")
        frames.append(frame)
    durations = [frame_ms] * (len(frames) - 1) + [1000]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True)
    return frames[0].size
