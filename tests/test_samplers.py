"""The samplers of :mod:`ddpm.samplers` against diffusers' schedulers as a test-only oracle.

Every comparison uses a fixed deterministic eps-model and the same noise on both sides (both libraries draw with
``torch.randn(shape, generator=g)`` in the same order, which the tests rely on and so also check).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from ddpm import samplers
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.samplers import ddim_sample, ddpm_sample, dpm_solver_pp_2m, sampling_timesteps
from ddpm.spacing import time_grid

# The oracle comparisons at small T use short explicit beta ranges that stop short of noise on purpose; the warning
# about them is tested in test_diffusion.py.
pytestmark = pytest.mark.filterwarnings("ignore::ddpm.schedules.ScheduleWarning")

SHAPE = (2, 3, 8, 8)


class ToyEps(torch.nn.Module):
    """A fixed eps-model: tanh of a seeded 3x3 convolution plus a function of t, so that every pixel depends on
    its neighbours, on the timestep and on nothing else in the batch."""

    def __init__(self, channels: int = 3, seed: int = 0, scale: float = 1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(channels, channels, 3, 3, generator=g) / 3, requires_grad=False)
        self.phase = torch.nn.Parameter(torch.randn(channels, generator=g), requires_grad=False)
        self.scale = scale

    def forward(self, x, t):
        t = torch.as_tensor(t).reshape(-1).to(x.dtype)
        h = torch.nn.functional.conv2d(x, self.weight.to(x.dtype), padding=1)
        return self.scale * (torch.tanh(h) + 0.3 * torch.sin(0.01 * t[:, None, None, None] + self.phase[:, None, None]))


class NearOptimalEps(torch.nn.Module):
    """eps close to the optimum for N(0, 1) data, sqrt(1 - abar_t) x_t, plus a bounded perturbation scaled by
    sqrt(abar_t): its x_0 predictions stay O(1), which suits the unclipped DPM-Solver++ comparison."""

    def __init__(self, diffusion: GaussianDiffusion, seed: int = 0):
        super().__init__()
        self.abar = diffusion.alphas_cumprod.float()
        self.toy = ToyEps(seed=seed)

    def forward(self, x, t):
        t = torch.as_tensor(t).reshape(-1).long().expand(x.shape[0])
        a = self.abar[t][:, None, None, None]
        return (1 - a).sqrt() * x + 0.5 * a.sqrt() * self.toy(x, t)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def diffusers_loop(scheduler, model, x, timesteps, **step_kwargs):
    for t in timesteps:
        t_int = int(t)
        eps = model(x, torch.full((x.shape[0],), t_int, dtype=torch.long))
        x = scheduler.step(eps, t_int, x, **step_kwargs).prev_sample
    return x


def record_x0(store: list):
    return lambda i, t, x, x0: store.append((t, x0.abs().max().item()))


# ---------------------------------------------------------------- timesteps


def test_sampling_timesteps_edge_cases():
    assert sampling_timesteps(1000, 1) == [999]
    assert sampling_timesteps(1000, 2) == [999, 0]
    assert sampling_timesteps(10, 10) == list(range(9, -1, -1))
    assert sampling_timesteps(1, 1) == [0]
    assert sampling_timesteps(1000, 4) == [999, 666, 333, 0]
    for bad in (0, -1, 1001):
        with pytest.raises(ConfigError):
            sampling_timesteps(1000, bad)
    for bad in (0, 10, 11):  # DPM-Solver++ takes at most T - 1 steps (distinct timesteps of 1 .. T-1)
        with pytest.raises(ConfigError):
            dpm_solver_pp_2m(ToyEps(), GaussianDiffusion(10, 1e-3, 0.1), torch.zeros(SHAPE), steps=bad)
    with pytest.raises(ConfigError):
        samplers.sample(ToyEps(), GaussianDiffusion(10, 1e-3, 0.1), torch.zeros(SHAPE), sampler="euler")
    with pytest.raises(ConfigError):
        ddim_sample(ToyEps(), GaussianDiffusion(10, 1e-3, 0.1), torch.zeros(SHAPE), [9, 0], eta=-0.1)


@pytest.mark.parametrize("T", [50, 100, 1000])
def test_sampling_timesteps_are_the_rounded_linspace(T):
    """Strictly decreasing, T-1 first and 0 last, each the exact rational i (T-1)/(steps-1) rounded half to even."""
    from fractions import Fraction

    for steps in range(2, T + 1, 1 if T <= 100 else 7):
        ts = sampling_timesteps(T, steps)
        assert len(ts) == steps and ts[0] == T - 1 and ts[-1] == 0
        assert all(a > b for a, b in zip(ts, ts[1:]))
        assert ts == [round(Fraction(i * (T - 1), steps - 1)) for i in reversed(range(steps))]


@pytest.mark.parametrize("T, steps", [(50, 50), (50, 10), (100, 7), (1000, 50), (1000, 100), (1000, 250)])
def test_sampling_timesteps_match_diffusers_linspace(T, steps):
    ddim = DDIMScheduler(num_train_timesteps=T, timestep_spacing="linspace")
    ddim.set_timesteps(steps)
    assert ddim.timesteps.tolist() == sampling_timesteps(T, steps)
    dpm_steps = min(steps, T - 1)
    dpm = DPMSolverMultistepScheduler(num_train_timesteps=T)
    dpm.set_timesteps(dpm_steps)
    seen = []
    d = GaussianDiffusion(T)
    dpm_solver_pp_2m(ToyEps(), d, torch.zeros(1, 3, 2, 2), dpm_steps, callback=lambda i, t, x, x0: seen.append(t))
    assert seen == dpm.timesteps.tolist()


@pytest.mark.parametrize("T", [2, 7, 50])
def test_dpm_solver_accepts_every_step_count_up_to_t_minus_one(T):
    """Regression: steps = T used to repeat a timestep (h = 0) and die with ZeroDivisionError; the default of
    ``sample`` (min(50, T)) hit it for every T <= 50."""
    d = GaussianDiffusion(T, 1e-3, 0.5)
    for steps in sorted({1, 2, T // 2, T - 2, T - 1} & set(range(1, T))):
        seen = []
        out = dpm_solver_pp_2m(ToyEps(), d, torch.randn(1, 3, 4, 4, generator=gen(steps)), steps,
                               callback=lambda i, t, x, x0: seen.append(t))
        assert len(set(seen)) == steps == len(seen) and seen[0] == T - 1 and min(seen) >= 1
        assert torch.isfinite(out).all()
    seen = []
    d.sample(ToyEps(), (1, 3, 4, 4), "dpm++2m", generator=gen(0), callback=lambda i, t, x, x0: seen.append(t))
    assert len(seen) == min(50, T - 1)


# ---------------------------------------------------------------- DDPM


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_ddpm_full_matches_diffusers(variance):
    T, b0, b1 = 50, 1e-3, 0.2
    d = GaussianDiffusion(T, b0, b1, variance=variance)
    model = ToyEps()
    clipped = []
    ours = d.sample(model, SHAPE, "ddpm", generator=gen(10), callback=record_x0(clipped))
    assert len(clipped) == T and [t for t, _ in clipped] == list(range(T - 1, -1, -1))
    assert max(m for _, m in clipped) == 1.0  # clipping engaged
    ref = DDPMScheduler(num_train_timesteps=T, beta_start=b0, beta_end=b1, beta_schedule="linear",
                        variance_type=variance, clip_sample=True)
    ref.set_timesteps(T)
    g = gen(10)
    x = torch.randn(SHAPE, generator=g)
    theirs = diffusers_loop(ref, model, x, ref.timesteps, generator=g)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # Both consumed the generator identically: T-1 step draws after x_T.
    ours_g = gen(10)
    d.sample(model, SHAPE, "ddpm", generator=ours_g)
    assert torch.equal(torch.randn(3, generator=ours_g), torch.randn(3, generator=g))


@pytest.mark.parametrize("T", [1000, 100])
@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_ddpm_respaced_matches_diffusers_custom_timesteps(variance, T):
    """On the default schedule, which at T = 100 (the tiny preset) is improved-diffusion's scaled 1e-3 -> 0.2."""
    steps = 25
    d = GaussianDiffusion(T, variance=variance)
    model = ToyEps()
    ts = sampling_timesteps(T, steps)
    ours = d.sample(model, SHAPE, "ddpm", steps=steps, generator=gen(11))
    ref = DDPMScheduler(num_train_timesteps=T, beta_start=1000 / T * 1e-4, beta_end=1000 / T * 0.02,
                        variance_type=variance, clip_sample=True)
    ref.set_timesteps(timesteps=ts)
    g = gen(11)
    theirs = diffusers_loop(ref, model, torch.randn(SHAPE, generator=g), ts, generator=g)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_ddpm_without_clipping_matches_hand_loop():
    """Algorithm 2 written out with the closed-form schedule in float64 (no clipping, fixed_large)."""
    T, b0, b1 = 20, 1e-3, 0.3
    d = GaussianDiffusion(T, b0, b1)
    model = ToyEps(scale=0.5)
    ours = d.sample(model, SHAPE, "ddpm", clip_denoised=False, generator=gen(12))
    betas = np.linspace(b0, b1, T)
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    g = gen(12)
    x = torch.randn(SHAPE, generator=g).double()
    for t in reversed(range(T)):
        eps = model(x.float(), torch.full((2,), t)).double()
        z = torch.randn(SHAPE, generator=g).double() if t > 0 else 0
        x = (x - betas[t] / math.sqrt(1 - abar[t]) * eps) / math.sqrt(alphas[t]) + math.sqrt(betas[t]) * z
    torch.testing.assert_close(ours.double(), x, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- DDIM


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_full_matches_diffusers(eta):
    """steps = T, the one case where diffusers' DDIM step (prev = t - T // steps) lands on the next linspace
    timestep; respaced DDIM is checked against a respaced diffusers schedule below."""
    T, b0, b1 = 50, 1e-3, 0.2
    d = GaussianDiffusion(T, b0, b1)
    model = ToyEps()
    seen = []
    ours = d.sample(model, SHAPE, "ddim", steps=T, eta=eta, generator=gen(20), callback=record_x0(seen))
    assert max(m for _, m in seen) == 1.0  # clipping engaged
    ref = DDIMScheduler(num_train_timesteps=T, beta_start=b0, beta_end=b1, beta_schedule="linear",
                        timestep_spacing="linspace", clip_sample=True, set_alpha_to_one=True, steps_offset=0)
    ref.set_timesteps(T)
    assert ref.timesteps.tolist() == sampling_timesteps(T, T) == [t for t, _ in seen]
    g = gen(20)
    theirs = diffusers_loop(ref, model, torch.randn(SHAPE, generator=g), ref.timesteps, eta=eta,
                            use_clipped_model_output=True, generator=g)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [1000, 100])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_respaced_matches_diffusers_on_the_respaced_schedule(eta, T):
    """DDIM on ``sampling_timesteps(T, steps)`` equals diffusers' DDIM on the respaced chain whose alpha-bars are
    those of the chosen timesteps (Nichol & Dhariwal 2021, sec. 4), with the model seeing the original t."""
    steps = 10
    d = GaussianDiffusion(T)
    model = ToyEps()
    ts = sampling_timesteps(T, steps)
    ours = d.sample(model, SHAPE, "ddim", steps=steps, eta=eta, generator=gen(21))
    ascending = ts[::-1]
    abar = d.alphas_cumprod[ascending]
    respaced_betas = 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    ref = DDIMScheduler(num_train_timesteps=steps, trained_betas=respaced_betas.numpy(), timestep_spacing="linspace",
                        clip_sample=True, set_alpha_to_one=True, steps_offset=0)
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == list(range(steps - 1, -1, -1))
    g = gen(21)
    x = torch.randn(SHAPE, generator=g)
    for k in ref.timesteps.tolist():
        eps = model(x, torch.full((2,), ascending[k]))
        x = ref.step(eps, k, x, eta=eta, use_clipped_model_output=True, generator=g).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_ddim_eta_one_is_ddpm_with_posterior_variance():
    """Song et al. (2021), eq. 16: eta = 1 gives the DDPM posterior step, so with the same noise the two agree."""
    d = GaussianDiffusion(200, 5e-4, 0.1, variance="fixed_small")
    model = ToyEps()
    for steps in (200, 40):
        ts = sampling_timesteps(200, steps)
        x_T = torch.randn(SHAPE, generator=gen(22))
        a = ddim_sample(model, d, x_T, ts, eta=1.0, generator=gen(23))
        b = ddpm_sample(model, d, x_T, ts, generator=gen(23))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_ddim_eta_zero_is_deterministic_and_uses_no_noise():
    d = GaussianDiffusion(1000)
    model = ToyEps()
    x_T = torch.randn(SHAPE, generator=gen(24))
    g = gen(0)
    a = samplers.sample(model, d, x_T, "ddim", steps=20, generator=g)
    assert torch.equal(torch.randn(4, generator=g), torch.randn(4, generator=gen(0)))
    b = samplers.sample(model, d, x_T, "ddim", steps=20, generator=gen(99))
    assert torch.equal(a, b)


