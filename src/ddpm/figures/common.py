"""What every figure shares: writing a figure at an exact pixel size, and tiling images into one grid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure


def save_figure(fig: Figure, path: str | Path, dpi: int) -> tuple[int, int]:
    """Write ``fig`` as a PNG at ``dpi`` and return its (width, height) in pixels."""
    fig.savefig(path, dpi=dpi)
    return round(fig.get_figwidth() * dpi), round(fig.get_figheight() * dpi)


def paper_t(t: int) -> int:
    """The timestep a figure shows for the code's 0-based ``t``: the paper's t = code t + 1 (Ho et al. count
    t = 1, ..., T, with x_0 the data; the code indexes its tensors 0, ..., T-1). Every figure labels timesteps so,
    to match the equations it illustrates."""
    return t + 1


def quarter_inches(inches: float) -> float:
    """Round a figure dimension up to whole quarter-inches, exact in binary, so pixel sizes are exact."""
    return math.ceil(inches * 4) / 4


def tile(rows: Sequence[Sequence[np.ndarray]], pad: int = 1, fill: int = 255) -> np.ndarray:
    """A grid of equally sized uint8 (H, W, C) images separated by ``pad`` pixels of ``fill``."""
    h, w, c = rows[0][0].shape
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, c), fill, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = image
    return out
