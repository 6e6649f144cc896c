"""Reading image data sets (``ddpm.datasets``) and the training data opened from them (``ddpm.data``)."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data import open_training_data
from ddpm.datasets import download_cifar10, read_images
from ddpm.errors import DataError


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
