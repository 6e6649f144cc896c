"""The variational bound (ddpm.likelihood, ``ddpm nll``): the Gaussian KL and the discretised decoder against closed
forms and scipy, the whole bound term by term against a float64 reference written here, and the command's bad
inputs."""

from __future__ import annotations

import json
import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

from conftest import MINI_MODEL, write_model_file, write_png_folder
from ddpm.config import ModelConfig
from ddpm.diffusion import GaussianDiffusion
from ddpm.likelihood import (bound_terms, bound_weight, discretized_gaussian_log_likelihood, normal_kl,
                             reverse_variance, summarize, terms_under_variance, to_bits_per_dim)
from ddpm.unet import UNet

LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 256 pixel levels on [-1, 1]


# ------------------------------------------------------------------------------------------------- the Gaussian KL
def test_normal_kl_matches_torch_distributions_and_is_zero_for_equal_gaussians():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    v1, v2 = torch.rand(50, generator=g, dtype=torch.float64) + 0.01, torch.rand(50, generator=g, dtype=torch.float64) + 0.01
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, v1.sqrt()),
                                                 torch.distributions.Normal(m2, v2.sqrt()))
    torch.testing.assert_close(normal_kl(m1, v1, m2, v2), expected, rtol=1e-12, atol=1e-12)
    assert normal_kl(m1, v1, m1, v1).abs().max().item() < 1e-15


