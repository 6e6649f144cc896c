"""The diffusion math of :mod:`ddpm.diffusion` against closed forms, pinned numbers and diffusers as an oracle.

diffusers keeps its schedules in float32, so comparisons with it are at ~1e-6 relative; comparisons with our own
float64 closed forms are at ~1e-12.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from ddpm.config import RunConfig, make_config
from ddpm.presets import PRESETS
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.model_io import load_model
from ddpm.schedules import ScheduleWarning
from ddpm.train import resume_config
from ddpm.unet import UNet

# Many checks here use short explicit beta ranges that stop short of noise on purpose (closed forms at small T);
# the tests of the warning itself turn it back on.
pytestmark = pytest.mark.filterwarnings("ignore::ddpm.schedules.ScheduleWarning")

F64 = dict(dtype=torch.float64)


def closed_form_linear(T: int, beta_start: float, beta_end: float) -> tuple[np.ndarray, np.ndarray]:
    """betas and alphas_cumprod of the linear schedule, computed independently in numpy."""
    betas = beta_start + (beta_end - beta_start) * np.arange(T) / (T - 1)
    return betas, np.cumprod(1.0 - betas)


def nichol_alpha_bar(t: float, T: int, s: float = 0.008) -> float:
    """Nichol & Dhariwal (2021) eq. 17: alpha-bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2)."""
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0)


def assert_close(actual, expected, rtol, atol=0.0):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


class TinyEps(torch.nn.Module):
    """A fixed deterministic eps-model: a seeded 3x3 convolution, tanh, plus a function of t."""

    def __init__(self, channels: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(channels, channels, 3, 3, generator=g) / 3)
        self.phase = torch.nn.Parameter(torch.randn(channels, generator=g))

    def forward(self, x, t):
        h = torch.nn.functional.conv2d(x, self.weight.to(x.dtype), padding=1)
        return torch.tanh(h) + 0.3 * torch.sin(0.01 * t.to(x.dtype)[:, None, None, None] + self.phase.to(x.dtype)[:, None, None])


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("T, beta_start, beta_end", [(1000, 1e-4, 0.02), (50, 1e-3, 0.2), (7, 0.01, 0.5)])
def test_linear_schedule_matches_closed_form(T, beta_start, beta_end):
    d = GaussianDiffusion(T, beta_start, beta_end, "linear")
    betas, abar = closed_form_linear(T, beta_start, beta_end)
    assert d.betas.dtype == torch.float64 and d.alphas_cumprod.dtype == torch.float64
    assert d.betas.shape == (T,)
    assert_close(d.betas, betas, rtol=1e-12)
    assert_close(d.alphas, 1 - betas, rtol=1e-12)
    assert_close(d.alphas_cumprod, abar, rtol=1e-12)
    assert_close(d.alphas_cumprod_prev, np.concatenate([[1.0], abar[:-1]]), rtol=1e-12)
    assert_close(d.sqrt_alphas_cumprod, np.sqrt(abar), rtol=1e-12)
    assert_close(d.sqrt_one_minus_alphas_cumprod, np.sqrt(1 - abar), rtol=1e-12)
    assert d.betas[0].item() == pytest.approx(beta_start, rel=1e-14)
    assert d.betas[-1].item() == pytest.approx(beta_end, rel=1e-14)


@pytest.mark.parametrize("T, beta_start, beta_end", [(1000, 1e-4, 0.02), (50, 1e-3, 0.2)])
def test_linear_schedule_matches_diffusers(T, beta_start, beta_end):
    d = GaussianDiffusion(T, beta_start, beta_end, "linear")
    ref = DDPMScheduler(num_train_timesteps=T, beta_start=beta_start, beta_end=beta_end, beta_schedule="linear")
    assert_close(d.betas, ref.betas, rtol=1e-6)
    assert_close(d.alphas_cumprod, ref.alphas_cumprod, rtol=2e-6)


@pytest.mark.parametrize("T", [1000, 100])
def test_cosine_schedule_matches_closed_form_and_diffusers(T):
    d = GaussianDiffusion(T, schedule="cosine")
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    assert_close(d.betas, ref.betas, rtol=1e-6)
    assert_close(d.alphas_cumprod, ref.alphas_cumprod, rtol=2e-6, atol=1e-9)
    # alpha-bar_t = f(t+1)/f(0) exactly except at the last step, where beta is capped at 0.999.
    expected = [nichol_alpha_bar(t + 1, T) for t in range(T - 1)]
    assert_close(d.alphas_cumprod[:-1], expected, rtol=1e-10)
    assert d.betas[-1].item() == pytest.approx(0.999, rel=1e-12)
    assert (d.betas[:-1] < 0.999).all()


def test_pinned_schedule_numbers():
    lin = GaussianDiffusion(1000, 1e-4, 0.02, "linear")
    assert lin.alphas_cumprod[-1].item() == pytest.approx(4.0358298e-05, rel=1e-5)
    assert lin.alphas_cumprod[499].item() == pytest.approx(0.078587243, rel=1e-5)
    assert lin.alphas_cumprod[0].item() == pytest.approx(0.9999, rel=1e-12)
    assert lin.posterior_variance[1].item() == pytest.approx(5.4531877e-05, rel=1e-5)
    cos = GaussianDiffusion(1000, schedule="cosine")
    assert cos.alphas_cumprod[499].item() == pytest.approx(0.49384359, rel=1e-5)
    assert cos.alphas_cumprod[0].item() == pytest.approx(0.99995872, rel=1e-7)


@pytest.mark.parametrize("kwargs", [
    dict(timesteps=0), dict(beta_start=0.02, beta_end=1e-4), dict(beta_start=0.0), dict(beta_end=1.0),
    dict(schedule="quadratic"), dict(variance="learned"), dict(timesteps=100, beta_start=0.2),
])
def test_invalid_configuration_raises_config_error(kwargs):
    with pytest.raises(ConfigError):
        GaussianDiffusion(**kwargs)


# ---------------------------------------------------------------- reaching noise: x_T ~ N(0, I)


def silent(*args, **kwargs) -> GaussianDiffusion:
    """GaussianDiffusion(*args, **kwargs), failing the test if it warns that x_T is not noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleWarning)
        return GaussianDiffusion(*args, **kwargs)


