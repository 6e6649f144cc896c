"""Reading image data sets (``ddpm.datasets``) from every source, and the training data opened from them
(``ddpm.data``): a few images picked for a figure are the very pixels training reads from the same source."""

from __future__ import annotations

import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from ddpm.data import open_training_data
from ddpm.datasets import download_cifar10, load_images, read_images, spread_indices
from ddpm.errors import DataError


def test_spread_indices_cover_the_source_evenly():
    assert spread_indices(60, 6) == [5, 15, 25, 35, 45, 55]
    assert spread_indices(3, 5) == [0, 1, 2]
    assert spread_indices(4, None) == [0, 1, 2, 3]


def test_load_images_from_every_source(tmp_path, cifar_dir):
    split_folder = tmp_path / "split"
    for split, count in (("train", 6), ("test", 3)):
        write_image_folder(split_folder / split, count=count, seed=len(split))
    images, description = load_images(split_folder, None, 16, split="test")
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.uint8 and "below test/" in description
    assert load_images(split_folder, 4, 16)[0].shape == (4, 3, 16, 16)  # no split: all 9 files, 4 of them

    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(split_folder, arcname="data")
    from_tar, _ = load_images(archive, None, 16, split="test")
    assert torch.equal(from_tar, images)  # same files, same sorted order, same decoding
    zipped = tmp_path / "images.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in sorted(split_folder.rglob("*.png")) + sorted(split_folder.rglob("*.jpg")):
            zf.write(f, f.relative_to(split_folder))
    assert load_images(zipped, 2, 16, split="train")[0].shape == (2, 3, 16, 16)

    test, description = load_images(cifar_dir, 5, 32, split="test")
    assert test.shape == (5, 3, 32, 32) and "CIFAR-10 test" in description
    assert load_images(cifar_dir, None, 16)[0].shape == (40, 3, 16, 16)  # train split by default, resized


@pytest.mark.parametrize("source", ["cifar", "folder", "archive"])
@pytest.mark.parametrize("resolution", [16, 32])
def test_load_images_reads_the_pixels_training_reads(source, resolution, tmp_path, cifar_dir, image_folder):
    """The images a figure shows are those training sees: the same decoding, resize and crop, whichever the source
    (the folder mixes 32x32 and 48x36 images, so both resizing and centre cropping are exercised)."""
    path = {"cifar": cifar_dir, "folder": image_folder, "archive": tmp_path / "images.tar.gz"}[source]
    if source == "archive":
        with tarfile.open(path, "w:gz") as tar:
            tar.add(image_folder, arcname="images")
    trained = open_training_data(str(path), resolution).images
    shown, _ = load_images(path, None, resolution)
    assert shown.shape == trained.shape and torch.equal(shown, trained)
    few, _ = load_images(path, 3, resolution)
    assert torch.equal(few, trained[spread_indices(len(trained), 3)])


def test_load_images_without_a_source_reads_cifar10_in_the_default_root(cifar_dir):
    images, description = load_images(None, 2, 32, default_root=cifar_dir)
    assert images.shape == (2, 3, 32, 32) and "CIFAR-10 train" in description
    assert torch.equal(images, open_training_data(None, 32, default_root=cifar_dir).images[[10, 30]])


def test_download_from_local_server(tmp_path, cifar_archive):
    """The real download path (torchvision's utilities with an md5 check) against an HTTP server on 127.0.0.1."""
    import functools
    import hashlib
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(cifar_archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{cifar_archive.name}"
        md5 = hashlib.md5(cifar_archive.read_bytes()).hexdigest()
        data = open_training_data(None, 32, default_root=tmp_path / "data", url=url, md5=md5)
        assert len(data) == 40 and (tmp_path / "data" / "cifar-10-python.tar.gz").is_file()
        with pytest.raises(DataError, match="checksum|could not download"):
            download_cifar10(tmp_path / "other", url=url, md5="0" * 32)
        assert not (tmp_path / "other" / "cifar-10-python.tar.gz").exists()
        with pytest.raises(DataError, match="--data-dir"):
            download_cifar10(tmp_path / "missing", url=url + ".nope", md5=md5)
    finally:
        server.shutdown()


def test_archive_images_come_in_name_order_whatever_the_archive_order(tmp_path):
    """Members stored in reverse name order (as a tool may store them) are read in one forward pass of the
    compressed stream and handed out sorted by name, the order a folder of the same files gives."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i:02d}.png")
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in reversed(range(5)):
            tar.add(folder / f"{i:02d}.png", arcname=f"images/{i:02d}.png")
    assert [m.name for m in tarfile.open(archive).getmembers()][0] == "images/04.png"
    from_archive, from_folder = read_images(archive), read_images(folder)
    assert torch.equal(from_archive, from_folder)
    assert [int(x[0, 0, 0]) for x in from_archive] == [0, 40, 80, 120, 160]
