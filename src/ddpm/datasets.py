"""Reading image data sets into uint8 tensors (N, 3, R, R): CIFAR-10 (found in a folder, or downloaded into ./data),
folders of images and .zip/.tar(.gz) archives of them; all of a source, or a few spread evenly over it.

This is the one place that finds, decodes and resizes images, so that training (``ddpm.data``), the FID references
(``ddpm.metrics``) and the figures see the same pixels of the same source.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Iterator

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
CIFAR10_RESOLUTION = 32
CIFAR10_SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
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
        return data.reshape(-1, 3, CIFAR10_RESOLUTION, CIFAR10_RESOLUTION)
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


def resize_cifar10(images: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """CIFAR-10 images (uint8, N x 3 x 32 x 32) at ``resolution``: resized bilinearly with antialiasing.

    They are square, so nothing is cropped; at 32 (or None) they are returned as they are.
    """
    if resolution is None or resolution == CIFAR10_RESOLUTION:
        return images
    return torch.stack([TF.resize(img, resolution, antialias=True) for img in images])


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


def default_cifar10(root: str | Path = "data", url: str = CIFAR10_URL, md5: str | None = CIFAR10_MD5) -> Path:
    """The CIFAR-10 pickles in ``root`` (see :func:`find_cifar10`), downloaded there when absent: the data set
    of every command given no ``--data-dir``."""
    return find_cifar10(Path(root)) or download_cifar10(root, url, md5)


def source_path(data_dir: str | Path | None, default_root: str | Path = "data", url: str = CIFAR10_URL,
                md5: str | None = CIFAR10_MD5) -> Path:
    """The existing path ``--data-dir`` names (see :data:`DATA_HELP`); without it, :func:`default_cifar10`."""
    if data_dir is None:
        return default_cifar10(default_root, url, md5)
    path = Path(data_dir)
    if not path.exists():
        raise DataError(f"--data-dir {path} does not exist; {DATA_HELP}")
    return path


# ---------------------------------------------------------------------------------------- image folders and archives
def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_image_name(name: str) -> bool:
    base = os.path.basename(name)
    return name.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".")


def _no_images(path: Path) -> DataError:
    return DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {path}; {DATA_HELP}")


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


def _archive_members(path: Path, choose: Callable[[list[str]], list[str]]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the images of a .zip or .tar(.gz) that ``choose`` picks from their sorted names, in the
    order it gives; only those members are read."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for name in choose(sorted(n for n in zf.namelist() if _is_image_name(n))):
                    yield name, zf.read(name)
        else:
            with tarfile.open(path) as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile() and _is_image_name(m.name)}
                names = choose(sorted(members))
                # Read in archive order, then hand out in name order: a compressed tar seeks backwards by
                # decompressing again from the start, so reading 60,000 CIFAR JPEGs by name took hours, not seconds.
                data = {m.name: tar.extractfile(m).read()
                        for m in sorted((members[n] for n in names), key=lambda m: m.offset_data)}
                for name in names:
                    yield name, data[name]
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot read archive {path}: {exc}") from None


def _image_files(path: Path, choose: Callable[[list[str]], list[str]] = list
                 ) -> Iterator[tuple[str, str, bytes | Path]]:
    """(name below ``path``, name for messages, bytes or file) of the images of a folder or an archive that
    ``choose`` picks from their sorted names (default: all of them)."""
    if is_archive(path):
        for name, data in _archive_members(path, choose):
            yield name, f"{path}:{name}", data
    elif path.is_dir():
        files = {str(f.relative_to(path)): f for f in list_images(path)}
        for name in choose(sorted(files)):
            yield name, str(files[name]), files[name]
    else:
        raise DataError(f"{path} is neither a folder nor a .zip/.tar(.gz) archive of images; {DATA_HELP}")


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
            raise _no_images(self.folder)

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

    @staticmethod
    def collate(batch: list[torch.Tensor | None]) -> torch.Tensor:
        """The ``collate_fn`` of a DataLoader over this data set: the batch without the skipped (None) images."""
        kept = [b for b in batch if b is not None]
        return torch.stack(kept) if kept else torch.empty(0, dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------------- whole sources
def read_images(path: str | Path, resolution: int | None = None, skip_bad: bool = False,
                num_workers: int = 0) -> torch.Tensor:
    """All images of a folder (recursive) or a .zip/.tar(.gz) archive as one uint8 (N, 3, R, R) tensor."""
    path = Path(path)
    if resolution is not None and path.is_dir():
        dataset = ImageFolderDataset(path, resolution, skip_bad)
        loader = DataLoader(dataset, batch_size=256, num_workers=num_workers, collate_fn=ImageFolderDataset.collate)
        return _stack([img for batch in loader for img in batch], path)
    return _stack(_decode_all(((shown, data) for _, shown, data in _image_files(path)), resolution, skip_bad), path)


# -------------------------------------------------------------------------------------- a few images of a source
def spread_indices(total: int, count: int | None) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (the middle of each of ``count`` equal slices), so a
    few images of a class-sorted data set come from different classes; all of them when ``count`` is None."""
    if count is None or count >= total:
        return list(range(total))
    return [int((i + 0.5) * total / count) for i in range(count)]


def _in_split(name: str, split: str) -> bool:
    return split in Path(name).parts[:-1]


def _keep_split(names: list[str], split: str | None) -> list[str]:
    """Names below a folder called ``split`` when there are any (e.g. ``test/`` of an archive), else all."""
    if split is None:
        return names
    inside = [n for n in names if _in_split(n, split)]
    return inside or names


def load_images(data_dir: str | Path | None, num_images: int | None, resolution: int | None, split: str | None = None,
                default_root: str | Path = "data") -> tuple[torch.Tensor, str]:
    """Up to ``num_images`` images of a source, spread evenly over it, as uint8 (N, 3, R, R), and a description.

    Sources are those ``ddpm train --data-dir`` reads, decoded and resized as training does: CIFAR-10 pickles
    (``split`` picks "train" or "test", default "train"), a folder or a .zip/.tar(.gz) of images (with ``split``,
    only the files below a folder of that name when there are any, as in ``test/`` of the CIFAR-10 JPEG archive)
    and, without ``data_dir``, CIFAR-10 in ``default_root`` (downloaded if absent). Files are listed in sorted
    order and only the chosen ones are decoded, so that a handful of images from a 60,000-file archive take
    seconds, not minutes. ``resolution=None`` keeps the images as they are (all of one size, else DataError).
    """
    path = source_path(data_dir, default_root)
    cifar = find_cifar10(path)
    if cifar is not None:
        split = split or "train"
        images = read_cifar10(cifar, split)
        images = resize_cifar10(images[spread_indices(len(images), num_images)], resolution)
        return images, f"CIFAR-10 {split} ({cifar})"

    def choose(names: list[str]) -> list[str]:
        names = _keep_split(names, split)
        return [names[i] for i in spread_indices(len(names), num_images)]

    files = list(_image_files(path, choose))
    if not files:
        raise _no_images(path)
    images = _stack([decode_image(data, resolution, shown) for _, shown, data in files], path)
    where = f" (below {split}/)" if split is not None and all(_in_split(n, split) for n, _, _ in files) else ""
    return images, f"{len(images)} images of {path}{where}"