def schedule_of(config) -> GaussianDiffusion:
    """The schedule a DiffusionConfig describes (its sampling recommendations aside), failing on a warning."""
    return silent(config.timesteps, config.beta_start, config.beta_end, config.schedule, config.variance,
                  config.prediction)


def test_default_range_at_t1000_is_bit_identical_to_ho():
    """1000/T = 1 exactly, so the default schedule is still torch.linspace(1e-4, 0.02, 1000) to the last bit."""
    ho = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    for d in (silent(1000), silent(1000, 1e-4, 0.02), GaussianDiffusion.from_config(make_config("ho2020").diffusion)):
        assert torch.equal(d.betas, ho)
        assert torch.equal(d.alphas_cumprod, torch.cumprod(1 - ho, 0))
    assert d.alphas_cumprod[-1].item() == pytest.approx(4.0358298e-05, rel=1e-7)


@pytest.mark.parametrize("T", [21, 50, 100, 250, 1000, 4000])
def test_default_range_is_improved_diffusions_scaled_linear_schedule(T):
    """get_named_beta_schedule("linear", T) of improved-diffusion (Nichol & Dhariwal 2021), written out:
    np.linspace(1000/T * 1e-4, 1000/T * 0.02, T). Its alpha-bar_T ~ exp(-sum beta) ~ exp(-10.05) at every T."""
    scale = 1000 / T
    betas = np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)
    d = silent(T)
    assert d.betas[0].item() == scale * 0.0001 and d.betas[-1].item() == scale * 0.02
    assert_close(d.betas, betas, rtol=1e-12)
    assert_close(d.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-12)
    assert d.alphas_cumprod[-1].item() <= math.exp(-10.05) < 1e-3


