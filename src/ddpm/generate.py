"""Sampling many images: one seed per image, batched, resumable, shared across ranks.

Image i is drawn from its own generator seeded with ``seed + i`` (EDM's convention), so it is the same image
whatever the batch size, the device count or the order in which the batches run. A class-conditional model draws
each image of the class asked for it (by default image i of class i mod K, so any job is class-balanced); the label
travels with the seed, so an image still depends on its seed and class only.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ddpm.diffusion import GaussianDiffusion
from ddpm.distributed import amp_dtype, autocast
from ddpm.files import atomic_write
from ddpm.guidance import num_classes


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model range [-1, 1] (N, C, H, W) -> uint8 [0, 255] (N, H, W, C) on the CPU."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def image_path(folder: Path, seed: int) -> Path:
    return folder / f"{seed:06d}.png"


def save_png(image: np.ndarray, path: Path) -> None:
    """Write atomically, so that an interrupted job never leaves a truncated image that a resume would keep."""
    pixels = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    atomic_write(path, lambda f: pixels.save(f, format="PNG"), durable=False)


def generate(model: torch.nn.Module, diffusion: GaussianDiffusion, seeds: Sequence[int], batch_size: int,
             on_batch: Callable[[list[int], torch.Tensor], None], sampler: str = "ddim", steps: int | None = None,
             eta: float = 0.0, clip_denoised: bool = True, device: torch.device | None = None,
             progress: bool = True, amp: bool = False, labels: Sequence[int] | None = None,
             guidance_scale: float | None = None, spacing: str = "uniform") -> float:
    """Sample one image per seed and hand each batch to ``on_batch(seeds, uint8 NHWC images)``.

    ``amp`` runs the network under autocast (bfloat16 where the device has it, see
    :func:`ddpm.distributed.amp_dtype`); the sampler's own arithmetic stays float32. For a class-conditional model,
    ``labels`` holds the class of each seed (default: :func:`balanced_labels`) and ``guidance_scale`` the
    classifier-free guidance (default: the model's recommended ``config.guidance_scale``); ``spacing`` places the
    sampler's steps (:func:`ddpm.spacing.time_grid`). Returns the images per second achieved.
    """
    device = device or next(model.parameters()).device
    c, r = model.config.in_channels, model.config.resolution
    if num_classes(model) is not None:
        labels = balanced_labels(len(seeds), num_classes(model)) if labels is None else list(labels)
        if len(labels) != len(seeds):
            raise ValueError(f"got {len(labels)} labels for {len(seeds)} seeds")
        guidance_scale = model.config.guidance_scale if guidance_scale is None else guidance_scale
    elif guidance_scale is None:
        guidance_scale = 1.0
    bar = tqdm(total=len(seeds), unit="img", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    dtype = amp_dtype(device) if amp else None
    for i in range(0, len(seeds), batch_size):
        chunk = list(seeds[i:i + batch_size])
        generators = [torch.Generator(device).manual_seed(s) for s in chunk]
        chunk_labels = None if labels is None else torch.tensor(labels[i:i + batch_size], dtype=torch.long)
        with autocast(device, dtype):
            x = diffusion.sample(model, (len(chunk), c, r, r), sampler=sampler, steps=steps, eta=eta,
                                 clip_denoised=clip_denoised, generator=generators, device=device,
                                 labels=chunk_labels, guidance_scale=guidance_scale, spacing=spacing)
        on_batch(chunk, to_uint8(x))
        bar.update(len(chunk))
    bar.close()
    return len(seeds) / max(time.perf_counter() - start, 1e-9)


def balanced_labels(count: int, num_classes: int) -> list[int]:
    """Image i of class i mod K: the default classes of a job, as many images of every class as the count allows."""
    return [i % num_classes for i in range(count)]


def grid_columns(n: int) -> int:
    """About sqrt(N) columns."""
    return max(1, math.ceil(math.sqrt(n)))