def test_normal_kl_closed_form_of_equal_means():
    # KL(N(0, s) || N(0, 1)) = (s - 1 - log s) / 2
    s = torch.tensor([0.5, 2.0, 1e-4], dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    torch.testing.assert_close(normal_kl(zero, s, zero, torch.tensor(1.0, dtype=torch.float64)),
                               (s - 1 - s.log()) / 2, rtol=1e-14, atol=0)


# --------------------------------------------------------------------------------------- the discretised decoder
def scipy_decoder(x: np.ndarray, mean: np.ndarray, std: float) -> np.ndarray:
    upper, lower = (x + 1 / 255 - mean) / std, (x - 1 / 255 - mean) / std
    # above the mean, the difference of the upper tails: cdf(20) - cdf(19) is 1 - 1 in float64
    inner = np.log(np.where(lower > 0, stats.norm.sf(lower) - stats.norm.sf(upper),
                            stats.norm.cdf(upper) - stats.norm.cdf(lower)))
    return np.where(x < -0.999, stats.norm.logcdf(upper), np.where(x > 0.999, stats.norm.logsf(lower), inner))


@pytest.mark.parametrize("std", [0.01, 0.1, 0.5])
def test_decoder_matches_scipy(std):
    g = torch.Generator().manual_seed(1)
    x = LEVELS[torch.randint(0, 256, (500,), generator=g)]
    mean = (x + std * torch.randn(500, generator=g, dtype=torch.float64)).clamp(-1, 1)
    got = discretized_gaussian_log_likelihood(x, mean, torch.tensor(std**2, dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), scipy_decoder(x.numpy(), mean.numpy(), std), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mean,std", [(0.0, 0.003), (-1.0, 0.02), (1.0, 0.2), (0.37, 1.0), (-0.9, 1e-4)])
def test_decoder_bins_sum_to_one_over_the_256_levels(mean, std):
    logp = discretized_gaussian_log_likelihood(LEVELS, torch.full((256,), mean, dtype=torch.float64),
                                               torch.tensor(std**2, dtype=torch.float64))
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_decoder_edge_bins_are_open_to_infinity():
    std = 0.05
    var = torch.tensor(std**2, dtype=torch.float64)
    for mean in (-1.2, 0.0, 0.99):
        m = torch.tensor([mean, mean], dtype=torch.float64)
        low, high = discretized_gaussian_log_likelihood(torch.tensor([-1.0, 1.0], dtype=torch.float64), m, var)
        # P(X < -1 + 1/255) and P(X > 1 - 1/255), not the mass of a bin 2/255 wide
        assert low.item() == pytest.approx(stats.norm.logcdf((-1 + 1 / 255 - mean) / std), rel=1e-10)
        assert high.item() == pytest.approx(stats.norm.logsf((1 - 1 / 255 - mean) / std), rel=1e-10)
    # a mean far below -1 puts almost all the mass in the first bin
    assert discretized_gaussian_log_likelihood(torch.tensor([-1.0], dtype=torch.float64),
                                               torch.tensor([-3.0], dtype=torch.float64), var).item() > -1e-12


def test_decoder_is_accurate_far_in_the_tails():
    # Phi(b) - Phi(a) underflows to 0 in float64 for a bin 40 standard deviations from the mean; mpmath does not.
    mpmath.mp.dps = 50
    for x, mean, std in [(0.5, -0.5, 0.02), (-0.5, 0.5, 0.02), (0.2, 0.0, 0.004)]:
        upper, lower = (x + 1 / 255 - mean) / std, (x - 1 / 255 - mean) / std
        # mpmath's exponent range holds Phi(-49) ~ 1e-525; above the mean, 1 - Phi(49) needs it in that form
        mass = mpmath.ncdf(-lower) - mpmath.ncdf(-upper) if lower > 0 else mpmath.ncdf(upper) - mpmath.ncdf(lower)
        exact = float(mpmath.log(mass))
        got = discretized_gaussian_log_likelihood(torch.tensor([x], dtype=torch.float64),
                                                  torch.tensor([mean], dtype=torch.float64),
                                                  torch.tensor(std**2, dtype=torch.float64)).item()
        assert got == pytest.approx(exact, rel=1e-10)
        assert math.isfinite(got)


# ------------------------------------------------------------------------------------ the reverse variance at t = 0
@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_reverse_variance_takes_beta_tilde_1_at_t_0(variance):
    d = GaussianDiffusion(10, 0.01, 0.3, variance=variance)
    v = reverse_variance(d)
    assert v[0].item() == d.posterior_variance[1].item() > 0
    expected = d.betas if variance == "fixed_large" else d.posterior_variance
    torch.testing.assert_close(v[1:], expected[1:], rtol=0, atol=0)


# ----------------------------------------------------------------------- eq. 12: the bound as a weighted eps error
@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_bound_weight_turns_the_eps_error_into_the_gaussian_kl(variance):
    """Eq. 8 with both means written in eps (eq. 10-11): KL(q(x_{t-1} | x_t, x_0) || p_theta) minus its value for a
    perfect eps is lambda_t ||eps - eps_theta||^2, for every t >= 1 and any error."""
    d = GaussianDiffusion(50, variance=variance)
    weight = bound_weight(d)
    sigma2 = d.betas if variance == "fixed_large" else d.posterior_variance
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    error = 0.3 * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    for t in range(1, d.timesteps):
        abar = d.alphas_cumprod[t]
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        mean_of = lambda e: (x_t - d.betas[t] / (1 - abar).sqrt() * e) / d.alphas[t].sqrt()  # noqa: E731 - eq. 11
        true_mean = d.posterior_mean_coef1[t] * x0 + d.posterior_mean_coef2[t] * x_t  # eq. 7
        torch.testing.assert_close(mean_of(eps), true_mean, rtol=1e-9, atol=1e-12)  # eq. 10
        kl = normal_kl(true_mean, d.posterior_variance[t], mean_of(eps + error), sigma2[t]).sum()
        constant = normal_kl(true_mean, d.posterior_variance[t], true_mean, sigma2[t]).sum()
        assert (kl - constant).item() == pytest.approx(weight[t].item() * error.square().sum().item(), rel=1e-9)


def test_bound_weight_values_of_the_guide():
    """The numbers docs/guide.md quotes for Ho et al.'s schedule (T = 1000, beta 1e-4 to 0.02)."""
    large, small = bound_weight(GaussianDiffusion(1000)), bound_weight(GaussianDiffusion(1000, variance="fixed_small"))
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(large.numpy(), betas / (2 * (1 - betas) * (1 - abar)), rtol=1e-12)
    assert [round(large[t].item(), 4) for t in (0, 10, 500, 999)] == [0.5001, 0.0682, 0.0055, 0.0102]
    assert math.isinf(small[0].item()) and round(small[1].item(), 4) == 0.5997


# ------------------------------------------------------------------------------ the bound against a float64 reference
def reference_bound(model, T: int, beta_start: float, beta_end: float, variance: str, prediction: str,
                    x0: np.ndarray, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(prior (B,), terms (B, T)) in nats, straight from Ho et al.'s equations in numpy float64; the network and
    the noise eps (each image's own generator, one draw per t from T-1 down) are the only shared parts."""
    betas = np.linspace(beta_start, beta_end, T)
    abar = np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    tilde = betas * (1 - abar_prev) / (1 - abar)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    B = len(x0)
    terms = np.zeros((B, T))
    for t in range(T - 1, -1, -1):
        eps = np.stack([torch.randn(x0.shape[1:], generator=g).double().numpy() for g in generators])
        x_t = math.sqrt(abar[t]) * x0 + math.sqrt(1 - abar[t]) * eps
        with torch.no_grad():
            out = model(torch.from_numpy(x_t), torch.full((B,), t, dtype=torch.long)).numpy()
        if prediction == "eps":
            x0_hat = (x_t - math.sqrt(1 - abar[t]) * out) / math.sqrt(abar[t])
        elif prediction == "x0":
            x0_hat = out
        else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0
            x0_hat = math.sqrt(abar[t]) * x_t - math.sqrt(1 - abar[t]) * out
        x0_hat = np.clip(x0_hat, -1, 1)

        def posterior_mean(start):
            return (math.sqrt(abar_prev[t]) * betas[t] * start + math.sqrt(1 - betas[t]) * (1 - abar_prev[t]) * x_t) / (1 - abar[t])

        model_var = tilde[1] if t == 0 else (betas[t] if variance == "fixed_large" else tilde[t])
        mean = posterior_mean(x0_hat)
        if t == 0:
            std = math.sqrt(model_var)
            logp = scipy_decoder(x0, mean, std)
            terms[:, 0] = -logp.reshape(B, -1).sum(1)
        else:
            m1, v1 = posterior_mean(x0), tilde[t]
            kl = 0.5 * (np.log(model_var / v1) + v1 / model_var + (m1 - mean) ** 2 / model_var - 1)
            terms[:, t] = kl.reshape(B, -1).sum(1)
    v = 1 - abar[-1]
    prior = 0.5 * (-np.log(v) + v + abar[-1] * x0**2 - 1)
    return prior.reshape(B, -1).sum(1), terms


class TinyNet(torch.nn.Module):
    """A fixed float64 network of x_t and t: two convolutions with a learned per-timestep shift between them (the
    UNet computes its timestep embedding in float32, so it cannot be the float64 model of the reference test)."""

    def __init__(self, timesteps: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1, dtype=torch.float64)
        self.shift = torch.nn.Embedding(timesteps, 8, dtype=torch.float64)
        self.conv2 = torch.nn.Conv2d(8, 3, 3, padding=1, dtype=torch.float64)

    def forward(self, x, t):
        return self.conv2(torch.tanh(self.conv1(x) + self.shift(t)[:, :, None, None]))


def four_images() -> torch.Tensor:
    """A random image, one of all-equal pixels (level 131), and images all at the two edge levels -1 and 1."""
    g = torch.Generator().manual_seed(3)
    random = torch.randint(0, 256, (1, 3, 8, 8), generator=g)
    levels = torch.stack([torch.full((3, 8, 8), v) for v in (131, 0, 255)])
    return torch.cat([random, levels]).double() / 127.5 - 1


@pytest.mark.parametrize("prediction,variance", [("eps", "fixed_large"), ("eps", "fixed_small"),
                                                 ("x0", "fixed_large"), ("v", "fixed_small")])
def test_bound_equals_the_float64_reference_term_by_term(prediction, variance):
    T, beta_start, beta_end = 6, 0.02, 0.6
    diffusion = GaussianDiffusion(T, beta_start, beta_end, variance=variance, prediction=prediction)
    model = TinyNet(T)
    x0 = four_images()
    seeds = [10, 11, 12, 13]
    got = bound_terms(model, diffusion, x0, [torch.Generator().manual_seed(s) for s in seeds])
    prior, terms = reference_bound(model, T, beta_start, beta_end, variance, prediction, x0.numpy(), seeds)
    np.testing.assert_allclose(got.terms.numpy(), terms, rtol=1e-6, atol=0)
    np.testing.assert_allclose(got.prior.numpy(), prior, rtol=1e-6, atol=0)
    assert np.all(np.isfinite(terms)) and np.all(terms[:, 1:] >= 0)
    summary = summarize([got])
    per_image_bpd = (prior + terms.sum(1)) / (x0[0].numel() * math.log(2))
    assert summary.bits_per_dim == pytest.approx(per_image_bpd.mean(), rel=1e-6)
    assert summary.stderr == pytest.approx(per_image_bpd.std(ddof=1) / 2, rel=1e-6)
    assert summary.bits_per_dim == pytest.approx(summary.prior_bpd + summary.kl_bpd + summary.decoder_bpd, rel=1e-12)


@pytest.mark.parametrize("source,target", [("fixed_large", "fixed_small"), ("fixed_small", "fixed_large")])
def test_terms_under_the_other_variance_equal_a_pass_with_it(source, target):
    """The variance does not change the network's mean, so each term under one variance follows from the term under
    the other (eq. 8 rearranged): the converted terms equal a second pass with the same noise, image by image."""
    T = 6
    passes = {}
    for variance in (source, target):
        diffusion = GaussianDiffusion(T, 0.02, 0.6, variance=variance)
        bound = bound_terms(TinyNet(T), diffusion, four_images(), [torch.Generator().manual_seed(s) for s in range(4)])
        passes[variance] = to_bits_per_dim(bound.terms, bound.dims)
    assert not torch.allclose(passes[source][:, 1:], passes[target][:, 1:], rtol=1e-3)  # the variance does matter
    converted = terms_under_variance(passes[source], diffusion, source, target)
    torch.testing.assert_close(converted, passes[target], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(converted[:, 0], passes[source][:, 0], rtol=0, atol=0)  # the decoder: beta-tilde_2 in both
    torch.testing.assert_close(terms_under_variance(passes[source].mean(0), diffusion, source, target),
                               passes[target].mean(0), rtol=1e-10, atol=1e-12)  # linear: means convert too


def test_bound_of_an_image_depends_on_its_seed_not_its_batch():
    diffusion = GaussianDiffusion(5, 0.02, 0.6)
    torch.manual_seed(0)
    model = UNet(ModelConfig(**MINI_MODEL)).eval()
    x0 = four_images()
    whole = bound_terms(model, diffusion, x0, [torch.Generator().manual_seed(s) for s in range(4)])
    alone = bound_terms(model, diffusion, x0[2:3], [torch.Generator().manual_seed(2)])
    torch.testing.assert_close(alone.terms[0], whole.terms[2], rtol=1e-5, atol=1e-6)


def test_rate_sums_the_kl_terms_from_T_down_to_t():
    diffusion = GaussianDiffusion(5, 0.02, 0.6)
    torch.manual_seed(0)
    model = UNet(ModelConfig(**MINI_MODEL)).eval()
    summary = summarize([bound_terms(model, diffusion, four_images(), torch.Generator().manual_seed(0))])
    rate = summary.rate_bpd()
    assert rate[-1] == summary.prior_bpd
    assert rate[0] == pytest.approx(summary.prior_bpd + summary.kl_bpd, rel=1e-12)
    assert all(a >= b for a, b in zip(rate, rate[1:]))
    assert len(summary.rmse_255) == 5 and all(0 <= r <= 255 for r in summary.rmse_255)


# ---------------------------------------------------------------------------------------------------- the command
@pytest.fixture
def mini_model(tmp_path):
    return write_model_file(tmp_path / "mini.safetensors", {"timesteps": 4, "schedule": "cosine"})


def test_nll_command_json(cli, mini_model, tmp_path):
    images = write_png_folder(tmp_path / "images", count=3)
    code, out, err = cli("nll", mini_model, "--data-dir", images, "--batch-size", "2", "--device", "cpu", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["num_images"] == 3 and len(record["terms_bpd"]) == 4 and len(record["rmse_255"]) == 4
    assert record["bits_per_dim"] == pytest.approx(record["prior_bpd"] + sum(record["terms_bpd"]), rel=1e-9)
    assert record["decoder_bpd"] == record["terms_bpd"][0] and record["stderr"] > 0
    # the same images, one batch: the same numbers (each image has its own seed)
    code, out, _ = cli("nll", mini_model, "--data-dir", images, "--batch-size", "3", "--device", "cpu", "--json")
    assert json.loads(out)["bits_per_dim"] == pytest.approx(record["bits_per_dim"], rel=1e-6)
    code, out, _ = cli("nll", mini_model, "--data-dir", images, "--num-images", "1", "--device", "cpu")
    assert code == 0 and "bits/dim ± n/a (s.e. over 1 images)" in out and out.count("\n") == 1


def test_nll_variance_flag_equals_a_model_trained_with_it(cli, mini_model, tmp_path):
    """--variance replaces the reverse variance (not learnt): the same weights saved with fixed_small give the same
    bound, and the record says which variance it used."""
    images = write_png_folder(tmp_path / "images", count=2)
    small = write_model_file(tmp_path / "small.safetensors", {"timesteps": 4, "schedule": "cosine",
                                                              "variance": "fixed_small"})
    records = {}
    for name, model, flags in (("large", mini_model, []), ("override", mini_model, ["--variance", "fixed_small"]),
                               ("small", small, [])):
        code, out, err = cli("nll", model, "--data-dir", images, "--device", "cpu", "--json", *flags)
        assert code == 0, err
        records[name] = json.loads(out)
    assert records["override"]["terms_bpd"] == records["small"]["terms_bpd"]
    assert records["override"]["variance"] == records["small"]["variance"] == "fixed_small"
    assert records["large"]["variance"] == "fixed_large"
    assert records["large"]["terms_bpd"][1:] != records["small"]["terms_bpd"][1:]


def test_nll_reads_cifar10_pickles_test_split(cli, tmp_path):
    from conftest import write_cifar10

    write_cifar10(tmp_path / "cifar", per_batch=2)
    model = write_model_file(tmp_path / "m32.safetensors", {"timesteps": 2, "schedule": "cosine"},
                             {"resolution": 32, "attn_resolutions": (16,)})
    code, out, err = cli("nll", model, "--data-dir", tmp_path / "cifar", "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out)["num_images"] == 2 and "CIFAR-10 test" in err


def bad_input_cases(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    small = write_png_folder(tmp_path / "small", size=4)
    mixed = write_png_folder(tmp_path / "mixed", count=1, size=8)
    write_png_folder(mixed / "sub", count=1, size=16)
    good = write_png_folder(tmp_path / "good")
    model = write_model_file(tmp_path / "m.safetensors", {"timesteps": 4, "schedule": "cosine"})
    one_step = write_model_file(tmp_path / "one.safetensors", {"timesteps": 1, "schedule": "cosine"})
    return [
        ((model, "--data-dir", empty), "no images"),
        ((model, "--data-dir", small), "the images are 4x4 with 3 channels, the model's are 8x8"),
        ((model, "--data-dir", mixed), "different sizes"),
        ((model, "--data-dir", tmp_path / "missing"), "does not exist"),
        ((one_step, "--data-dir", good), "at least 2 timesteps"),
        ((tmp_path / "missing.safetensors", "--data-dir", good), "missing.safetensors"),
    ]


def test_nll_bad_inputs_are_one_line_errors(cli, tmp_path):
    for args, message in bad_input_cases(tmp_path):
        code, out, err = cli("nll", *args, "--device", "cpu")
        assert code != 0, args
        assert err.startswith("ddpm nll: error:") and err.count("\n") == 1, err
        assert message in err, err
        assert out == ""


def test_nll_flags_parse_errors(cli, mini_model, tmp_path):
    for flags in (["--batch-size", "0"], ["--num-images", "-1"]):
        with pytest.raises(SystemExit) as info:
            cli("nll", mini_model, "--data-dir", tmp_path, *flags)
        assert info.value.code == 2
