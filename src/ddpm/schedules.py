"""Noise schedules: beta_t, alpha-bar_t and every per-timestep coefficient the forward process and the samplers use.

Notation follows Ho et al. (2020): beta_t is the variance added at step t, alpha_t = 1 - beta_t and
alpha-bar_t = prod_{s<=t} alpha_s. Timesteps are 0-based (t = 0 .. T-1), as in the authors' code.
Coefficients are kept in float64 and cast to the data's dtype where used, because 1 - alpha-bar_t is tiny for
small t and float32 loses it.

This module sits below the config and the samplers: it knows numbers, not flags, networks or sampling loops.
"""

from __future__ import annotations

import math
import warnings

import torch

from ddpm.errors import ConfigError, DDPMWarning

# Ho et al.'s linear range, chosen for T = 1000 steps (sec. 4).
HO_BETA_START, HO_BETA_END, HO_TIMESTEPS = 1e-4, 0.02, 1000
# Every sampler starts from x_T ~ N(0, I); past this alpha-bar_T, x_T keeps over sqrt(1e-3) = 3% of the image.
MAX_ALPHA_BAR_T = 1e-3
SCHEDULES = ("linear", "cosine")
VARIANCES = ("fixed_large", "fixed_small")
PREDICTIONS = ("eps", "x0", "v")  # what a network's output means, see split_prediction


class ScheduleWarning(DDPMWarning):
    """A noise schedule whose x_T still holds part of the image, so training and sampling disagree."""


