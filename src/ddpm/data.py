"""The training data stream: the source of ``--data-dir`` opened for training, and the batch of every step.

Reading the images is :mod:`ddpm.datasets`' job; this module decides how training holds them and which of them each
step sees. Small data sets live in one tensor (on the GPU when training there); folders too large for memory are
decoded lazily by a DataLoader. Either way the batch at a training step is a pure function of (seed, step), see
:class:`StepBatches`, so a resumed run sees exactly the data it would have seen, whatever the number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from ddpm.datasets import (
    CIFAR10_MD5, CIFAR10_URL, ImageFolderDataset, check_channels, find_cifar10, list_images, read_cifar10_labelled,
    read_images, read_labelled_images, resize_cifar10, source_path, to_channels,
)
from ddpm.errors import DataError

IN_MEMORY_LIMIT = 4 << 30  # bytes of uint8 pixels kept in one tensor; larger folders stream through a DataLoader


# ------------------------------------------------------------------------------------------------ training sources
@dataclass
class TrainingData:
    """Training images: all in ``images`` (uint8, N x C x R x R) or, for large folders, lazily in ``dataset``; for a
    labelled source opened with ``labelled=True``, their ``labels`` (int64, N; in ``dataset`` when streamed) and
    ``class_names``."""

    description: str
    images: torch.Tensor | None = None
    dataset: ImageFolderDataset | None = None
    labels: torch.Tensor | None = None
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.dataset)


def open_training_data(data_dir: str | None, resolution: int, skip_bad: bool = False, num_workers: int = 0,
                       default_root: str | Path = "data", url: str = CIFAR10_URL, md5: str | None = CIFAR10_MD5,
                       channels: int = 3, labelled: bool = False) -> TrainingData:
    """Resolve ``--data-dir`` (see :func:`ddpm.datasets.source_path`): CIFAR-10's train split, or the images of a
    folder or an archive, in memory unless they need more than :data:`IN_MEMORY_LIMIT` bytes; with ``channels``
    channels (3: RGB, 1: grayscale) and, with ``labelled``, the class labels (a DataError where there are none,
    see :func:`ddpm.datasets.classes_of`)."""
    check_channels(channels)
    path = source_path(data_dir, default_root, url, md5)
    cifar = find_cifar10(path)
    if cifar is not None:
        images, labels, names = read_cifar10_labelled(cifar, "train")
        images = to_channels(resize_cifar10(images, resolution), channels)
        return TrainingData(f"CIFAR-10 train ({cifar}, {len(images)} images)", images=images,
                            labels=labels if labelled else None, class_names=names if labelled else ())
    if path.is_dir() and len(list_images(path)) * channels * resolution * resolution > IN_MEMORY_LIMIT:
        dataset = ImageFolderDataset(path, resolution, skip_bad, channels, labelled)
        return TrainingData(f"image folder {path} ({len(dataset)} images, streamed)", dataset=dataset,
                            class_names=dataset.class_names)
    if labelled:
        images, labels, names = read_labelled_images(path, resolution, skip_bad, num_workers, channels)
        return TrainingData(f"images in {path} ({len(images)} images, {len(names)} classes)", images=images,
                            labels=labels, class_names=names)
    images = read_images(path, resolution, skip_bad, num_workers, channels)
    return TrainingData(f"images in {path} ({len(images)} images)", images=images)


# ------------------------------------------------------------------------------------------------ batches per step
def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers (NumPy's SeedSequence), e.g. (seed, step, rank)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class StepBatches:
    """The indices of the global batch at each step: epoch e visits a permutation seeded by (seed, e).

    Each rank takes its contiguous slice of the global batch, so the set of images a step trains on does not
    depend on the number of ranks, and resuming at step s needs nothing but s.
    """

    def __init__(self, num_images: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size > num_images:
            raise DataError(f"--batch-size {batch_size} is larger than the data set ({num_images} images); "
                            "lower --batch-size or add images")
        if batch_size % world_size:
            raise DataError(f"--batch-size {batch_size} must be divisible by the number of ranks ({world_size})")
        self.n, self.batch, self.seed, self.rank, self.world = num_images, batch_size, seed, rank, world_size
        self.steps_per_epoch = num_images // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, 0xDA7A, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=generator)
        start = position * self.batch + self.rank * (self.batch // self.world)
        return self._perm[start:start + self.batch // self.world]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU ``tensor`` on ``device``, copied without the host waiting for the device: on CUDA through pinned
    memory (a copy from pageable memory may wait for the device's queue to drain; torch waits for a blocking one)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class _StepSampler(torch.utils.data.Sampler):
    def __init__(self, batches: StepBatches, start: int, stop: int):
        self.batches, self.start, self.stop = batches, start, stop

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.batches.indices(step).tolist()

    def __len__(self) -> int:
        return self.stop - self.start


def iterate_batches(data: TrainingData, batches: StepBatches, start: int, stop: int, device: torch.device,
                    num_workers: int = 0) -> Iterator:
    """uint8 batches (local to this rank) for steps ``start .. stop-1``, on ``device``; for labelled data, pairs
    (images, int64 labels). After the first batch the host never waits for the device here."""
    if data.images is not None:
        images = data.images.to(device)  # CIFAR-sized data lives on the device: no loader, no copies per step
        labels = data.labels.to(device) if data.labels is not None else None
        for step in range(start, stop):
            index = to_device(batches.indices(step), device)
            yield images[index] if labels is None else (images[index], labels[index])
        return
    loader = DataLoader(data.dataset, batch_sampler=_StepSampler(batches, start, stop), num_workers=num_workers,
                        collate_fn=ImageFolderDataset.collate, pin_memory=device.type == "cuda",
                        persistent_workers=num_workers > 0)
    for batch in loader:
        if isinstance(batch, tuple):
            yield tuple(part.to(device, non_blocking=True) for part in batch)
        else:
            yield batch.to(device, non_blocking=True)


def to_model_range(images: torch.Tensor, hflip: bool, generator: torch.Generator | None) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], each image flipped left-right with probability 1/2 if ``hflip``."""
    x = images.float() / 127.5 - 1.0
    if hflip:
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x
