"""What the network predicts (eps, x0 or v) and how the loss weighs timesteps (uniform or min-SNR-gamma), checked
against closed forms: for Gaussian data the ideal denoiser is known exactly, so the three parameterisations of it
must drive every sampler to the same images and to the data's mean and standard deviation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddpm.cli import main
from ddpm.config import RunConfig, make_config
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.files import read_safetensors, safetensors_bytes
from ddpm.model_io import load_model
from ddpm.samplers import ddim_sample
from ddpm.schedules import min_snr_weight, prediction_target, split_prediction

MU, SIGMA = 0.1, 0.4  # the data: every pixel ~ N(MU, SIGMA^2), independent


def reference_schedule(T: int) -> np.ndarray:
    """alpha-bar_t of the linear schedule over T steps with Ho et al.'s range times 1000/T, from scratch."""
    betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    return np.cumprod(1 - betas)


def ideal(diffusion: GaussianDiffusion, prediction: str):
    """The Bayes-optimal network for the Gaussian data, E[x0 | x_t] = MU + a SIGMA^2 (x_t - a MU) / (a^2 SIGMA^2 +
    s^2) with a = sqrt(alpha-bar_t), s = sqrt(1 - alpha-bar_t), expressed as ``prediction``."""
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = diffusion.alphas_cumprod.to(x.device)[t].reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        x0 = MU + a * SIGMA**2 * (x - a * MU) / (a**2 * SIGMA**2 + s**2)
        eps = (x - a * x0) / s
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[prediction]
    return model


# Steps enough that discretisation shrinks the standard deviation by under 3% (DDIM-25 shrinks it by 12%).
SAMPLERS = [("ddpm", None), ("ddim", 100), ("dpm++2m", 50)]