def linear_beta_range(timesteps: int, beta_start: float | None = None,
                      beta_end: float | None = None) -> tuple[float, float]:
    """beta_1 and beta_T of the linear schedule over T = ``timesteps`` steps.

    An end left None is Ho et al.'s value for T = 1000 times 1000/T, improved-diffusion's
    ``get_named_beta_schedule("linear")`` (Nichol & Dhariwal 2021): sum_t beta_t is then 10.05 for every T, and
    alpha-bar_T <= exp(-sum_t beta_t) = 4.3e-5, so x_T is N(0, I) at any T; at T = 1000 the factor is exactly 1.
    A given end is used as it is, as diffusers' ``beta_start``/``beta_end`` are. Raises ConfigError unless
    0 < beta_1 < beta_T < 1.
    """
    scale = HO_TIMESTEPS / timesteps
    start = scale * HO_BETA_START if beta_start is None else beta_start
    end = scale * HO_BETA_END if beta_end is None else beta_end
    if not 0 < start < end < 1:
        unset = "" if beta_start is not None and beta_end is not None else (
            f" (unset, they are Ho et al.'s {HO_BETA_START:g} and {HO_BETA_END:g} times 1000/T = {scale:g}: give both, "
            "more --time-steps or --schedule cosine)")
        raise ConfigError(f"need 0 < --beta-start < --beta-end < 1, got {start:g} and {end:g}{unset}")
    return start, end


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """beta_t evenly spaced from beta_start to beta_end (Ho et al. 2020, sec. 4)."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """alpha-bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) * pi/2) (Nichol & Dhariwal 2021, eq. 17).

    beta_t = 1 - alpha-bar(t+1)/alpha-bar(t), clipped at ``max_beta`` to avoid the singularity at t = T.
    """
    def f(t: float) -> float:
        return math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


def split_prediction(output: torch.Tensor, x_t: torch.Tensor, alpha: float | torch.Tensor,
                     sigma: float | torch.Tensor, prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x_0) implied by a network ``output`` that means ``prediction``, at a step with alpha = sqrt(alpha-bar_t)
    and sigma = sqrt(1 - alpha-bar_t) (floats, or tensors that broadcast against ``x_t``).

    The three targets are one identity, x_t = alpha x_0 + sigma eps (Ho et al. 2020, eq. 4), with v = alpha eps -
    sigma x_0 (Salimans & Ho 2022, sec. 4); since alpha^2 + sigma^2 = 1, any one of eps, x_0, v and x_t gives the
    others:

    * ``"eps"``: x_0 = (x_t - sigma eps) / alpha;
    * ``"x0"``:  eps = (x_t - alpha x_0) / sigma;
    * ``"v"``:   x_0 = alpha x_t - sigma v,  eps = sigma x_t + alpha v.
    """
    if prediction == "eps":
        return output, (x_t - sigma * output) / alpha
    if prediction == "x0":
        return (x_t - alpha * output) / sigma, output
    if prediction == "v":
        return sigma * x_t + alpha * output, alpha * x_t - sigma * output
    raise ConfigError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def prediction_target(x0: torch.Tensor, eps: torch.Tensor, alpha: float | torch.Tensor, sigma: float | torch.Tensor,
                      prediction: str) -> torch.Tensor:
    """What a network that predicts ``prediction`` should output for x_t = alpha x_0 + sigma eps: eps, x_0 or
    v = alpha eps - sigma x_0 (the inverse of :func:`split_prediction`)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    raise ConfigError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """The min-SNR-gamma loss weight of Hang et al. (2023, eq. 7 and sec. 3.4) for a network predicting
    ``prediction``: the x_0-loss weight min(SNR, gamma) expressed for each target, since ||eps - eps_hat||^2 =
    SNR ||x_0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||x_0 - x0_hat||^2:

    * ``"eps"``: min(SNR, gamma) / SNR;  * ``"x0"``: min(SNR, gamma);  * ``"v"``: min(SNR, gamma) / (SNR + 1).
    """
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    if prediction == "v":
        return clipped / (snr + 1)
    raise ConfigError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


class NoiseSchedule:
    """beta_t of a named schedule with everything derived from it, the reverse-process variance choice and what the
    network's output means (``prediction``: eps, x0 or v, see :func:`split_prediction`).

    The samplers read only this; :class:`ddpm.diffusion.GaussianDiffusion` adds the forward process and the loss.
    """

    def __init__(self, timesteps: int = 1000, beta_start: float | None = None, beta_end: float | None = None,
                 schedule: str = "linear", variance: str = "fixed_large", prediction: str = "eps"):
        """``beta_start``/``beta_end``: see :func:`linear_beta_range` (None: Ho et al.'s range scaled to T).

        Warns (:class:`ScheduleWarning`) when alpha-bar_T > :data:`MAX_ALPHA_BAR_T`.
        """
        if timesteps <= 0:
            raise ConfigError(f"timesteps must be positive, got {timesteps}")
        if schedule == "linear":
            beta_start, beta_end = linear_beta_range(timesteps, beta_start, beta_end)
            betas = linear_betas(timesteps, beta_start, beta_end)
        elif schedule == "cosine":
            betas = cosine_betas(timesteps)
        else:
            raise ConfigError(f"unknown schedule {schedule!r}; choose 'linear' or 'cosine'")
        if variance not in VARIANCES:
            raise ConfigError(f"unknown variance {variance!r}; choose 'fixed_large' or 'fixed_small'")
        if prediction not in PREDICTIONS:
            raise ConfigError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        self.timesteps, self.schedule, self.variance, self.prediction = timesteps, schedule, variance, prediction

        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)  # signal-to-noise ratio of x_t
        # Posterior q(x_{t-1} | x_t, x_0) = N(mean_coef1 * x_0 + mean_coef2 * x_t, beta-tilde_t)  (eqs. 6-7).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        self._device_cache: dict[tuple[str, torch.device], torch.Tensor] = {}
        self._check_reaches_noise()

    @classmethod
    def from_config(cls, config):
        """Built from a :class:`ddpm.config.DiffusionConfig` (read by field name: this module sits below the config).

        Validation and every model load both come through here, so a :class:`ScheduleWarning` is shown once.
        """
        return cls(config.timesteps, config.beta_start, config.beta_end, config.schedule, config.variance,
                   config.prediction)

    def _check_reaches_noise(self) -> None:
        """Warn when x_T = sqrt(alpha-bar_T) x_0 + sqrt(1 - alpha-bar_T) eps (eq. 4) is not pure noise.

        Only a linear range can fail: the cosine schedule caps its last beta at 0.999, so alpha-bar_T <= 1e-3.
        """
        abar_T = self.alphas_cumprod[-1].item()
        # isclose: at T = 1 the cosine cap makes alpha-bar_T = 1 - 0.999, which rounds to 1e-3 + 9e-19.
        if abar_T <= MAX_ALPHA_BAR_T or math.isclose(abar_T, MAX_ALPHA_BAR_T):
            return
        warnings.warn(
            f"the {self.schedule} schedule beta = {self.betas[0].item():g} -> {self.betas[-1].item():g} over "
            f"T = {self.timesteps} steps ends at alpha-bar_T = {abar_T:.3g}: x_T keeps sqrt(alpha-bar_T) = "
            f"{math.sqrt(abar_T):.0%} of the image's signal, while sampling starts from pure noise N(0, I), so "
            "training and sampling disagree; leave --beta-start and --beta-end unset (their defaults scale with "
            "1000/T and reach noise at any T), or raise them or --time-steps until alpha-bar_T <= "
            f"{MAX_ALPHA_BAR_T:g}. A model trained on this schedule keeps it: retrain it to fix its samples.",
            ScheduleWarning, stacklevel=3)

    def _extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``self.<name>[t]`` as a (B, 1, 1, ...) tensor in ``like``'s dtype, cached per device."""
        key = (name, t.device)
        if key not in self._device_cache:
            self._device_cache[key] = getattr(self, name).to(t.device)
        values = self._device_cache[key][t].to(like.dtype)
        return values.reshape(-1, *([1] * (like.dim() - 1)))

    def alpha_sigma(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha = sqrt(alpha-bar_t) and sigma = sqrt(1 - alpha-bar_t) for each t, shaped to broadcast against
        ``like``: x_t = alpha x_0 + sigma eps (eq. 4)."""
        return self._extract("sqrt_alphas_cumprod", t, like), self._extract("sqrt_one_minus_alphas_cumprod", t, like)

    def eps_and_x0(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x_0) of a network ``output`` at (x_t, t), read as this schedule's ``prediction``
        (:func:`split_prediction`)."""
        return split_prediction(output, x_t, *self.alpha_sigma(t, x_t), self.prediction)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t), eq. 4 solved for x_0, from a given eps (for a
        network's output, whatever it predicts, see :meth:`eps_and_x0`)."""
        return split_prediction(eps, x_t, *self.alpha_sigma(t, x_t), "eps")[1]
