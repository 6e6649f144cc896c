"""The GPU check's ``fid`` part: the samples scored against the training images on this device, and a check.

    python benchmarks/gpu_programs/score_samples.py SAMPLES.npz REFERENCE CHECK.npz DEVICE

FID, KID and precision/recall of SAMPLES.npz (uint8 images, ``arr_0``) against REFERENCE (anything ``ddpm fid`` takes)
are printed as one JSON line with the two image counts. CHECK.npz gets the first 16 samples with their Inception
features on DEVICE, for ``verify_inception.py`` to recompute on a CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from ddpm.evaluate import score
from ddpm.metrics import inception_features, load_source

CHECK_IMAGES = 16


def score_samples(samples: Path, reference: str, check: Path, device: str) -> dict:
    """The ``fid`` record of ``summary.json``: ``score``'s metrics, ``num_samples`` and ``reference_images``."""
    fake = load_source(str(samples), device=device, progress=False)
    real = load_source(reference, device=device, progress=False)
    result = score(fake.features, real, device=device)
    images = np.load(samples)["arr_0"][:CHECK_IMAGES]
    features = inception_features(torch.from_numpy(images).permute(0, 3, 1, 2), device=device, progress=False)
    np.savez(check, images=images, features=features.astype(np.float32), device=device)
    return {**result, "num_samples": fake.num_images, "reference_images": real.num_images}


if __name__ == "__main__":
    samples, reference, check, device = sys.argv[1:]
    print(json.dumps(score_samples(Path(samples), reference, Path(check), device)))