# ---------------------------------------------------------------- DPM-Solver++(2M)


@pytest.mark.parametrize("T, steps", [(1000, 10), (1000, 20), (100, 20)])
def test_dpm_solver_pp_2m_matches_diffusers(T, steps):
    """Lu et al. (2022), Algorithm 2: first-order first step, then the 2M update, and a final first-order step to
    sigma = 0 (diffusers' ``final_sigmas_type="zero"``), all with diffusers' defaults. (Its ``lower_order_final``
    only lowers third-order steps to second order below 15 steps, which does not touch solver_order=2.) On the
    default schedule, at T = 100 improved-diffusion's scaled 1e-3 -> 0.2."""
    d = GaussianDiffusion(T)
    model = NearOptimalEps(d)
    x_T = torch.randn(SHAPE, generator=gen(30))
    ours = d.sample(model, SHAPE, "dpm++2m", steps=steps, clip_denoised=False, x_T=x_T.clone())
    ref = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_start=1000 / T * 1e-4, beta_end=1000 / T * 0.02,
                                      beta_schedule="linear")
    assert ref.config.algorithm_type == "dpmsolver++" and ref.config.solver_order == 2
    assert ref.config.timestep_spacing == "linspace" and ref.config.final_sigmas_type == "zero"
    assert ref.config.solver_type == "midpoint" and not ref.config.thresholding
    ref.set_timesteps(steps)
    theirs = diffusers_loop(ref, model, x_T.clone(), ref.timesteps)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # The comparison discriminates: a first-order solver (DDIM) lands measurably elsewhere.
    ddim = ddim_sample(model, d, x_T.clone(), sampling_timesteps(T, steps), clip_denoised=False)
    assert (ddim - ours).abs().max().item() > 1e-2


