"""The Gaussian diffusion process on top of a noise schedule: the forward process, its posterior, the training loss
and sampling.

Notation follows Ho et al. (2020); the schedule and its coefficients are :class:`ddpm.schedules.NoiseSchedule`,
the sampling loops :mod:`ddpm.samplers`. This module joins the two for the rest of the project: a network is passed
to each method, never owned: any ``model(x_t, t)`` returning eps, x_0 or v (``prediction``), or ``model(x_t, t, y)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpm import guidance, samplers
from ddpm.errors import ConfigError
from ddpm.samplers import Model
from ddpm.schedules import NoiseSchedule, min_snr_weight, prediction_target


class GaussianDiffusion(NoiseSchedule):
    """Forward process q(x_t | x_0), posterior q(x_{t-1} | x_t, x_0), loss and sampling.

    Built like its :class:`~ddpm.schedules.NoiseSchedule` (T, beta range, schedule, variance, prediction) or from a
    :class:`~ddpm.config.DiffusionConfig` with ``from_config``.
    """

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps, a sample of q(x_t | x_0) (eq. 4)."""
        noise = torch.randn_like(x0) if noise is None else noise
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7)."""
        mean = self._extract("posterior_mean_coef1", t, x_t) * x0 + self._extract("posterior_mean_coef2", t, x_t) * x_t
        return mean, self._extract("posterior_variance", t, x_t)

    def sample_timesteps(self, batch: int, device: torch.device | str | None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ Uniform({0, ..., T-1}), the timestep distribution of Algorithm 1."""
        device = generator.device if generator is not None else device
        return torch.randint(0, self.timesteps, (batch,), device=device, generator=generator)

    def loss(self, model: Model, x0: torch.Tensor, t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None, weighting: str = "uniform",
             gamma: float = 5.0, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The squared error of the network's prediction, averaged over pixels and the batch (Algorithm 1).

        The target is what ``prediction`` says (:func:`~ddpm.schedules.prediction_target`): for eps and ``weighting
        = "uniform"`` this is L_simple = E_{t, x_0, eps} || eps - eps_theta(x_t, t) ||^2 (eq. 14). ``"min-snr"``
        weights each image's error by :func:`~ddpm.schedules.min_snr_weight` (Hang et al. 2023) with ``gamma``.
        ``t`` and ``noise`` are drawn (from ``generator`` if given) unless passed in. ``labels`` (int64 (B,)) are
        given to a class-conditional network as ``model(x_t, t, labels)``, the value ``model.num_classes`` meaning
        "no class" (training's label dropout draws them).
        """
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device, generator).to(x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=generator.device if generator else x0.device,
                                dtype=x0.dtype).to(x0.device)
        alpha, sigma = self.alpha_sigma(t, x0)
        x_t = alpha * x0 + sigma * noise  # as q_sample makes it (eq. 4)
        prediction = model(x_t, t) if labels is None else model(x_t, t, labels)
        target = prediction_target(x0, noise, alpha, sigma, self.prediction)
        if weighting == "uniform":
            return F.mse_loss(prediction.float(), target.float())
        if weighting != "min-snr":
            raise ConfigError(f"unknown loss weighting {weighting!r}; choose 'uniform' or 'min-snr'")
        per_image = (prediction.float() - target.float()).square().flatten(1).mean(1)
        weight = min_snr_weight(self._extract("snr", t, per_image), gamma, self.prediction)
        return (weight * per_image).mean()

    def sample(self, model: Model, shape: tuple[int, ...], sampler: str = "ddpm", steps: int | None = None,
               eta: float = 0.0, clip_denoised: bool = True, generator=None, device=None, callback=None,
               x_T: torch.Tensor | None = None, labels: torch.Tensor | None = None,
               guidance_scale: float = 1.0, spacing: str = "uniform") -> torch.Tensor:
        """Draw samples in [-1, 1] with ``sampler``, a name of :data:`ddpm.samplers.SAMPLERS`.

        ``steps=None`` means all T steps for "ddpm" and 50 for the others; ``spacing`` places them
        (:func:`ddpm.spacing.time_grid`). ``generator`` is a
        ``torch.Generator`` or a list of one per image (per-image seeds); ``device=None`` is the model's device.
        For a class-conditional network, ``labels`` (int64 (B,); None: "no class" for every image) are the classes
        asked for and ``guidance_scale`` s the classifier-free guidance, eps(x, no class) + s (eps(x, c) - eps(x,
        no class)) with both predictions in one forward pass (:func:`ddpm.guidance.guided_model`): 1 is the plain
        conditional model, 0 the unconditional one.
        """
        if device is None:
            params = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
            device = params.device if params is not None else torch.device("cpu")
        if x_T is None:
            x_T = samplers.randn(shape, generator, device)
        model = guidance.guided_model(model, labels, guidance_scale)
        return samplers.sample(model, self, x_T, sampler=sampler, steps=steps, eta=eta,
                               clip_denoised=clip_denoised, generator=generator, callback=callback, spacing=spacing)
