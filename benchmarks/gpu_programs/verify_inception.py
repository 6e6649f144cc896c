"""Do the Inception features a GPU computed agree with this machine's? The second half of the GPU check's ``fid`` part.

    python benchmarks/gpu_programs/verify_inception.py OUT/inception_check.npz    # or gpu_check.py --verify-inception

The .npz (from ``score_samples.py`` or ``score_checkpoints.py score``) holds ``images`` (uint8 N x H x W x 3), their
``features`` there and the ``device`` they came from. The features are recomputed here (normally on a CPU, with the
exact network) and the largest difference is printed relative to the largest feature; the exit code is 1 above 1e-3.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ddpm.metrics import inception_features

TOLERANCE = 1e-3  # of the largest feature; float16 Inception weights alone move them by ~3e-3 (docs/benchmarks.md)


def relative_error(path: str) -> tuple[float, int, str]:
    """max |their features - ours| / max |their features|, the number of images and where theirs were computed."""
    with np.load(path) as check:
        images, theirs, where = check["images"], check["features"].astype(np.float64), str(check["device"])
    ours = inception_features(torch.from_numpy(images).permute(0, 3, 1, 2), device="cpu", progress=False)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max()), len(images), where


def main(argv: list[str]) -> int:
    [path] = argv
    error, count, where = relative_error(path)
    print(f"{count} images: max |features on {where} - features here| / max |features| = {error:.2e}")
    return 0 if error < TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