def test_dpm_solver_one_step_returns_the_first_x0_prediction():
    d = GaussianDiffusion(1000)
    model = ToyEps()
    x_T = torch.randn(SHAPE, generator=gen(31))
    out = dpm_solver_pp_2m(model, d, x_T, steps=1, clip_denoised=False)
    abar = d.alphas_cumprod[999].item()
    expected = (x_T - math.sqrt(1 - abar) * model(x_T, torch.full((2,), 999))) / math.sqrt(abar)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- per-image seeds


@pytest.mark.parametrize("sampler, kwargs", [("ddpm", dict(steps=None)), ("ddpm", dict(steps=20)),
                                             ("ddim", dict(steps=20, eta=0.0)), ("ddim", dict(steps=20, eta=0.8)),
                                             ("dpm++2m", dict(steps=15))])
def test_per_image_generators_make_images_independent_of_the_batch(sampler, kwargs):
    d = GaussianDiffusion(100, 1e-3, 0.1)
    model = ToyEps()
    shape = (3, 8, 8)
    batch = d.sample(model, (7, *shape), sampler, generator=[gen(40 + i) for i in range(7)], **kwargs)
    for i in (0, 3, 6):
        alone = d.sample(model, (1, *shape), sampler, generator=[gen(40 + i)], **kwargs)
        # Not bitwise: conv2d may pick another kernel for a batch of 7, which moves the last bits (~1e-6).
        torch.testing.assert_close(batch[i:i + 1], alone, rtol=0, atol=1e-5)
    # A single generator for the batch is not the same stream, so image 3 differs (the test can fail).
    single = d.sample(model, (7, *shape), sampler, generator=gen(40), **kwargs)
    assert not torch.allclose(single[3], batch[3], atol=1e-3)


