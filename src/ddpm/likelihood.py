"""The variational bound of Ho et al. (2020, eq. 5) on -log p(x_0), term by term, in bits per dimension.

    L = L_T + sum_{t>1} L_{t-1} + L_0,   L_T = KL(q(x_T | x_0) || N(0, I)),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)),   L_0 = -log p_theta(x_0 | x_1)  (eq. 13).

Symbols carry the paper's index t = 1..T; tensors the code's 0..T-1, so code index i is the paper's t = i + 1: the
paper's L_{t-1} for t = 2..T is the KL at code index 1..T-1, the decoder L_0 is at code index 0 and L_T is the prior
KL of x_T. Every one of the T terms is computed (none is sampled, as improved-diffusion's ``calc_bpd_loop`` does),
each with its own draw of x_t ~ q(x_t | x_0). p_theta(x_{t-1} | x_t) = N(mu~(x_t, x0_hat), sigma_t^2) uses x0_hat
clipped to [-1, 1] and the model's own variance, beta_t ("fixed_large") or beta-tilde_t ("fixed_small"); the decoder
(t = 1, where beta-tilde_1 = 0) uses beta-tilde_2 = ``posterior_variance[1]`` for both, as Ho et al.'s code does.

All arithmetic after the network is float64. Nats become bits/dim by dividing by D ln 2, D = C * H * W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.distributed import amp_dtype, autocast
from ddpm.errors import ConfigError
from ddpm.samplers import Model, randn
from ddpm.schedules import NoiseSchedule, split_prediction

BIN_HALF_WIDTH = 1 / 255  # uint8 pixels on [-1, 1]: 256 levels 2/255 apart, each the centre of a bin 2/255 wide
EDGE = 0.999  # x below -EDGE or above EDGE is the first or last level: its bin is open to -inf or +inf


def normal_kl(mean1: torch.Tensor, var1: torch.Tensor, mean2: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) in nats, elementwise:
    (log var2 - log var1 + var1 / var2 + (mean1 - mean2)^2 / var2 - 1) / 2."""
    var1, var2 = torch.as_tensor(var1, dtype=mean1.dtype), torch.as_tensor(var2, dtype=mean1.dtype)
    return 0.5 * (var2.log() - var1.log() + var1 / var2 + (mean1 - mean2).square() / var2 - 1)


