"""Training data: CIFAR-10 (the original pickles, downloaded when absent), image folders and image archives.

Every source becomes uint8 images (N, C, R, R). Small data sets live in one tensor (on the GPU when training
there); folders too large for memory are decoded lazily by a DataLoader. Either way the batch at a training step
is a pure function of (seed, step), see :class:`StepBatches`, so a resumed run sees exactly the data it would have
seen, whatever the number of ranks.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ddpm.errors import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
IN_MEMORY_LIMIT = 4 << 30  # bytes of uint8 pixels kept in one tensor; larger folders stream through a DataLoader
DATA_HELP = (
    "pass --data-dir PATH: a folder of images, a .zip/.tar(.gz) of images, or a folder holding "
    f"{CIFAR10_FOLDER}/ or {CIFAR10_ARCHIVE}"
)


# ----------------------------------------------------------------------------------------------- CIFAR-10 pickles
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of NumPy arrays and nothing else, so a data file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _parse_cifar_batch(raw: bytes, name: str) -> np.ndarray:
    """One CIFAR-10 batch file: a pickled dict with b"data", an N x 3072 uint8 array in channel-major order."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        return data.reshape(-1, 3, 32, 32)
    except Exception as exc:  # any malformed content: name the file
        raise DataError(f"{name} is not a CIFAR-10 python batch file ({exc})") from None


def find_cifar10(path: Path) -> Path | None:
    """The CIFAR-10 pickles at ``path``: the batches folder, a folder holding it or the archive, or None."""
    candidates = [path, path / CIFAR10_FOLDER, path / CIFAR10_ARCHIVE] if path.is_dir() else [path]
    for candidate in candidates:
        if candidate.is_dir() and (candidate / "data_batch_1").is_file():
            return candidate
        if candidate.is_file() and candidate.name.endswith((".tar.gz", ".tgz", ".tar")) and _is_cifar_archive(candidate):
            return candidate
    return None


def _is_cifar_archive(path: Path) -> bool:
    try:
        with tarfile.open(path) as tar:
            return any(m.name.endswith(f"{CIFAR10_FOLDER}/data_batch_1") for m in tar.getmembers())
    except (tarfile.TarError, OSError):
        return False


def read_cifar10(path: str | Path, split: str = "train") -> torch.Tensor:
    """CIFAR-10 ``split`` ("train": 50,000 images, "test": 10,000) as uint8 (N, 3, 32, 32).

    ``path`` is the ``cifar-10-batches-py`` folder, a folder containing it or ``cifar-10-python.tar.gz``, or
    the archive itself. The archive is read without unpacking it.
    """
    source = find_cifar10(Path(path))
    if source is None:
        raise DataError(f"no CIFAR-10 python batches at {path}; {DATA_HELP}")
    names = CIFAR10_SPLITS[split]
    if source.is_dir():
        missing = [n for n in names if not (source / n).is_file()]
        if missing:
            raise DataError(f"CIFAR-10 folder {source} lacks {', '.join(missing)}")
        arrays = [_parse_cifar_batch((source / n).read_bytes(), str(source / n)) for n in names]
    else:
        with tarfile.open(source) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise DataError(f"CIFAR-10 archive {source} lacks {', '.join(missing)}")
            arrays = [_parse_cifar_batch(tar.extractfile(members[n]).read(), f"{source}:{n}") for n in names]
    return torch.from_numpy(np.concatenate(arrays))


def download_cifar10(root: str | Path, url: str = CIFAR10_URL, md5: str | None = CIFAR10_MD5) -> Path:
    """Download ``cifar-10-python.tar.gz`` into ``root`` (checked against ``md5``) and return its path."""
    from torchvision.datasets.utils import check_integrity, download_url

    root = Path(root)
    target = root / CIFAR10_ARCHIVE
    if target.is_file() and check_integrity(str(target), md5):
        return target
    partial = root / f".{CIFAR10_ARCHIVE}.part"  # renamed only once complete and verified
    try:
        download_url(url, str(root), partial.name)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise DataError(f"could not download CIFAR-10 from {url} ({exc.__class__.__name__}: {exc}); {DATA_HELP}") from None
    if not check_integrity(str(partial), md5):
        partial.unlink(missing_ok=True)
        raise DataError(f"the CIFAR-10 download from {url} failed its checksum; try again or {DATA_HELP}")
    os.replace(partial, target)
    return target