def test_randn_with_generator_list_stacks_per_image_draws():
    out = samplers.randn((3, 2, 4), [gen(5), gen(6), gen(7)], "cpu")
    for i in range(3):
        assert torch.equal(out[i], torch.randn((2, 4), generator=gen(5 + i)))
    assert torch.equal(samplers.randn((3, 2), gen(1), "cpu"), torch.randn((3, 2), generator=gen(1)))
    with pytest.raises(ValueError):
        samplers.randn((2, 2), [gen(0)] * 3, "cpu")


def test_sample_dispatch_defaults():
    d = GaussianDiffusion(60, 1e-3, 0.2)
    model = ToyEps()
    calls = {}
    for name in ("ddpm", "ddim", "dpm++2m"):
        seen = []
        d.sample(model, (1, 3, 4, 4), name, generator=gen(0), callback=lambda i, t, x, x0: seen.append(t))
        calls[name] = seen
    assert calls["ddpm"] == list(range(59, -1, -1))
    assert calls["ddim"] == sampling_timesteps(60, 50)
    assert len(calls["dpm++2m"]) == 50 and calls["dpm++2m"][0] == 59 and calls["dpm++2m"][-1] == 1


def test_sample_variance_flag_equals_a_model_trained_with_it(cli, tmp_path):
    """``ddpm sample --variance``: the reverse variance is not learnt, so the same weights saved with fixed_small
    and sampled as they are, or saved with fixed_large and sampled with --variance fixed_small, draw the same images."""
    from conftest import write_model_file

    large = write_model_file(tmp_path / "large.safetensors", {"timesteps": 6, "schedule": "cosine"})
    small = write_model_file(tmp_path / "small.safetensors", {"timesteps": 6, "schedule": "cosine",
                                                              "variance": "fixed_small"})
    images = {}
    for name, model, flags in (("large", large, []), ("override", large, ["--variance", "fixed_small"]),
                               ("small", small, [])):
        npz = tmp_path / f"{name}.npz"
        code, out, err = cli("sample", "--load-model", model, "--num-samples", "2", "--sampler", "ddpm",
                             "--npz", npz, "--device", "cpu", *flags)
        assert code == 0, err
        images[name] = np.load(npz)["arr_0"]
        assert ("fixed_small variance" if name != "large" else "fixed_large variance") in out
    np.testing.assert_array_equal(images["override"], images["small"])
    assert not np.array_equal(images["large"], images["small"])


