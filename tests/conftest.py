"""Shared fixtures: tiny data sets in the real formats (CIFAR-10 pickles, image folders, archives)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main

CIFAR_PER_BATCH = 8


def write_cifar10(root: Path, per_batch: int = CIFAR_PER_BATCH, seed: int = 0) -> Path:
    """A miniature ``cifar-10-batches-py`` in the real format: pickled dicts, b"data" N x 3072 uint8 channel-major."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, per_batch).tolist(),
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                                      b"horse", b"ship", b"truck"], b"num_cases_per_batch": per_batch}, f, protocol=2)
    return folder


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """A folder holding ``cifar-10-batches-py/`` (40 train and 8 test images)."""
    write_cifar10(tmp_path / "cifar")
    return tmp_path / "cifar"


@pytest.fixture
def cifar_archive(tmp_path: Path) -> Path:
    """``cifar-10-python.tar.gz`` packed like the official download."""
    folder = write_cifar10(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive


def write_image_folder(root: Path, count: int = 12, seed: int = 0) -> Path:
    """Images of mixed sizes, formats and nesting, as a user's folder would have."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        sub = root / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        h, w = (36, 48) if i % 3 else (32, 32)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sub / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def cli(capsys):
    """Run the real CLI in-process: returns (exit code, stdout, stderr)."""

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


# Flags of a few-second CPU training run of the tiny preset.
TINY = ["--preset", "tiny", "--batch-size", "4", "--total-steps", "4", "--logging-steps", "2", "--checkpoint", "2",
        "--sample-every", "0", "--num-workers", "0", "--device", "cpu"]