def test_pinned_alpha_bar_T_of_the_default_range_at_t100():
    """The tiny preset's schedule: beta from 1e-3 to 0.2; alpha-bar_T = prod(1 - beta_t), computed offline."""
    d = silent(100)
    assert (d.betas[0].item(), d.betas[-1].item()) == (0.001, 0.2)
    assert d.alphas_cumprod[-1].item() == pytest.approx(2.0390090e-05, rel=1e-7)


def test_only_an_unset_end_is_scaled():
    """A given end is used as it is (diffusers' beta_start/beta_end); the other one takes its scaled default."""
    assert GaussianDiffusion(100, beta_end=0.1).betas[0].item() == 0.001
    d = silent(100, beta_start=1e-4)
    assert (d.betas[0].item(), d.betas[-1].item()) == (1e-4, 0.2)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_every_preset_reaches_noise_without_a_warning(preset, schedule):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleWarning)
        config = make_config(preset, {"diffusion": {"schedule": schedule}})
    assert schedule_of(config.diffusion).alphas_cumprod[-1].item() <= 1e-3


@pytest.mark.parametrize("T", [1, 2, 3, 10, 100, 1000, 4000])
def test_cosine_schedule_reaches_noise_at_every_T(T):
    """The last beta is capped at 0.999, so alpha-bar_T = alpha-bar_{T-1} (1 - 0.999) <= 1e-3 (= at T = 1)."""
    abar_T = silent(T, schedule="cosine").alphas_cumprod[-1].item()
    assert abar_T == pytest.approx(1e-3, rel=1e-12) if T == 1 else abar_T < 1e-3


@pytest.mark.parametrize("T, beta_start, beta_end", [(100, 1e-4, 0.02), (50, 1e-3, 0.2), (10, 1e-3, 0.1)])
def test_a_schedule_that_keeps_signal_warns_with_what_it_means_and_what_to_change(T, beta_start, beta_end):
    abar_T = float(np.prod(1 - np.linspace(beta_start, beta_end, T)))
    assert abar_T > 1e-3
    with pytest.warns(ScheduleWarning) as record:
        GaussianDiffusion(T, beta_start, beta_end)
    assert len(record) == 1
    message = str(record[0].message)
    for text in (f"beta = {beta_start:g} -> {beta_end:g} over T = {T} steps", f"alpha-bar_T = {abar_T:.3g}",
                 f"x_T keeps sqrt(alpha-bar_T) = {math.sqrt(abar_T):.0%} of the image's signal",
                 "sampling starts from pure noise", "leave --beta-start and --beta-end unset", "1000/T",
                 "--time-steps", "retrain"):
        assert text in message, text
    assert record[0].filename == __file__  # points at the line that made the schedule


def test_the_old_tiny_schedule_warns_with_its_numbers():
    """The tiny preset before the 1000/T scaling: 1e-4 -> 0.02 over 100 steps kept 60% of the image in x_T."""
    with pytest.warns(ScheduleWarning, match=r"alpha-bar_T = 0\.364: x_T keeps sqrt\(alpha-bar_T\) = 60% "):
        GaussianDiffusion(100, 1e-4, 0.02)


def test_the_warning_threshold_is_alpha_bar_T_of_1e_3():
    """The explicit range 1e-3 -> b over T = 60 steps crosses alpha-bar_T = 1e-3 between b = 0.21 and 0.22."""
    assert silent(60, 1e-3, 0.22).alphas_cumprod[-1].item() < 1e-3
    with pytest.warns(ScheduleWarning):
        assert GaussianDiffusion(60, 1e-3, 0.21).alphas_cumprod[-1].item() > 1e-3