def _log_ndtr_difference(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for upper > lower, accurate in both tails: above the median it is computed as
    log(Phi(-lower) - Phi(-upper)), so that neither difference is of two numbers close to 1."""
    flip = lower > 0
    a = torch.where(flip, -upper, lower)
    b = torch.where(flip, -lower, upper)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log(-torch.expm1(log_a - log_b))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log p(x) in nats, elementwise, of the decoder of Ho et al. (2020, eq. 13): the mass of N(mean, var) on the bin
    [x - 1/255, x + 1/255] of the pixel level x in {-1, -1 + 2/255, ..., 1}, with the bin of -1 open down to -inf
    and that of 1 open up to +inf, so that the 256 bins' masses sum to 1."""
    std = torch.as_tensor(var, dtype=mean.dtype).sqrt()
    upper = (x - mean + BIN_HALF_WIDTH) / std
    lower = (x - mean - BIN_HALF_WIDTH) / std
    inner = _log_ndtr_difference(upper, lower)
    return torch.where(x < -EDGE, torch.special.log_ndtr(upper),
                       torch.where(x > EDGE, torch.special.log_ndtr(-lower), inner))


def reverse_variance(schedule: NoiseSchedule, variance: str | None = None) -> torch.Tensor:
    """sigma_t^2 of p_theta(x_{t-1} | x_t), element i for the paper's t = i + 1 (float64, length T): beta_t for
    "fixed_large", beta-tilde_t for "fixed_small" (``variance``, default: the schedule's own), and beta-tilde_2 at the
    decoder (element 0, the paper's t = 1) for both: beta-tilde_1 = 0 would make the decoder a point mass."""
    variance = schedule.variance if variance is None else variance
    sigma2 = (schedule.betas if variance == "fixed_large" else schedule.posterior_variance).clone()
    sigma2[0] = schedule.posterior_variance[1]
    return sigma2


def terms_under_variance(terms_bpd: torch.Tensor | Sequence[float], schedule: NoiseSchedule, source: str, target: str) -> torch.Tensor:
    """The bound's terms (bits/dim, last axis = code timestep t, as ``BoundSummary.terms_bpd`` or per image) with the
    reverse variance ``target`` instead of ``source``, exactly and without the network.

    The variance is not learnt, so it does not change the network's mean mu_theta; per dimension (eq. 8's KL between
    Gaussians, with q's variance beta-tilde_t and S the summed squared distance of the means)

        L_{t-1}(sigma^2) = D k(sigma^2) + S / (2 sigma^2),   k(sigma^2) = (log(sigma^2 / beta-tilde_t) + beta-tilde_t / sigma^2 - 1) / 2,

    so S follows from the terms under one variance and gives those under the other: a constant k (0 for
    beta-tilde_t) plus the mean error rescaled by sigma_source^2 / sigma_target^2. The decoder (code index 0) and the
    prior use beta-tilde_2 and no variance at all either way, so they are unchanged. The identity holds image by image
    and for means over images, since it is linear."""
    beta_tilde = schedule.posterior_variance[1:]
    s1, s2 = reverse_variance(schedule, source)[1:], reverse_variance(schedule, target)[1:]

    def k(sigma2: torch.Tensor) -> torch.Tensor:  # in bits/dim
        return 0.5 * (torch.log(sigma2 / beta_tilde) + beta_tilde / sigma2 - 1) / math.log(2)

    terms = torch.as_tensor(terms_bpd, dtype=torch.float64).clone()
    terms[..., 1:] = k(s2) + (s1 / s2) * (terms[..., 1:] - k(s1))
    return terms


def bound_weight(schedule: NoiseSchedule, variance: str | None = None) -> torch.Tensor:
    """lambda_t of Ho et al. (2020, eq. 12), element i for the paper's t = i + 1 (float64, length T): the weight
    that turns the squared noise error into the bound's KL term,

        L_{t-1} - C = lambda_t E||eps - eps_theta(x_t, t)||^2,   lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha-bar_t)),

    per pixel (eq. 8's squared distance of the means, with both means written in eps by eq. 10-11). L_simple (eq. 14)
    sets every lambda_t to 1. sigma_t^2 is ``variance`` (default: the schedule's own), as given: beta_t ("fixed_large"),
    where lambda_t = beta_t / (2 alpha_t (1 - alpha-bar_t)), or beta-tilde_t ("fixed_small"). At t = 1 (element 0) the
    bound's term is the decoder L_0, of which lambda_1 weighs the Gaussian approximation (Ho et al. sec. 3.4); with
    "fixed_small" it is infinite there (beta-tilde_1 = 0)."""
    variance = schedule.variance if variance is None else variance
    sigma2 = schedule.betas if variance == "fixed_large" else schedule.posterior_variance
    return schedule.betas.square() / (2 * sigma2 * schedule.alphas * (1 - schedule.alphas_cumprod))


def check_bound_schedule(schedule: NoiseSchedule) -> None:
    """The bound needs T >= 2: at T = 1 the decoder's variance beta-tilde_2 does not exist."""
    if schedule.timesteps < 2:
        raise ConfigError(f"the variational bound needs a model with at least 2 timesteps (its decoder variance is "
                          f"beta-tilde_2, the posterior variance of t = 2), this one has T = {schedule.timesteps}")


def prior_kl(schedule: NoiseSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in nats per image (float64), x_T being the code's index T - 1."""
    abar = schedule.alphas_cumprod[-1].item()
    x0 = x0.double()
    kl = normal_kl(math.sqrt(abar) * x0, torch.tensor(1 - abar, dtype=torch.float64), torch.zeros_like(x0),
                   torch.tensor(1.0, dtype=torch.float64))
    return kl.flatten(1).sum(1)


@dataclass
class BoundTerms:
    """The bound of a batch of images, in nats per image (float64, on the CPU).

    ``terms[:, t]`` is the term at the code's timestep t: the decoder's -log p_theta(x_0 | x_1) at t = 0, the KL
    L_{t} of the paper's numbering (its x_{t+1} to x_t step) at t >= 1. ``sq_error[:, t]`` is the summed squared
    error of the clipped x0_hat predicted from x_t, on the [-1, 1] scale, for the rate-distortion curve.
    """

    prior: torch.Tensor  # (B,)
    terms: torch.Tensor  # (B, T)
    sq_error: torch.Tensor  # (B, T)
    dims: int  # D = C * H * W

    @property
    def total(self) -> torch.Tensor:
        """The bound L in nats per image."""
        return self.prior + self.terms.sum(1)


def _model_dtype(model: Model) -> torch.dtype:
    params = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    return params.dtype if params is not None else torch.float32


@torch.no_grad()
def bound_terms(model: Model, diffusion: GaussianDiffusion, x0: torch.Tensor,
                generator: torch.Generator | Sequence[torch.Generator] | None = None, amp: bool = False,
                progress: Callable[[int], None] | None = None) -> BoundTerms:
    """Every term of the bound for images ``x0`` in [-1, 1] (on the pixel grid), from T - 1 down to 0.

    x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps draws eps from ``generator`` (a list with one per
    image makes an image's terms independent of its batch). The network sees x_t in its own dtype (under
    autocast with ``amp``); everything after it is float64. ``progress(t)`` is called after each timestep.
    """
    check_bound_schedule(diffusion)
    T, B = diffusion.timesteps, x0.shape[0]
    device, dtype = x0.device, _model_dtype(model)
    x0 = x0.double()
    dims = x0[0].numel()
    variance = reverse_variance(diffusion)
    amp_type = amp_dtype(device) if amp else None
    terms = torch.zeros(B, T, dtype=torch.float64)
    sq_error = torch.zeros(B, T, dtype=torch.float64)
    for t in reversed(range(T)):
        abar = diffusion.alphas_cumprod[t].item()
        alpha, sigma = math.sqrt(abar), math.sqrt(1 - abar)
        eps = randn(x0.shape, generator, device).double()
        x_t = alpha * x0 + sigma * eps
        t_batch = torch.full((B,), t, device=device, dtype=torch.long)
        with autocast(device, amp_type):
            output = model(x_t.to(dtype), t_batch)
        _, x0_hat = split_prediction(output.double(), x_t, alpha, sigma, diffusion.prediction)
        x0_hat = x0_hat.clamp(-1, 1)
        # p_theta's mean is the posterior mean of eq. 7 with x0_hat in place of x_0.
        coef1, coef2 = diffusion.posterior_mean_coef1[t].item(), diffusion.posterior_mean_coef2[t].item()
        mean = coef1 * x0_hat + coef2 * x_t
        var = variance[t].to(device)
        if t == 0:
            nats = -discretized_gaussian_log_likelihood(x0, mean, var)
        else:
            true_mean = coef1 * x0 + coef2 * x_t
            nats = normal_kl(true_mean, diffusion.posterior_variance[t].to(device), mean, var)
        terms[:, t] = nats.flatten(1).sum(1).cpu()
        sq_error[:, t] = (x0_hat - x0).square().flatten(1).sum(1).cpu()
        if progress is not None:
            progress(t)
    return BoundTerms(prior_kl(diffusion, x0).cpu(), terms, sq_error, dims)


def to_bits_per_dim(nats: torch.Tensor, dims: int) -> torch.Tensor:
    """Nats per image -> bits per dimension: / (D ln 2)."""
    return nats / (dims * math.log(2))


@dataclass
class BoundSummary:
    """The bound over a set of images, in bits/dim: the mean and its standard error over images, the three parts,
    each term's mean over images (length T, index = code timestep) and the RMSE of x0_hat on the 0-255 scale."""

    bits_per_dim: float
    stderr: float
    prior_bpd: float
    decoder_bpd: float
    kl_bpd: float  # sum of the L_{t-1} for t = 2..T (the code's t = 1..T-1)
    terms_bpd: list[float]
    rmse_255: list[float]
    num_images: int

    def rate_bpd(self) -> list[float]:
        """The rate of progressive coding (Ho et al. 2020, sec. 4.3) once x_t is received, for each code t: L_T plus
        the KL terms of the steps down to x_t, i.e. prior + sum_{s > t} terms[s] (the decoder is not included)."""
        rate, total = [0.0] * len(self.terms_bpd), self.prior_bpd
        for t in reversed(range(len(self.terms_bpd))):
            rate[t] = total
            if t > 0:
                total += self.terms_bpd[t]
        return rate

    def to_dict(self) -> dict:
        return {"bits_per_dim": self.bits_per_dim, "stderr": self.stderr, "prior_bpd": self.prior_bpd,
                "decoder_bpd": self.decoder_bpd, "kl_bpd": self.kl_bpd, "num_images": self.num_images,
                "terms_bpd": self.terms_bpd, "rate_bpd": self.rate_bpd(), "rmse_255": self.rmse_255}


def summarize(parts: Sequence[BoundTerms]) -> BoundSummary:
    """The :class:`BoundSummary` of batches of :func:`bound_terms`."""
    dims = parts[0].dims
    prior = torch.cat([p.prior for p in parts])
    terms = torch.cat([p.terms for p in parts])
    sq_error = torch.cat([p.sq_error for p in parts])
    per_image = to_bits_per_dim(prior + terms.sum(1), dims)
    n = len(per_image)
    stderr = per_image.std().item() / math.sqrt(n) if n > 1 else float("nan")
    terms_bpd = to_bits_per_dim(terms.mean(0), dims)
    rmse = (sq_error.mean(0) / dims).sqrt() * 127.5
    return BoundSummary(per_image.mean().item(), stderr, to_bits_per_dim(prior.mean(), dims).item(),
                        terms_bpd[0].item(), terms_bpd[1:].sum().item(), terms_bpd.tolist(), rmse.tolist(), n)