# ---------------------------------------------------------------------------------------- image folders and archives
def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_image_name(name: str) -> bool:
    base = os.path.basename(name)
    return name.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".")


def list_images(folder: str | Path) -> list[Path]:
    """Image files below ``folder`` (recursively, hidden files skipped), in a stable sorted order."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and _is_image_name(str(p.relative_to(folder))))


def decode_image(data: bytes | Path, resolution: int | None, name: str) -> torch.Tensor:
    """One image as uint8 RGB (3, R, R): the shorter side resized to R (antialiased), then the centre cropped.

    ``resolution=None`` keeps the image's own size. Unreadable files raise :class:`DataError` naming them.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img = img.convert("RGB")
            if resolution is not None and img.size != (resolution, resolution):
                img = TF.center_crop(TF.resize(img, resolution, interpolation=TF.InterpolationMode.BICUBIC,
                                               antialias=True), resolution)
            return TF.pil_to_tensor(img)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {name}: {exc}; remove it or pass --skip-bad-images") from None


def _archive_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every image in a .zip or .tar(.gz), in sorted name order."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for name in sorted(n for n in zf.namelist() if _is_image_name(n)):
                    yield name, zf.read(name)
        else:
            with tarfile.open(path) as tar:
                # Read in archive order, then hand out in name order: a compressed tar seeks backwards by
                # decompressing again from the start, so reading 60,000 CIFAR JPEGs by name took hours, not seconds.
                members = [m for m in tar.getmembers() if m.isfile() and _is_image_name(m.name)]
                data = {m.name: tar.extractfile(m).read() for m in sorted(members, key=lambda m: m.offset_data)}
                for name in sorted(data):
                    yield name, data[name]
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot read archive {path}: {exc}") from None


def _decode_all(items, resolution: int | None, skip_bad: bool) -> list[torch.Tensor]:
    images = []
    for name, data in items:
        try:
            images.append(decode_image(data, resolution, name))
        except DataError as exc:
            if not skip_bad:
                raise
            warnings.warn(f"skipping {exc}", stacklevel=2)
    return images


def _stack(images: list[torch.Tensor], source: Path) -> torch.Tensor:
    if not images:
        raise DataError(f"no readable images in {source}; {DATA_HELP}")
    sizes = {tuple(i.shape) for i in images}
    if len(sizes) > 1:
        raise DataError(f"images in {source} have different sizes {sorted(sizes)[:3]}; pass a resolution to resize them")
    return torch.stack(images)


class ImageFolderDataset(Dataset):
    """Lazily decoded images of a folder, as uint8 (3, R, R); a bad file gives None with ``skip_bad``."""

    def __init__(self, folder: str | Path, resolution: int, skip_bad: bool = False):
        self.folder, self.resolution, self.skip_bad = Path(folder), resolution, skip_bad
        self.files = list_images(folder)
        if not self.files:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}; {DATA_HELP}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor | None:
        try:
            return decode_image(self.files[index], self.resolution, str(self.files[index]))
        except DataError as exc:
            if not self.skip_bad:
                raise
            warnings.warn(f"skipping {exc}", stacklevel=2)
            return None


def _collate_uint8(batch: list[torch.Tensor | None]) -> torch.Tensor:
    kept = [b for b in batch if b is not None]
    return torch.stack(kept) if kept else torch.empty(0, dtype=torch.uint8)


