"""Reading image data sets into uint8 tensors (N, C, R, R): CIFAR-10 (found in a folder, or downloaded into ./data),
folders of images and .zip/.tar(.gz) archives of them; all of a source, or a few spread evenly over it; RGB (C = 3)
or grayscale (C = 1); with class labels where the source has them.

Labels: CIFAR-10's pickles carry them (names from ``batches.meta``); in a folder or an archive, an image's class is
the name of the folder that holds it, so a layout with one sub-folder per class (``cat/001.jpg``, or
``train/cat/001.jpg`` and ``test/cat/002.jpg``) is labelled, classes numbered in sorted name order. A source with
images directly at its top has no classes (:func:`classes_of`).

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
from pathlib import Path, PurePosixPath
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
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
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


def _parse_cifar_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file: a pickled dict with b"data", an N x 3072 uint8 array in channel-major order, and
    b"labels", N class indices."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        return data.reshape(-1, 3, CIFAR10_RESOLUTION, CIFAR10_RESOLUTION), labels
    except Exception as exc:  # any malformed content: name the file
        raise DataError(f"{name} is not a CIFAR-10 python batch file ({exc})") from None


def _parse_cifar_meta(raw: bytes | None) -> tuple[str, ...]:
    """The class names of ``batches.meta`` (b"label_names"); CIFAR-10's own when the file is absent or unreadable."""
    if raw is None:
        return CIFAR10_CLASSES
    try:
        meta = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"])
    except Exception:
        return CIFAR10_CLASSES


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
    return read_cifar10_labelled(path, split)[0]