def test_the_default_range_cannot_be_scaled_below_t21():
    """0.02 x 1000/T reaches 1 at T = 20: the error says why and what to do instead."""
    with pytest.raises(ConfigError, match=r"got 0\.005 and 1 \(unset, they are .* 1000/T = 50: give both"):
        GaussianDiffusion(20)
    with pytest.raises(ConfigError, match="--time-steps or --schedule cosine"):
        make_config("tiny", {"diffusion": {"timesteps": 20}})
    assert silent(20, schedule="cosine").timesteps == 20
    assert silent(20, 1e-3, 0.6).alphas_cumprod[-1].item() < 1e-3


OLD_TINY_DIFFUSION = {"timesteps": 100, "beta_start": 0.0001, "beta_end": 0.02, "schedule": "linear",
                      "variance": "fixed_large"}  # the config a tiny checkpoint saved before the 1000/T scaling


def test_a_checkpoint_from_before_the_scaling_keeps_its_schedule_and_warns(tmp_path):
    """Saved configs always hold numbers for beta_start/beta_end, so an old T = 100 checkpoint rebuilds the schedule
    it was trained with, exactly, and says that it keeps signal; resuming it keeps that schedule too."""
    config = make_config("tiny")
    old = {**config.to_dict(), "diffusion": OLD_TINY_DIFFUSION}
    torch.save({"model": UNet(config.model).state_dict(), "config": old, "step": 7}, tmp_path / "ckpt-00000007.pt")
    with pytest.warns(ScheduleWarning, match="alpha-bar_T = 0.364"):
        loaded = load_model(tmp_path / "ckpt-00000007.pt")
    assert torch.equal(loaded.diffusion.betas, torch.linspace(1e-4, 0.02, 100, dtype=torch.float64))
    with pytest.warns(ScheduleWarning):
        resumed = resume_config(RunConfig.from_dict(old), "tiny", {"train": {"total_steps": 400}})
    assert (resumed.diffusion.beta_start, resumed.diffusion.beta_end) == (1e-4, 0.02)
    # A new config saves None, so it rebuilds the scaled range from its own T.
    new = RunConfig.from_dict(config.to_dict())
    assert new.diffusion.beta_start is None and schedule_of(new.diffusion).betas[-1].item() == 0.2


# ---------------------------------------------------------------- posterior coefficients


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_coefficients_match_bayes_rule(schedule):
    """beta-tilde_t and mu-tilde_t (eqs. 6-7) re-derived by conditioning two Gaussians.

    q(x_{t-1}|x_0) = N(sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}) and q(x_t|x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t):
    precision = 1/(1 - abar_{t-1}) + alpha_t/beta_t, mean = var (sqrt(abar_{t-1}) x_0/(1 - abar_{t-1})
    + sqrt(alpha_t) x_t / beta_t).
    """
    T = 1000
    d = GaussianDiffusion(T, schedule=schedule)
    if schedule == "linear":
        betas, abar = closed_form_linear(T, 1e-4, 0.02)
    else:
        betas = d.betas.numpy()  # checked against its closed form above
        abar = np.cumprod(1 - betas)
    abar_prev = abar[:-1]
    b, a = betas[1:], 1 - betas[1:]
    var = 1.0 / (1.0 / (1 - abar_prev) + a / b)
    assert_close(d.posterior_variance[1:], var, rtol=1e-10)
    assert_close(d.posterior_mean_coef1[1:], var * np.sqrt(abar_prev) / (1 - abar_prev), rtol=1e-10)
    assert_close(d.posterior_mean_coef2[1:], var * np.sqrt(a) / b, rtol=1e-10)
    # At t = 0 the posterior is a point mass on x_0.
    assert d.posterior_variance[0].item() == 0.0
    assert d.posterior_mean_coef1[0].item() == pytest.approx(1.0, rel=1e-12)
    assert d.posterior_mean_coef2[0].item() == 0.0


