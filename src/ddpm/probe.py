"""A linear probe on Inception pool3 features: how often a sample of a class-conditional model is recognised as the
class it was asked for.

The probe is multinomial logistic regression on the same 2048-d pool3 features FID uses
(:func:`ddpm.metrics.inception_features`), fitted on a few hundred labelled training images per class and scored on
held-out test images: its accuracy on real test images is the ceiling that the accuracy on samples is read against
(a sample "recognised" by a probe that is right on 80% of real images is good, not 80% good). Fitting is L-BFGS on
centred and scaled features with an L2 penalty, in float64, a few seconds; the features are the slow part (Inception
runs a few images per second on a small CPU), so the features and the fitted probe are cached under :func:`ddpm.metrics.cache_dir` and computed
once per source and image count.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ddpm.datasets import load_labelled_images, source_path, to_channels
from ddpm.errors import DataError
from ddpm.files import atomic_write
from ddpm.metrics import EXTRACTOR, cache_dir, inception_features

L2 = 1e-2  # weight of sum(W^2) / K against the mean cross-entropy, for features scaled to unit standard deviation


@dataclass(frozen=True)
class LinearProbe:
    """argmax of ((f - mean) / scale) W^T + b over the ``class_names``, with its accuracy on ``test_images`` real
    held-out images (``test_accuracy``), fitted on ``train_images`` images of ``source``."""

    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    class_names: tuple[str, ...]
    test_accuracy: float
    train_images: int
    test_images: int
    source: str

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The probe's class (an index into ``class_names``) of each row of pool3 ``features`` (N, 2048)."""
        return np.argmax(((features - self.mean) / self.scale) @ self.weight.T + self.bias, axis=1)

    def accuracy(self, features: np.ndarray, labels: Sequence[int], class_names: Sequence[str]) -> float:
        """The fraction of ``features`` recognised as their label, a class index into ``class_names`` (the
        model's classes, matched to the probe's by name)."""
        index = {name: i for i, name in enumerate(self.class_names)}
        missing = [name for name in class_names if name not in index]
        if missing:
            raise DataError(f"the probe knows the classes {', '.join(self.class_names)}, not "
                            f"{', '.join(missing)}; fit it on data with the model's classes")
        wanted = np.array([index[class_names[k]] for k in labels])
        return float((self.predict(features) == wanted).mean())


def fit(features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float = L2,
        max_iter: int = 500) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(weight (K, d), bias (K,), mean, scale) of L2-penalised multinomial logistic regression on centred ``features``
    divided by their overall standard deviation: the minimiser of mean cross-entropy + ``l2`` * sum(W^2) / K, by
    L-BFGS in float64."""
    # One scale for every feature (their overall standard deviation), not one per feature: with a few images per
    # class a feature that barely varies among them would otherwise be blown up and decide the class of a sample.
    mean = features.mean(0)
    scale = np.full_like(mean, (features - mean).std() + 1e-12)
    x = torch.as_tensor((features - mean) / scale, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y) + l2 * weight.square().sum() / num_classes
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach().numpy(), bias.detach().numpy(), mean, scale


def _cache_file(source: Path, train_per_class: int, test_per_class: int, channels: int, resolution: int) -> Path:
    key = json.dumps([str(source.resolve()), train_per_class, test_per_class, channels, resolution, EXTRACTOR])
    return cache_dir() / "probe" / f"probe-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _features(data_dir: Path, per_class: int, split: str, channels: int, resolution: int, device: str,
              progress: bool):
    images, labels, class_names, description = load_labelled_images(data_dir, per_class, resolution, split)
    if not description.startswith("CIFAR-10") and f"below {split}/" not in description:
        raise DataError(f"the probe needs labelled train/ and test/ images: {data_dir} has no {split}/ folder (give "
                        "CIFAR-10's pickles or a folder or archive with train/<class>/ and test/<class>/)")
    gray = to_channels(images, channels).expand(-1, 3, -1, -1)  # a grayscale model is probed in grey
    features = inception_features(gray.contiguous(), device=device, progress=progress,
                                  desc=f"probe: Inception features of {description}")
    return features, labels.numpy(), class_names


def load_probe(data_dir: str | Path, train_per_class: int = 200, test_per_class: int = 100, channels: int = 3,
               resolution: int = 32, device: str = "auto", progress: bool = True) -> LinearProbe:
    """The probe of a labelled source (CIFAR-10 pickles, or a folder or archive with ``train/`` and ``test/``
    sub-folders of class folders, as the CIFAR-10 JPEG copy): fitted on ``train_per_class`` train images of each
    class, scored on ``test_per_class`` test images of each, spread evenly over the class; cached (see the module
    docstring). The images are read at the model's ``resolution`` (as its samples are scored) and, for a grayscale
    model (``channels=1``), turned grey first."""
    source = source_path(data_dir)
    cached = _cache_file(source, train_per_class, test_per_class, channels, resolution)
    if cached.is_file():
        with np.load(cached) as npz:
            names = tuple(json.loads(str(npz["class_names"])))
            train_x, train_y, test_x, test_y = (npz[k] for k in ("train_x", "train_y", "test_x", "test_y"))
    else:
        train_x, train_y, names = _features(source, train_per_class, "train", channels, resolution, device, progress)
        test_x, test_y, test_names = _features(source, test_per_class, "test", channels, resolution, device, progress)
        if test_names != names:
            raise DataError(f"{source}: the test images have the classes {', '.join(test_names)}, the train images "
                            f"{', '.join(names)}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, lambda f: np.savez(f, class_names=json.dumps(names), train_x=train_x.astype(np.float32),
                                                train_y=train_y, test_x=test_x.astype(np.float32), test_y=test_y))
    train_x, test_x = train_x.astype(np.float64), test_x.astype(np.float64)
    weight, bias, mean, scale = fit(train_x, train_y, len(names))
    probe = LinearProbe(weight, bias, mean, scale, names, 0.0, len(train_x), len(test_x), str(source))
    test_accuracy = float((probe.predict(test_x) == test_y).mean())
    return LinearProbe(weight, bias, mean, scale, names, test_accuracy, len(train_x), len(test_x), str(source))
