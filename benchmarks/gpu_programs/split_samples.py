"""The GPU check's ``sample`` part, second half: the samples cut into files small enough to travel, and a grid.

    python benchmarks/gpu_programs/split_samples.py SAMPLES.npz OUT SHARD

SAMPLES.npz is what ``ddpm sample --npz`` writes (``arr_0``: uint8 N x H x W x 3, OpenAI's evaluator format). OUT gets
``samples_<k>.npz`` of SHARD images each, in the same format, and ``samples_grid.png`` of the first 64 (8 per row);
the names of the .npz files are printed on one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

GRID = 64  # images in samples_grid.png, 8 per row


def split(samples: Path, out: Path, shard: int) -> list[str]:
    """Write OUT/samples_<k>.npz of ``shard`` images each and OUT/samples_grid.png; return the .npz names."""
    images = np.load(samples)["arr_0"]
    names = []
    for k, start in enumerate(range(0, len(images), shard)):
        names.append(f"samples_{k}.npz")
        np.savez_compressed(out / names[-1], arr_0=images[start:start + shard])
    grid = torch.from_numpy(images[:GRID]).permute(0, 3, 1, 2).float() / 255
    save_image(grid, out / "samples_grid.png", nrow=8, padding=2)
    return names


if __name__ == "__main__":
    samples, out, shard = sys.argv[1:]
    print(" ".join(split(Path(samples), Path(out), int(shard))))