def test_posterior_matches_diffusers_step():
    """diffusers' DDPMScheduler.step with prediction_type="sample" is the posterior mean plus noise; differencing two
    calls that share the noise isolates each mean coefficient, and _get_variance is beta-tilde.

    diffusers' float32 schedule loses 1 - abar_t for small t (relative error ~3e-4 at t = 1), so its schedule
    tensors are rebuilt in float64 with its own recipe before its step formulas are compared at 1e-9.
    """
    T = 1000
    d = GaussianDiffusion(T, 1e-4, 0.02, variance="fixed_small")
    ref = DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, variance_type="fixed_small",
                        prediction_type="sample", clip_sample=False)
    ref.betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    ref.alphas = 1.0 - ref.betas
    ref.alphas_cumprod = torch.cumprod(ref.alphas, dim=0)
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    shape = (1, 1, 1, 1)
    zero, one = torch.zeros(shape, **F64), torch.ones(shape, **F64)

    def step(x0, xt, t):
        return ref.step(x0, t, xt, generator=torch.Generator().manual_seed(t)).prev_sample.item()

    for t in [1, 2, 10, 100, 500, 998, 999]:
        base = step(zero, zero, t)
        coef1 = step(one, zero, t) - base
        coef2 = step(zero, one, t) - base
        assert coef1 == pytest.approx(d.posterior_mean_coef1[t].item(), rel=1e-9)
        assert coef2 == pytest.approx(d.posterior_mean_coef2[t].item(), rel=1e-9)
        assert ref._get_variance(t).item() == pytest.approx(d.posterior_variance[t].item(), rel=1e-9)