def read_images(path: str | Path, resolution: int | None = None, skip_bad: bool = False,
                num_workers: int = 0) -> torch.Tensor:
    """All images of a folder (recursive) or a .zip/.tar(.gz) archive as one uint8 (N, 3, R, R) tensor."""
    path = Path(path)
    if is_archive(path):
        return _stack(_decode_all(_archive_members(path), resolution, skip_bad), path)
    if not path.is_dir():
        raise DataError(f"{path} is neither a folder nor a .zip/.tar(.gz) archive of images; {DATA_HELP}")
    if resolution is None:
        files = list_images(path)
        return _stack(_decode_all(((str(f), f) for f in files), None, skip_bad), path)
    dataset = ImageFolderDataset(path, resolution, skip_bad)
    loader = DataLoader(dataset, batch_size=256, num_workers=num_workers, collate_fn=_collate_uint8)
    return _stack([img for batch in loader for img in batch], path)


# ------------------------------------------------------------------------------------------------ training sources
@dataclass
class TrainingData:
    """Training images: all in ``images`` (uint8, N x C x R x R) or, for large folders, lazily in ``dataset``."""

    description: str
    images: torch.Tensor | None = None
    dataset: ImageFolderDataset | None = None

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.dataset)


def open_training_data(data_dir: str | None, resolution: int, skip_bad: bool = False, num_workers: int = 0,
                       default_root: str | Path = "data", url: str = CIFAR10_URL, md5: str | None = CIFAR10_MD5
                       ) -> TrainingData:
    """Resolve ``--data-dir`` (see :data:`DATA_HELP`); without it use CIFAR-10 in ``default_root``, downloading it."""
    if data_dir is None:
        root = Path(default_root)
        source = find_cifar10(root) if root.exists() else None
        if source is None:
            source = download_cifar10(root, url, md5)
        data_dir = str(source)
    path = Path(data_dir)
    if not path.exists():
        raise DataError(f"--data-dir {path} does not exist; {DATA_HELP}")
    cifar = find_cifar10(path)
    if cifar is not None:
        images = read_cifar10(cifar, "train")
        if resolution != 32:
            images = torch.stack([TF.resize(TF.center_crop(img, 32), resolution, antialias=True) for img in images])
        return TrainingData(f"CIFAR-10 train ({cifar}, {len(images)} images)", images=images)
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {path}; {DATA_HELP}")
        if len(files) * 3 * resolution * resolution > IN_MEMORY_LIMIT:
            dataset = ImageFolderDataset(path, resolution, skip_bad)
            return TrainingData(f"image folder {path} ({len(dataset)} images, streamed)", dataset=dataset)
    images = read_images(path, resolution, skip_bad, num_workers)
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


class _StepSampler(torch.utils.data.Sampler):
    def __init__(self, batches: StepBatches, start: int, stop: int):
        self.batches, self.start, self.stop = batches, start, stop

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.batches.indices(step).tolist()

    def __len__(self) -> int:
        return self.stop - self.start


def iterate_batches(data: TrainingData, batches: StepBatches, start: int, stop: int, device: torch.device,
                    num_workers: int = 0) -> Iterator[torch.Tensor]:
    """uint8 batches (local to this rank) for steps ``start .. stop-1``, on ``device``."""
    if data.images is not None:
        images = data.images.to(device)  # CIFAR-sized data lives on the device: no loader, no copies per step
        for step in range(start, stop):
            yield images[batches.indices(step).to(device)]
        return
    loader = DataLoader(data.dataset, batch_sampler=_StepSampler(batches, start, stop), num_workers=num_workers,
                        collate_fn=_collate_uint8, pin_memory=device.type == "cuda",
                        persistent_workers=num_workers > 0)
    for batch in loader:
        yield batch.to(device, non_blocking=True)


def to_model_range(images: torch.Tensor, hflip: bool, generator: torch.Generator | None) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], each image flipped left-right with probability 1/2 if ``hflip``."""
    x = images.float() / 127.5 - 1.0
    if hflip:
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x
