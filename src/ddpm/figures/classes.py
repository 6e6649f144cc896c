"""The figures of a class-conditional model: a labelled grid with one row per class (``ddpm visualize classes``),
and the same seeds drawn at several classifier-free guidance scales side by side (``ddpm visualize guidance``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ddpm.figures.common import quarter_inches, tile
from ddpm.generate import generate


def draw(model: torch.nn.Module, diffusion, seeds: Sequence[int], labels: Sequence[int], guidance_scale: float,
         sampler: str, steps: int | None, device: torch.device, batch_size: int = 64,
         spacing: str = "uniform") -> list[np.ndarray]:
    """uint8 RGB (H, W, 3) images of ``seeds`` (a seed may repeat), image i of class ``labels[i]``, the images
    ``ddpm sample --seed`` draws for them with ``sampler`` on ``spacing``'s grid."""
    images: list[np.ndarray] = []
    generate(model, diffusion, list(seeds), batch_size, lambda _, batch: images.extend(batch.numpy()), sampler, steps,
             device=device, progress=False, labels=list(labels), guidance_scale=guidance_scale, spacing=spacing)
    return [_rgb(image) for image in images]


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def labelled_grid(rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], column_labels: Sequence[str] | None,
                  title: str) -> Figure:
    """Rows of equally sized images with a label left of each row (and above each column, if given).

    The figure is as wide as the images and the longest row label need, and at least as wide as the title, so that
    neither is cut off (about 0.08 inch per character at these font sizes)."""
    columns = max(len(r) for r in rows)
    width = max(0.6 * columns + 0.08 * max(map(len, row_labels)) + 0.5, 0.075 * len(title) + 0.5)
    fig = Figure(figsize=(quarter_inches(width), quarter_inches(0.6 * len(rows) + 0.75)), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(tile(rows), interpolation="nearest")
    size = rows[0][0].shape[0] + 1
    ax.set_yticks([1 + size * (j + 0.5) for j in range(len(rows))], row_labels, fontsize=9)
    if column_labels is not None:
        ax.xaxis.tick_top()
        ax.set_xticks([1 + size * (j + 0.5) for j in range(columns)], column_labels, fontsize=9)
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=10)
    return fig