# ---------------------------------------------------------------- the multistep samplers against closed forms

MU, STD = 0.3, 0.5  # one-dimensional Gaussian data N(MU, STD^2)


class IdealGaussian(torch.nn.Module):
    """The exact E[x_0 | x_t] of Gaussian data, mu + alpha s^2 (x_t - alpha mu) / (alpha^2 s^2 + sigma^2), returned
    as eps, x_0 or v: a network trained to perfection on that data."""

    def __init__(self, diffusion: GaussianDiffusion):
        super().__init__()
        self.abar, self.prediction = diffusion.alphas_cumprod.double(), diffusion.prediction

    def forward(self, x, t):
        a2 = self.abar[t].view(-1, 1, 1, 1).to(x.dtype)
        a, sigma = a2.sqrt(), (1 - a2).sqrt()
        x0 = MU + a * STD**2 * (x - a * MU) / (a2 * STD**2 + sigma**2)
        eps = (x - a * x0) / sigma
        return {"eps": eps, "x0": x0, "v": a * eps - sigma * x0}[self.prediction]


def exact_flow(diffusion: GaussianDiffusion, x_T: torch.Tensor) -> torch.Tensor:
    """Where the probability-flow ODE takes x_T for Gaussian data: every marginal is Gaussian, N(alpha mu, alpha^2
    s^2 + sigma^2), and the ODE keeps each point's standardised value, so x_0 = mu + s (x_T - alpha_T mu) / sqrt(...)."""
    a2 = diffusion.alphas_cumprod[-1].double()
    return MU + STD * (x_T - a2.sqrt() * MU) / (a2 * STD**2 + 1 - a2).sqrt()


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
def test_ipndm_matches_gaussian_data_with_ten_calls(prediction, spacing):
    """iPNDM's fourth-order steps follow the ODE: with 10 calls its samples have the data's mean and std within 10%,
    and their errors against the exact flow are at most half of DDIM's with the same calls and spacing."""
    d = GaussianDiffusion(1000, prediction=prediction)
    model = IdealGaussian(d)
    x_T = torch.randn(20_000, 1, 1, 1, generator=gen(0), dtype=torch.float64)
    exact = exact_flow(d, x_T)
    errors = {}
    for name in ("ipndm", "ddim"):
        out = samplers.sample(model, d, x_T.clone(), name, 10, clip_denoised=False, spacing=spacing)
        errors[name] = (abs(out.mean() - exact.mean()).item(), abs(out.std() / exact.std() - 1).item())
        if name == "ipndm":
            assert abs(out.mean().item() - MU) < 0.1 * MU and abs(out.std().item() / STD - 1) < 0.1
    assert errors["ipndm"][1] <= 0.5 * errors["ddim"][1]
    assert errors["ipndm"][0] <= max(0.5 * errors["ddim"][0], 1e-3)


