"""Sample quality of a model in one call: draw N images, take their Inception features on the fly, score them.

:func:`evaluate` is what ``ddpm eval`` runs for each number of sampling steps, and what a training loop can call
for FID during training: it holds no file, no argument parsing and no output of its own. Images are never
written unless asked (``keep_dir``): each batch goes from the sampler straight to the Inception network, so
50,000 samples cost 400 MB of features, not a folder of PNGs. Image i uses seed ``seed + i`` (see
:mod:`ddpm.generate`), so two evaluations with the same seed differ only in what they are meant to compare.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ddpm.config import MIN_EVAL_SAMPLES
from ddpm.diffusion import GaussianDiffusion
from ddpm.distributed import amp_dtype
from ddpm.errors import ConfigError
from ddpm.generate import balanced_labels, generate, image_path, save_png
from ddpm.guidance import num_classes
from ddpm.metrics import FeatureStats, fid, inception_features, kernel_inception_distance, precision_recall
from ddpm.probe import LinearProbe

FID_PLOT = "fid_vs_nfe.png"
GUIDANCE_PLOT = "fid_vs_guidance.png"


def sample_features(model: torch.nn.Module, diffusion: GaussianDiffusion, num_samples: int, sampler: str,
                    steps: int, seed: int = 0, batch_size: int = 64, device: torch.device | None = None,
                    keep_dir: str | Path | None = None, progress: bool = True, amp: bool = False,
                    network: torch.nn.Module | None = None,
                    on_batch: Callable[[list[int], torch.Tensor], None] | None = None,
                    labels: Sequence[int] | None = None, guidance_scale: float | None = None,
                    spacing: str = "uniform") -> np.ndarray:
    """Inception pool3 features (N, 2048) of ``num_samples`` images drawn with seeds ``seed .. seed + N - 1``.

    Each batch is scored as soon as it is sampled; with ``keep_dir`` it is also written there as PNGs named by
    seed, the layout of ``ddpm sample --output-dir``, to look at or to feed to ``ddpm fid``. ``network`` replaces
    the exact Inception network (see :func:`ddpm.metrics.inception_features`). ``on_batch`` gets each scored batch's
    seeds and uint8 images (B, H, W, C), e.g. to keep some of them without sampling them again. ``labels`` and
    ``guidance_scale`` are those of :func:`ddpm.generate.generate` (a class-conditional model's classes, by default
    class-balanced, and its guidance) and ``spacing`` its step spacing. Grayscale images are scored as RGB with three equal channels.
    """
    device = device or next(model.parameters()).device
    features = np.empty((num_samples, 2048), dtype=np.float64)
    folder = Path(keep_dir) if keep_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)

    def score_batch(seeds: list[int], images: torch.Tensor) -> None:
        first = seeds[0] - seed
        rgb = images.permute(0, 3, 1, 2).expand(-1, 3, -1, -1).contiguous()  # grayscale: three equal channels
        features[first:first + len(seeds)] = inception_features(rgb, device=device.type, progress=False,
                                                                network=network)
        if folder is not None:
            for s, image in zip(seeds, images.numpy()):
                save_png(image, image_path(folder, s))
        if on_batch is not None:
            on_batch(seeds, images)

    generate(model, diffusion, range(seed, seed + num_samples), batch_size, score_batch, sampler, steps,
             device=device, progress=progress, amp=amp, labels=labels, guidance_scale=guidance_scale, spacing=spacing)
    return features


def score(features: np.ndarray, reference: FeatureStats, seed: int = 0,
          device: str = "auto") -> dict[str, float | None]:
    """FID, KID (mean and std over subsets) and precision/recall of sample ``features`` against ``reference``.

    KID and precision/recall need the reference's features and are None for statistics without them. Precision/
    recall compare the samples with a random subset (drawn with ``seed``) of as many reference images, as
    Kynkaanniemi et al. compare equally large sets: the k-NN radii shrink as a set grows, so a 50,000-image
    reference would bias a 10,000-sample precision down (and cost 50,000^2 distances). With 50,000 samples
    against CIFAR-10 train the subset is the whole set.
    """
    stats = FeatureStats.from_features(features)
    result: dict[str, float | None] = {"fid": fid(stats, reference), "kid": None, "kid_std": None, "precision": None,
                                       "recall": None}
    if reference.features is not None:
        result["kid"], result["kid_std"] = kernel_inception_distance(features, reference.features, seed=seed)
        real = reference.features
        if len(real) > len(features):
            real = real[np.random.default_rng(seed).choice(len(real), len(features), replace=False)]
        result["precision"], result["recall"] = precision_recall(real=real, fake=features, device=device)
    return result


def evaluate(model: torch.nn.Module, diffusion: GaussianDiffusion, reference: FeatureStats, num_samples: int,
             sampler: str, steps: int, seed: int = 0, batch_size: int = 64, device: torch.device | None = None,
             keep_dir: str | Path | None = None, progress: bool = True, amp: bool = False,
             guidance_scale: float | None = None, probe: LinearProbe | None = None,
             spacing: str = "uniform") -> dict[str, Any]:
    """Sample ``num_samples`` images with ``sampler`` in ``steps`` steps and score them against ``reference``.

    ``reference`` comes from :func:`ddpm.metrics.load_source` (built-in CIFAR-10 statistics are cached after the
    first use). Returns ``fid``, ``kid``, ``kid_std``, ``precision``, ``recall`` (see :func:`score`) with
    ``sampler``, ``steps`` (= network evaluations per image for these samplers), ``num_samples``, ``seed``, ``amp``
    (whether the network ran under autocast, see :func:`ddpm.generate.generate`) and ``wall_sec`` (sampling, features
    and metrics), ready to be logged as one JSON line.

    A class-conditional model draws image i of class i mod K (class-balanced, as conditional FIDs are measured) with
    classifier-free guidance ``guidance_scale`` (None: the model's recommended scale); the result then also holds
    ``guidance_scale`` and, with a ``probe`` (:func:`ddpm.probe.load_probe`), ``probe_accuracy``, how often the probe
    recognises the class asked for, beside ``probe_test_accuracy``, its accuracy on real test images (the ceiling).
    """
    if num_samples < MIN_EVAL_SAMPLES:
        raise ConfigError(f"evaluation needs at least {MIN_EVAL_SAMPLES} samples (precision/recall use the 3rd nearest "
                          f"neighbour), got {num_samples}")
    device = device or next(model.parameters()).device
    amp = amp and amp_dtype(device) is not None  # what ran, for the record: off where it would be slower
    start = time.perf_counter()
    k = num_classes(model)
    labels = balanced_labels(num_samples, k) if k is not None else None
    if k is not None and guidance_scale is None:
        guidance_scale = model.config.guidance_scale
    features = sample_features(model, diffusion, num_samples, sampler, steps, seed, batch_size, device, keep_dir,
                               progress, amp, labels=labels, guidance_scale=guidance_scale, spacing=spacing)
    metrics = score(features, reference, seed, device.type)
    conditional: dict[str, Any] = {}
    if k is not None:
        conditional["guidance_scale"] = guidance_scale
        if probe is not None:
            conditional.update(probe_accuracy=probe.accuracy(features, labels, model.config.class_names),
                               probe_test_accuracy=probe.test_accuracy, probe_train_images=probe.train_images,
                               probe_test_images=probe.test_images)
    return {"sampler": sampler, "spacing": spacing, "steps": steps, "num_samples": num_samples, "seed": seed, "amp": amp,
            "variance": diffusion.variance, **conditional, **metrics, "wall_sec": time.perf_counter() - start}


def check_steps(diffusion: GaussianDiffusion, sampler: str, steps: Sequence[int]) -> None:
    """Raise the samplers' own ConfigError for an invalid sampler or step count before any real work.

    Each setting is run once on a single zero pixel with a network that outputs zeros: the same
    validation as a real run, in milliseconds, instead of failing after minutes of sampling.
    """
    for k in steps:
        diffusion.sample(lambda x, t: torch.zeros_like(x), (1, 1, 1, 1), sampler, k, device="cpu",
                         generator=torch.Generator(), x_T=torch.zeros(1, 1, 1, 1))  # leaves the global RNG alone


def plot_fid_vs_nfe(records: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """FID against network evaluations per image (log scale), one point per record, saved as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global

    points = sorted((r["steps"], r["fid"]) for r in records)
    figure = Figure(figsize=(5, 3.5), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(*zip(*points), marker="o")
    for nfe, value in points:
        axes.annotate(f"{value:.2f}", (nfe, value), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    axes.set(xscale="log", xlabel="NFE (network evaluations per image)", ylabel="FID", title=title)
    axes.minorticks_off()
    axes.set_xticks([nfe for nfe, _ in points], [str(nfe) for nfe, _ in points])
    axes.margins(y=0.15)  # room for the labels above the points
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)
    return Path(path)


def plot_guidance_sweep(records: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """FID, and precision and recall (and the probe's accuracy, when measured), against the guidance scale s, one
    point per record, saved as a PNG; the probe's accuracy on real test images is drawn as its ceiling."""
    from matplotlib.figure import Figure

    records = sorted(records, key=lambda r: r["guidance_scale"])
    scales = [r["guidance_scale"] for r in records]
    figure = Figure(figsize=(8, 3.5), layout="constrained")
    fid_axes, rate_axes = figure.subplots(1, 2)
    fid_axes.plot(scales, [r["fid"] for r in records], marker="o")
    for s, r in zip(scales, records):
        fid_axes.annotate(f"{r['fid']:.1f}", (s, r["fid"]), textcoords="offset points", xytext=(0, 6), ha="center",
                          fontsize=8)
    fid_axes.set(xlabel="guidance scale s (0: unconditional, 1: conditional)", ylabel="FID")
    fid_axes.margins(y=0.15)
    for key, label in (("precision", "precision"), ("recall", "recall"), ("probe_accuracy", "probe accuracy")):
        if all(r.get(key) is not None for r in records):
            rate_axes.plot(scales, [r[key] for r in records], marker="o", label=label)
    ceiling = next((r["probe_test_accuracy"] for r in records if r.get("probe_test_accuracy") is not None), None)
    if ceiling is not None:
        rate_axes.axhline(ceiling, color="grey", ls="--", lw=1, label="probe on real test images")
    rate_axes.set(xlabel="guidance scale s", ylim=(0, 1))
    rate_axes.legend(fontsize=8)
    for axes in (fid_axes, rate_axes):
        axes.set_xticks(scales, [f"{s:g}" for s in scales])
        axes.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=120)
    return Path(path)