def test_q_posterior_values_and_broadcasting():
    d = GaussianDiffusion(1000)
    g = torch.Generator().manual_seed(0)
    x0, xt = torch.randn(4, 2, 3, 3, generator=g, **F64), torch.randn(4, 2, 3, 3, generator=g, **F64)
    t = torch.tensor([0, 1, 500, 999])
    mean, var = d.q_posterior(x0, xt, t)
    assert mean.shape == x0.shape and var.shape == (4, 1, 1, 1)
    _, abar = closed_form_linear(1000, 1e-4, 0.02)
    betas = 1 - abar / np.concatenate([[1.0], abar[:-1]])
    for i, ti in enumerate(t.tolist()):
        ap = abar[ti - 1] if ti > 0 else 1.0
        c1 = math.sqrt(ap) * betas[ti] / (1 - abar[ti])
        c2 = math.sqrt(1 - betas[ti]) * (1 - ap) / (1 - abar[ti])
        assert_close(mean[i], c1 * x0[i] + c2 * xt[i], rtol=1e-10, atol=1e-12)
        assert var[i].item() == pytest.approx(betas[ti] * (1 - ap) / (1 - abar[ti]), rel=1e-10, abs=1e-300)
    torch.testing.assert_close(mean[0], x0[0], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- forward process


def test_q_sample_exact_formula_per_row_timesteps():
    d = GaussianDiffusion(1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 3, 4, 4, generator=g)
    noise = torch.randn(5, 3, 4, 4, generator=g)
    t = torch.tensor([0, 3, 250, 777, 999])
    xt = d.q_sample(x0, t, noise)
    assert xt.dtype == torch.float32 and xt.shape == x0.shape
    _, abar = closed_form_linear(1000, 1e-4, 0.02)
    for i, ti in enumerate(t.tolist()):
        expected = math.sqrt(abar[ti]) * x0[i].double() + math.sqrt(1 - abar[ti]) * noise[i].double()
        assert_close(xt[i], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("t", [0, 99, 999])
def test_q_sample_moments(t):
    """Mean sqrt(abar_t) x_0 and variance 1 - abar_t, within 5 standard errors of N = 200,000 draws."""
    d = GaussianDiffusion(1000)
    n = 200_000
    x0 = torch.tensor([-1.0, 0.25, 0.9], **F64)[:, None].expand(3, n).contiguous()
    torch.manual_seed(1234)
    xt = d.q_sample(x0, torch.full((3,), t))
    abar = d.alphas_cumprod[t].item()
    var = 1 - abar
    mean_se = math.sqrt(var / n)
    var_se = var * math.sqrt(2 / (n - 1))
    assert_close(xt.mean(1), math.sqrt(abar) * x0[:, 0], rtol=0, atol=5 * mean_se)
    assert_close(xt.var(1), torch.full((3,), var, **F64), rtol=0, atol=5 * var_se)


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_q_sample_matches_diffusers_add_noise(schedule):
    ours = GaussianDiffusion(1000, schedule="linear" if schedule == "linear" else "cosine")
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 3, 8, 8, generator=g).clamp(-1, 1)
    noise = torch.randn(6, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 17, 400, 998, 999])
    # atol: diffusers' float32 sqrt(1 - abar_1) is off by ~1e-4 relative (up to 4e-6 here); ours is float64-exact,
    # see test_q_sample_exact_formula_per_row_timesteps.
    torch.testing.assert_close(ours.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_predict_x0_inverts_q_sample(schedule):
    d = GaussianDiffusion(1000, schedule=schedule)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(8, 3, 4, 4, generator=g, **F64)
    noise = torch.randn(8, 3, 4, 4, generator=g, **F64)
    t = torch.tensor([0, 1, 2, 100, 500, 900, 998, 999])
    torch.testing.assert_close(d.predict_x0(d.q_sample(x0, t, noise), t, noise), x0, rtol=1e-9, atol=1e-9)
    # float32 stays accurate where sqrt(abar_t) is not tiny.
    t32 = torch.tensor([0, 1, 2, 100, 300, 400, 500, 600])
    x32, n32 = x0.float(), noise.float()
    torch.testing.assert_close(d.predict_x0(d.q_sample(x32, t32, n32), t32, n32), x32, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- loss


def test_loss_is_the_hand_computed_mse():
    T = 1000
    d = GaussianDiffusion(T)
    model = TinyEps()
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([5, 500, 999])
    _, abar = closed_form_linear(T, 1e-4, 0.02)
    a = torch.tensor(abar[t.numpy()], dtype=torch.float32)[:, None, None, None]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    expected = ((model(xt, t) - noise) ** 2).mean()
    got = d.loss(model, x0, t, noise)
    assert got.shape == ()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # The loss must depend on t (a model-independent sanity check that t is used).
    assert d.loss(model, x0, torch.tensor([900, 10, 300]), noise).item() != pytest.approx(got.item(), rel=1e-3)
    # Gradients flow to the model.
    got.backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0


def test_loss_draws_t_then_noise_from_the_generator():
    d = GaussianDiffusion(100, 1e-3, 0.1)
    model = TinyEps()
    x0 = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        got = d.loss(model, x0, generator=torch.Generator().manual_seed(6))
        g = torch.Generator().manual_seed(6)
        t = torch.randint(0, 100, (4,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        assert got.item() == pytest.approx(d.loss(model, x0, t, noise).item(), rel=1e-7)
        assert got.item() != pytest.approx(d.loss(model, x0, generator=torch.Generator().manual_seed(7)).item(),
                                           rel=1e-4)


def test_sample_timesteps_is_uniform_over_all_steps():
    d = GaussianDiffusion(10, 1e-3, 0.1)
    t = d.sample_timesteps(100_000, generator=torch.Generator().manual_seed(8))
    assert t.dtype == torch.long and t.min().item() == 0 and t.max().item() == 9
    counts = torch.bincount(t, minlength=10).double() / 100_000
    se = math.sqrt(0.1 * 0.9 / 100_000)
    assert (counts - 0.1).abs().max().item() < 5 * se