@pytest.mark.parametrize("name", ["dpm++2m", "dpm++3m", "ipndm"])
def test_multistep_samplers_converge_to_the_exact_flow(name):
    """More steps, smaller error: at 50 calls every multistep sampler lands within 1% of the exact ODE map."""
    d = GaussianDiffusion(1000)
    x_T = torch.randn(4000, 1, 1, 1, generator=gen(1), dtype=torch.float64)
    exact = exact_flow(d, x_T)
    out = samplers.sample(IdealGaussian(d), d, x_T.clone(), name, 50, clip_denoised=False, spacing="logsnr")
    assert (out - exact).abs().max().item() < 0.01 * exact.abs().max().item()


@pytest.mark.parametrize("T, steps", [(1000, 10), (1000, 20), (100, 8)])
def test_dpm_solver_pp_3m_matches_diffusers(T, steps):
    """DPM-Solver++(3M) against diffusers' ``DPMSolverMultistepScheduler(solver_order=3)``: warm-up orders 1 and 2,
    the step to sigma = 0 first order and, below 15 steps, the one before it second order (lower_order_final)."""
    d = GaussianDiffusion(T)
    model = NearOptimalEps(d)
    x_T = torch.randn(SHAPE, generator=gen(32))
    ours = d.sample(model, SHAPE, "dpm++3m", steps=steps, clip_denoised=False, x_T=x_T.clone())
    ref = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_start=1000 / T * 1e-4, beta_end=1000 / T * 0.02,
                                      beta_schedule="linear", solver_order=3)
    assert ref.config.lower_order_final and ref.config.final_sigmas_type == "zero"
    ref.set_timesteps(steps)
    theirs = diffusers_loop(ref, model, x_T.clone(), ref.timesteps)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    second = d.sample(model, SHAPE, "dpm++2m", steps=steps, clip_denoised=False, x_T=x_T.clone())
    assert (second - ours).abs().max().item() > 1e-3  # the third-order terms matter, so the test can fail


def test_ipndm_orders_are_adams_bashforth():
    """Each row of weights sums to 1 (a constant eps is extrapolated exactly) and integrates t^k exactly up to its
    order, the defining property of Adams-Bashforth: sum_j w_j (-j)^k = 1 / (k + 1) over one unit step."""
    for order, weights in samplers.ADAMS_BASHFORTH.items():
        for k in range(order):
            assert sum(w * (-j) ** k for j, w in enumerate(weights)) == pytest.approx(1 / (k + 1))