def read_cifar10_labelled(path: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """:func:`read_cifar10` with the labels, int64 (N,), and the class names (``batches.meta``)."""
    source = find_cifar10(Path(path))
    if source is None:
        raise DataError(f"no CIFAR-10 python batches at {path}; {DATA_HELP}")
    names = CIFAR10_SPLITS[split]
    if source.is_dir():
        missing = [n for n in names if not (source / n).is_file()]
        if missing:
            raise DataError(f"CIFAR-10 folder {source} lacks {', '.join(missing)}")
        arrays = [_parse_cifar_batch((source / n).read_bytes(), str(source / n)) for n in names]
        meta = (source / "batches.meta").read_bytes() if (source / "batches.meta").is_file() else None
    else:
        with tarfile.open(source) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise DataError(f"CIFAR-10 archive {source} lacks {', '.join(missing)}")
            arrays = [_parse_cifar_batch(tar.extractfile(members[n]).read(), f"{source}:{n}") for n in names]
            meta = tar.extractfile(members["batches.meta"]).read() if "batches.meta" in members else None
    images = torch.from_numpy(np.concatenate([data for data, _ in arrays]))
    return images, torch.from_numpy(np.concatenate([labels for _, labels in arrays])), _parse_cifar_meta(meta)


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 RGB images (N, 3, H, W) with ``channels`` channels: as they are for 3, grayscale for 1 with PIL's rule
    (ITU-R 601-2 luma, L = R 299/1000 + G 587/1000 + B 114/1000 in PIL's fixed point), so that CIFAR-10's pickles
    and its JPEGs turn grey alike."""
    check_channels(channels)
    if channels == 3:
        return images
    r, g, b = images.to(torch.int32).unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)[:, None]


def check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise DataError(f"images have 1 (grayscale) or 3 (RGB) channels; --in-channels {channels} is neither")


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


def decode_image(data: bytes | Path, resolution: int | None, name: str, channels: int = 3) -> torch.Tensor:
    """One image as uint8 RGB (3, R, R), or grayscale (1, R, R) for ``channels=1``: the shorter side resized to R
    (antialiased), then the centre cropped.

    ``resolution=None`` keeps the image's own size. Unreadable files raise :class:`DataError` naming them.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            if resolution is not None and img.size != (resolution, resolution):
                img = TF.center_crop(TF.resize(img, resolution, interpolation=TF.InterpolationMode.BICUBIC,
                                               antialias=True), resolution)
            return TF.pil_to_tensor(img)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {name}: {exc}; remove it or pass --skip-bad-images") from None


def class_of(name: str) -> str:
    """The class of an image named ``name`` below its source: the folder that holds it ("" at the top)."""
    return PurePosixPath(name.replace(os.sep, "/")).parent.name


def classes_of(names: list[str], source: Path | str) -> tuple[tuple[str, ...], list[int]]:
    """The class names (sorted) and each image's label of a folder or archive whose images sit in one sub-folder
    per class (see the module docstring); a DataError when images lie at its top or there are fewer than 2."""
    folders = [class_of(n) for n in names]
    if not names or "" in folders:
        example = next((n for n, f in zip(names, folders) if not f), None)
        where = f" (e.g. {example})" if example else ""
        raise DataError(f"--class-cond needs class labels: {source} has images outside class sub-folders{where}; "
                        "put each class's images in a sub-folder of its own, named after the class")
    classes = tuple(sorted(set(folders)))
    if len(classes) < 2:
        raise DataError(f"--class-cond needs at least 2 classes; {source} has one class sub-folder, {classes[0]}")
    index = {c: i for i, c in enumerate(classes)}
    return classes, [index[f] for f in folders]


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


def _decode_all(items, resolution: int | None, skip_bad: bool, channels: int = 3
                ) -> tuple[list[torch.Tensor], list[str]]:
    """The images of (name, shown name, data) items and the names of those that decoded."""
    images, kept = [], []
    for name, shown, data in items:
        try:
            images.append(decode_image(data, resolution, shown, channels))
            kept.append(name)
        except DataError as exc:
            if not skip_bad:
                raise
            warnings.warn(f"skipping {exc}", stacklevel=2)
    return images, kept


def _stack(images: list[torch.Tensor], source: Path) -> torch.Tensor:
    if not images:
        raise DataError(f"no readable images in {source}; {DATA_HELP}")
    sizes = {tuple(i.shape) for i in images}
    if len(sizes) > 1:
        raise DataError(f"images in {source} have different sizes {sorted(sizes)[:3]}; pass a resolution to resize them")
    return torch.stack(images)


class ImageFolderDataset(Dataset):
    """Lazily decoded images of a folder, as uint8 (C, R, R); a bad file gives None with ``skip_bad``.

    With ``labelled`` each item is (image, label) and :attr:`class_names` the classes (:func:`classes_of`).
    """

    def __init__(self, folder: str | Path, resolution: int, skip_bad: bool = False, channels: int = 3,
                 labelled: bool = False):
        self.folder, self.resolution, self.skip_bad, self.channels = Path(folder), resolution, skip_bad, channels
        self.files = list_images(folder)
        if not self.files:
            raise _no_images(self.folder)
        self.class_names: tuple[str, ...] = ()
        self.labels: list[int] | None = None
        if labelled:
            names = [str(f.relative_to(self.folder)) for f in self.files]
            self.class_names, self.labels = classes_of(names, self.folder)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            image = decode_image(self.files[index], self.resolution, str(self.files[index]), self.channels)
        except DataError as exc:
            if not self.skip_bad:
                raise
            warnings.warn(f"skipping {exc}", stacklevel=2)
            return None
        return image if self.labels is None else (image, self.labels[index])

    @staticmethod
    def collate(batch: list):
        """The ``collate_fn`` of a DataLoader over this data set: the batch without the skipped (None) images; for
        a labelled data set, (images, int64 labels)."""
        kept = [b for b in batch if b is not None]
        if kept and isinstance(kept[0], tuple):
            return torch.stack([image for image, _ in kept]), torch.tensor([label for _, label in kept])
        return torch.stack(kept) if kept else torch.empty(0, dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------------- whole sources
def read_images(path: str | Path, resolution: int | None = None, skip_bad: bool = False,
                num_workers: int = 0, channels: int = 3) -> torch.Tensor:
    """All images of a folder (recursive) or a .zip/.tar(.gz) archive as one uint8 (N, C, R, R) tensor."""
    path = Path(path)
    if resolution is not None and path.is_dir():
        dataset = ImageFolderDataset(path, resolution, skip_bad, channels)
        loader = DataLoader(dataset, batch_size=256, num_workers=num_workers, collate_fn=ImageFolderDataset.collate)
        return _stack([img for batch in loader for img in batch], path)
    return _stack(_decode_all(_image_files(path), resolution, skip_bad, channels)[0], path)


def read_labelled_images(path: str | Path, resolution: int | None = None, skip_bad: bool = False,
                         num_workers: int = 0, channels: int = 3
                         ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """:func:`read_images` of a source with one sub-folder per class, with the int64 labels (N,) of the images read
    and the class names (:func:`classes_of`; a DataError for a source without classes)."""
    path = Path(path)
    if resolution is not None and path.is_dir():
        dataset = ImageFolderDataset(path, resolution, skip_bad, channels, labelled=True)
        loader = DataLoader(dataset, batch_size=256, num_workers=num_workers, collate_fn=ImageFolderDataset.collate)
        batches = [batch for batch in loader if isinstance(batch, tuple)]  # an all-skipped batch is empty
        images = _stack([img for batch, _ in batches for img in batch], path)
        return images, torch.cat([labels for _, labels in batches]), dataset.class_names
    items = list(_image_files(path, list))
    class_names, _ = classes_of([name for name, _, _ in items], path)  # refuses an unlabelled source before decoding
    images, kept = _decode_all(items, resolution, skip_bad, channels)
    index = {c: i for i, c in enumerate(class_names)}
    return _stack(images, path), torch.tensor([index[class_of(n)] for n in kept], dtype=torch.long), class_names


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


def load_labelled_images(data_dir: str | Path | None, per_class: int | None, resolution: int,
                         split: str | None = None, default_root: str | Path = "data"
                         ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], str]:
    """Up to ``per_class`` images of every class of a labelled source, spread evenly over each class, as uint8
    (N, 3, R, R), their int64 labels, the class names and a description.

    The sources and ``split`` are those of :func:`load_images`: CIFAR-10 pickles, or a folder or archive with one
    sub-folder per class (e.g. the CIFAR-10 JPEG copy, whose ``train/`` and ``test/`` ``split`` picks).
    """
    path = source_path(data_dir, default_root)
    cifar = find_cifar10(path)
    if cifar is not None:
        split = split or "train"
        images, labels, class_names = read_cifar10_labelled(cifar, split)
        chosen = [i for k in range(len(class_names)) for i in _spread_of((labels == k).nonzero()[:, 0].tolist(),
                                                                        per_class)]
        return (resize_cifar10(images[chosen], resolution), labels[chosen], class_names,
                f"CIFAR-10 {split} ({cifar})")

    picked: dict[str, list[str]] = {}

    def choose(names: list[str]) -> list[str]:
        names = _keep_split(names, split)
        classes, labels = classes_of(names, path)
        picked["classes"] = list(classes)
        return [n for k in range(len(classes)) for n in _spread_of([n for n, c in zip(names, labels) if c == k],
                                                                   per_class)]

    files = list(_image_files(path, choose))
    class_names = tuple(picked["classes"])
    index = {c: i for i, c in enumerate(class_names)}
    images = torch.stack([decode_image(data, resolution, shown) for _, shown, data in files])
    labels = torch.tensor([index[class_of(name)] for name, _, _ in files], dtype=torch.long)
    where = f" (below {split}/)" if split is not None and all(_in_split(n, split) for n, _, _ in files) else ""
    return images, labels, class_names, f"{len(images)} images of {path}{where}"


def _spread_of(items: list, count: int | None) -> list:
    return [items[i] for i in spread_indices(len(items), count)]
