"""The loss-per-timestep figure: a model's training loss on held-out images, measured per timestep bucket, beside the
loss of a guess that needs no network and the weight the variational bound gives each t (Ho et al. 2020, eq. 12)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from matplotlib.figure import Figure

from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.likelihood import bound_weight
from ddpm.samplers import Model


@dataclass
class BucketLoss:
    """L_simple averaged over the images of one timestep range [start, stop), and ``trivial``, the same average for
    the guess eps_hat = sqrt(1 - alpha-bar_t) x_t on the same (x_0, t, eps)."""

    start: int
    stop: int
    mean: float
    stderr: float
    count: int
    trivial: float


@torch.no_grad()
def loss_per_timestep(model: Model, diffusion: GaussianDiffusion, images: torch.Tensor, buckets: int = 10,
                      batch_size: int = 128, seed: int = 0, device: torch.device | str = "cpu") -> list[BucketLoss]:
    """The training loss ||eps - eps_theta(x_t, t)||^2 (Ho et al. 2020, eq. 14) per timestep bucket; a network that
    predicts x0 or v is scored on the eps its output implies (:meth:`ddpm.schedules.NoiseSchedule.eps_and_x0`), so that
    the curves of all three compare.

    Every image is noised once per bucket at a t drawn uniformly inside it, with noise and t from a generator
    seeded with ``seed``, so two checkpoints are compared on the same (x_0, t, eps). The mean over buckets
    weighted by their width is the uniform-t loss that training minimises.

    Beside it, the loss of eps_hat = sqrt(1 - alpha-bar_t) x_t, which needs no network: its error is
    alpha-bar_t eps - sqrt(alpha-bar_t (1 - alpha-bar_t)) x_0, of mean square
    alpha-bar_t (alpha-bar_t + (1 - alpha-bar_t) E[x_0^2]), below 1e-3 from the paper's t = 737 on CIFAR-10. A network above it at
    large t has not learnt what the noise alone gives away.
    """
    T = diffusion.timesteps
    if not 1 <= buckets <= T:
        raise ConfigError(f"--buckets must be between 1 and T = {T}, got {buckets}")
    edges = [round(b * T / buckets) for b in range(buckets + 1)]
    generator = torch.Generator().manual_seed(seed)
    x0_all = images.float() / 127.5 - 1
    results = []
    for start, stop in zip(edges[:-1], edges[1:]):
        losses, trivial = [], []
        for i in range(0, len(x0_all), batch_size):
            x0 = x0_all[i:i + batch_size]
            t = torch.randint(start, stop, (len(x0),), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            x0, t, noise = x0.to(device), t.to(device), noise.to(device)
            x_t = diffusion.q_sample(x0, t, noise)
            eps, _ = diffusion.eps_and_x0(model(x_t, t).float(), x_t, t)
            losses.append((eps - noise).pow(2).mean(dim=(1, 2, 3)).cpu())
            _, sigma = diffusion.alpha_sigma(t, x_t)
            trivial.append((sigma * x_t - noise).pow(2).mean(dim=(1, 2, 3)).cpu())
        per_image = torch.cat(losses).double()
        stderr = per_image.std().item() / math.sqrt(len(per_image)) if len(per_image) > 1 else 0.0
        results.append(BucketLoss(start, stop, per_image.mean().item(), stderr, len(per_image),
                                  torch.cat(trivial).double().mean().item()))
    return results


def uniform_t_loss(rows: Sequence[BucketLoss]) -> float:
    """The buckets' losses weighted by their widths: the loss under t uniform over the T steps."""
    return sum(r.mean * (r.stop - r.start) for r in rows) / sum(r.stop - r.start for r in rows)


def loss_figure(curves: Sequence[tuple[str, Sequence[BucketLoss]]], diffusion: GaussianDiffusion,
                title: str) -> Figure:
    """Top: the loss per timestep bucket on a log scale of each (name, buckets) curve, measured on the same
    (x_0, t, eps), with its uniform-t mean as a line, and the trivial guess's loss (the same for every curve).
    Bottom: the weight each t gets in the variational bound, lambda_t of eq. 12 for both reverse variances, relative
    to its mean over t >= 2, against L_simple's 1 for every t (eq. 14).

    Each bucket is a point at its mean with a horizontal bar over its timesteps and whiskers of one standard error;
    not a bar chart, whose bar heights on a log axis would depend on where the axis happens to start. The axis is the
    paper's t: a bucket of the code's t in [start, stop) is the paper's t in [start + 1, stop], drawn over
    (start, stop].
    """
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax, weights = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    rows = curves[0][1]
    half = [(r.stop - r.start) / 2 for r in rows]
    centres = [r.start + h for r, h in zip(rows, half)]
    ax.errorbar(centres, [r.trivial for r in rows], xerr=half, fmt="s", color="tab:gray", ecolor="tab:gray", ms=6,
                mfc="none", label="no network: ‖ε − √(1−ᾱ_t)·x_t‖²")  # open and first: a network on it stays visible
    for k, (name, buckets) in enumerate(curves):
        network = "the network" if len(curves) == 1 else name
        mean = uniform_t_loss(buckets)
        ax.errorbar(centres, [r.mean for r in buckets], xerr=half, yerr=[r.stderr for r in buckets], fmt="o",
                    color=f"C{k}", ecolor=f"C{k}", capsize=2, ms=4,
                    label=f"{network}: ‖ε − ε_θ(x_t, t)‖²\n  dashed: its mean over t ~ U{{1..T}}, {mean:.4f}")
        ax.axhline(mean, color=f"C{k}", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlim(rows[0].start, rows[-1].stop)
    ax.set_ylabel("squared ε error per pixel")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=10)
    paper_t = torch.arange(diffusion.timesteps) + 1
    for variance, style in (("fixed_large", "-"), ("fixed_small", "--")):
        lam = bound_weight(diffusion, variance)[1:]
        label = "β_t" if variance == "fixed_large" else "β̃_t"
        weights.plot(paper_t[1:], lam / lam.mean(), style, color="tab:purple", label=f"the bound, σ² = {label} (eq. 12)")
    weights.axhline(1, color="tab:blue", lw=1, label="L_simple (eq. 14)")
    weights.set_yscale("log")
    weights.set_xlabel("timestep t (the paper's 1 … T); top: in buckets")
    weights.set_ylabel("weight of t / its mean")
    weights.legend(fontsize=8)
    return fig