def test_ipndm_with_order_one_is_ddim():
    d = GaussianDiffusion(200, 1e-3, 0.1)
    x_T = torch.randn(SHAPE, generator=gen(33))
    grid = sampling_timesteps(200, 12)
    ours = samplers.ipndm(ToyEps(), d, x_T.clone(), grid, order=1, clip_denoised=False)
    ddim = ddim_sample(ToyEps(), d, x_T.clone(), grid, clip_denoised=False)
    torch.testing.assert_close(ours, ddim, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- guidance with every sampler

CLASS_MEANS, CLASS_STD = (-0.5, 0.5), 0.2


class TwoGaussians(torch.nn.Module):
    """The ideal class-conditional eps of data that is N(-0.5, 0.2^2) for class 0 and N(0.5, 0.2^2) for class 1,
    with label 2 ("no class") the exact eps of their even mixture."""

    num_classes = 2

    def __init__(self, diffusion: GaussianDiffusion):
        super().__init__()
        self.abar = diffusion.alphas_cumprod.double()

    def forward(self, x, t, labels):
        a2 = self.abar[t].view(-1, 1, 1, 1).to(x.dtype)
        a, var = a2.sqrt(), a2 * CLASS_STD**2 + 1 - a2
        posterior = [m + a * CLASS_STD**2 * (x - a * m) / var for m in CLASS_MEANS]
        w = torch.softmax(torch.stack([-(x - a * m) ** 2 / (2 * var) for m in CLASS_MEANS]), 0)
        label = labels.view(-1, 1, 1, 1)
        x0 = torch.where(label == 0, posterior[0],
                         torch.where(label == 1, posterior[1], w[0] * posterior[0] + w[1] * posterior[1]))
        return (x - a * x0) / (1 - a2).sqrt()


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_guidance_with_every_sampler_draws_the_class_or_the_mixture(name):
    """Scale 1 draws class 0 (mean -0.5, almost nothing past 0); scale 0 the mixture (mean 0, half past 0)."""
    d = GaussianDiffusion(100)
    model = TwoGaussians(d)
    n = 2000
    for scale, mean, past_zero in ((1.0, -0.5, 0.0), (0.0, 0.0, 0.5)):
        x = d.sample(model, (n, 1, 1, 1), name, steps=None if name == "ddpm" else 20, clip_denoised=False,
                     generator=[gen(i) for i in range(n)], labels=torch.zeros(n, dtype=torch.long),
                     guidance_scale=scale)
        assert abs(x.mean().item() - mean) < 0.03
        assert abs((x > 0).double().mean().item() - past_zero) < 0.04


# ---------------------------------------------------------------- the registry


def test_a_sampler_registered_outside_the_package_samples_everywhere(cli, tmp_path):
    """A new sampler is one function and one registration: diffusion.sample, `ddpm sample --sampler` and its
    --help take it, and it gets the spacing's grid."""
    from conftest import write_model_file

    seen = []

    def x0_at_first_step(model, diffusion, x_T, timesteps, clip_denoised, callback, **_):
        seen.append(list(timesteps))
        return samplers.ipndm(model, diffusion, x_T, timesteps[:1], 1, clip_denoised, callback)

    samplers.register_sampler("first-x0", samplers.Sampler(x0_at_first_step, "one step to x_0", default_steps=3))
    try:
        d = GaussianDiffusion(50, 1e-3, 0.2)
        out = d.sample(ToyEps(), SHAPE, "first-x0", generator=gen(0), spacing="quadratic")
        assert out.shape == SHAPE and seen[-1] == time_grid("quadratic", d, 3, call_at_zero=False)
        model = write_model_file(tmp_path / "m.safetensors", {"timesteps": 6, "schedule": "cosine"})
        code, out, err = cli("sample", "--load-model", model, "--num-samples", "2", "--sampler", "first-x0",
                             "--npz", tmp_path / "s.npz", "--device", "cpu")
        assert code == 0, err
        assert len(np.load(tmp_path / "s.npz")["arr_0"]) == 2 and len(seen) == 2  # the CLI called it too
        assert "first-x0: one step to x_0" in samplers.sampler_help()
        with pytest.raises(ValueError):
            samplers.register_sampler("first-x0", samplers.SAMPLERS["ddim"])
    finally:
        del samplers.SAMPLERS["first-x0"]