@pytest.mark.parametrize("sampler, steps", SAMPLERS)
def test_the_ideal_denoiser_as_eps_x0_or_v_gives_the_same_samples_and_the_data_distribution(sampler, steps):
    samples = {}
    for prediction in ("eps", "x0", "v"):
        d = GaussianDiffusion(100, prediction=prediction)
        x_T = torch.randn(4096, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        samples[prediction] = d.sample(ideal(d, prediction), x_T.shape, sampler, steps, clip_denoised=False,
                                       generator=torch.Generator().manual_seed(1), x_T=x_T)
    torch.testing.assert_close(samples["x0"], samples["eps"], rtol=0, atol=1e-9)
    torch.testing.assert_close(samples["v"], samples["eps"], rtol=0, atol=1e-9)
    x = samples["eps"]
    # 4096 draws: the standard error of the mean is SIGMA/64 = 0.006, of the standard deviation 0.0044.
    assert abs(x.mean().item() - MU) < 0.025 and abs(x.std().item() / SIGMA - 1) < 0.04


def test_the_ideal_eps_is_the_scaled_score_and_ddim_is_euler_on_the_probability_flow_ode():
    """docs/guide.md, "the score view": eps*(x_t) = -sqrt(1 - alpha-bar_t) grad log q_t(x_t), with q_t = N(a MU,
    a^2 SIGMA^2 + s^2) the exact marginal of the Gaussian data (the gradient by autograd); and one DDIM step from t
    to s is the Euler step of dx-bar/dsigma-bar = eps(x_t) in x-bar = x / a, sigma-bar = s / a (Song et al. 2021,
    eq. 14)."""
    d = GaussianDiffusion(100)
    model = ideal(d, "eps")
    x = torch.linspace(-3, 3, 13, dtype=torch.float64).reshape(-1, 1, 1, 1)
    for t in (0, 30, 99):
        a, s = d.alphas_cumprod[t].sqrt(), (1 - d.alphas_cumprod[t]).sqrt()
        xg = x.clone().requires_grad_(True)
        log_q = torch.distributions.Normal(a * MU, (a**2 * SIGMA**2 + s**2).sqrt()).log_prob(xg).sum()
        score, = torch.autograd.grad(log_q, xg)
        eps = model(x, torch.full((len(x),), t))
        torch.testing.assert_close(eps, -s * score, rtol=1e-12, atol=1e-12)
    t, s_step = 80, 40
    a_t, a_s = d.alphas_cumprod[t].sqrt(), d.alphas_cumprod[s_step].sqrt()
    sbar_t, sbar_s = (1 - a_t**2).sqrt() / a_t, (1 - a_s**2).sqrt() / a_s
    euler = a_s * (x / a_t + (sbar_s - sbar_t) * model(x, torch.full((len(x),), t)))
    after_first = {}
    ddim_sample(model, d, x, [t, s_step], clip_denoised=False,
                callback=lambda i, step, x_s, x0: after_first.setdefault(i, x_s))
    torch.testing.assert_close(after_first[0], euler, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_split_prediction_inverts_prediction_target(prediction):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    a = torch.rand(5, 1, generator=g, dtype=torch.float64)
    s = (1 - a**2).sqrt()
    x_t = a * x0 + s * eps
    eps_back, x0_back = split_prediction(prediction_target(x0, eps, a, s, prediction), x_t, a, s, prediction)
    torch.testing.assert_close(eps_back, eps, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x0_back, x0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", ["uniform", "min-snr"])
def test_the_loss_is_its_closed_form_on_a_fixed_batch(prediction, weighting):
    T, gamma = 1000, 5.0
    d = GaussianDiffusion(T, prediction=prediction)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 30, 400, 999])
    model = lambda x, t: 0.3 * x + 0.01 * t.float().reshape(-1, 1, 1, 1)  # noqa: E731  # any fixed network
    loss = d.loss(model, x0, t, noise, weighting=weighting, gamma=gamma).item()

    abar = reference_schedule(T)[t.numpy()]
    a, s = np.sqrt(abar)[:, None, None, None], np.sqrt(1 - abar)[:, None, None, None]
    x0_, eps_ = x0.double().numpy(), noise.double().numpy()
    x_t = a * x0_ + s * eps_
    output = 0.3 * x_t + 0.01 * t.numpy()[:, None, None, None]
    target = {"eps": eps_, "x0": x0_, "v": a * eps_ - s * x0_}[prediction]
    per_image = ((output - target) ** 2).mean(axis=(1, 2, 3))
    snr = abar / (1 - abar)
    weight = {"uniform": np.ones(4), "min-snr": {"eps": np.minimum(snr, gamma) / snr, "x0": np.minimum(snr, gamma),
                                                 "v": np.minimum(snr, gamma) / (snr + 1)}[prediction]}[weighting]
    assert loss == pytest.approx((weight * per_image).mean(), rel=2e-5)


def test_min_snr_weights_at_chosen_timesteps():
    d = GaussianDiffusion(1000)
    snr = torch.tensor(reference_schedule(1000)[[0, 300, 999]] / (1 - reference_schedule(1000)[[0, 300, 999]]))
    assert snr[0] > 5 > snr[1] > snr[2]  # t = 0: clipped at gamma; t = 300, 999: below it
    torch.testing.assert_close(d.snr[[0, 300, 999]], snr, rtol=1e-10, atol=0)
    one, five = torch.tensor(1.0, dtype=torch.float64), torch.tensor(5.0, dtype=torch.float64)
    torch.testing.assert_close(min_snr_weight(snr, 5, "eps"), torch.stack([5 / snr[0], one, one]))
    torch.testing.assert_close(min_snr_weight(snr, 5, "x0"), torch.stack([five, snr[1], snr[2]]))
    torch.testing.assert_close(min_snr_weight(snr, 5, "v"), torch.stack([5 / (snr[0] + 1), *(snr[1:] / (snr[1:] + 1))]))


def test_an_old_config_without_the_new_fields_is_eps_and_uniform(tmp_path):
    data = make_config("tiny").to_dict()
    del data["diffusion"]["prediction"], data["train"]["loss_weight"], data["train"]["min_snr_gamma"]
    config = RunConfig.from_dict(json.loads(json.dumps(data)))
    assert (config.diffusion.prediction, config.train.loss_weight, config.train.min_snr_gamma) == ("eps", "uniform", 5)
    from conftest import write_model_file

    # A model file exported before --prediction existed (as the eps model shipped until issue 19 was) loads as eps.
    tensors, metadata = read_safetensors(write_model_file(tmp_path / "new.safetensors"))
    old = json.loads(metadata["config"])
    del old["diffusion"]["prediction"], old["train"]["loss_weight"], old["train"]["min_snr_gamma"]
    (tmp_path / "old.safetensors").write_bytes(safetensors_bytes(tensors, {**metadata, "config": json.dumps(old)}))
    loaded = load_model(tmp_path / "old.safetensors")
    assert loaded.diffusion.prediction == "eps" and loaded.config.train.loss_weight == "uniform"


def test_bad_values_are_config_errors(capsys):
    with pytest.raises(ConfigError, match="unknown prediction 'y'"):
        GaussianDiffusion(100, prediction="y")
    with pytest.raises(ConfigError, match="min-snr-gamma"):
        make_config("tiny", {"train": {"min_snr_gamma": 0.0}})
    with pytest.raises(SystemExit) as exit:  # argparse's own one-line usage error
        main(["train", "--preset", "tiny", "--prediction", "noise"])
    assert exit.value.code == 2 and "invalid choice: 'noise'" in capsys.readouterr().err
