"""The figures of Ho et al. (2020) that need a trained model and real images: the terms of the variational bound and
rate against distortion (Fig. 5), samples from a shared x_t (Fig. 7), interpolation (Fig. 8) and inpainting."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ddpm.figures.common import paper_t, quarter_inches, tile
from ddpm.generate import to_uint8


def _images(x: torch.Tensor) -> list[np.ndarray]:
    """[-1, 1] (N, C, H, W) -> a list of uint8 (H, W, C)."""
    return list(to_uint8(x.clamp(-1, 1)).numpy())


def _grid_axes(fig: Figure, rows: list[list[np.ndarray]], row_labels: Sequence[str], col_labels: Sequence[str],
               title: str) -> None:
    ax = fig.add_subplot()
    ax.imshow(tile(rows), interpolation="nearest")
    size = rows[0][0].shape[0] + 1
    ax.set_xticks([1 + size * (j + 0.5) for j in range(len(col_labels))], col_labels, fontsize=7)
    ax.set_yticks([1 + size * (i + 0.5) for i in range(len(row_labels))], row_labels, fontsize=7)
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=9)


def _grid_figure(rows, row_labels, col_labels, title) -> Figure:
    cols = max(len(r) for r in rows)
    fig = Figure(figsize=(quarter_inches(max(0.6 * cols + 1.5, 0.075 * len(title))), quarter_inches(0.6 * len(rows) + 1)),
                 layout="constrained")
    _grid_axes(fig, rows, row_labels, col_labels, title)
    return fig


def rate_distortion_figure(record: dict) -> Figure:
    """Three panels from one ``ddpm nll --json`` record: each term of the bound against t (L_0 the decoder, the
    KL terms, L_T the prior); rate (bits/dim received once x_t is, prior + sum_{s>t} terms) and distortion (RMSE of
    x0_hat from x_t on the 0-255 scale) against t; distortion against rate (Ho et al. 2020, Fig. 5)."""
    terms = np.asarray(record["terms_bpd"])
    rate = np.asarray(record["rate_bpd"])
    rmse = np.asarray(record["rmse_255"])
    t = np.arange(1, len(terms) + 1)  # the paper's t: the code's term at t is the paper's L_{t} at t + 1 (L_0 at 1)
    fig = Figure(figsize=(13, 3.75), layout="constrained")
    a, b, c = fig.subplots(1, 3)
    a.semilogy(t[1:], terms[1:], lw=1, label="KL terms L_{t-1}, t = 2..T")
    a.semilogy([1], [terms[0]], "o", color="C3", label=f"decoder L_0 = {terms[0]:.3f}")
    a.axhline(max(record["prior_bpd"], 1e-12), color="C2", ls=":", lw=1,
              label=f"prior L_T = {record['prior_bpd']:.1e}")
    a.set(xlabel="timestep t (the paper's 1..T)", ylabel="bits/dim", title="The terms of the bound")
    a.legend(fontsize=7)
    b.plot(t, rate, color="C0", label="rate (bits/dim)")
    b.set(xlabel="timestep t (the paper's 1..T)", ylabel="rate (bits/dim)", title="Rate and distortion against t")
    b.invert_xaxis()
    b2 = b.twinx()
    b2.plot(t, rmse, color="C1", label="distortion (RMSE, 0-255)")
    b2.set_ylabel("distortion (RMSE, 0-255)")
    b.legend(handles=b.get_lines() + b2.get_lines(), fontsize=7, loc="center right")
    c.plot(rate, rmse, color="C1")
    c.set(xlabel="rate (bits/dim)", ylabel="distortion (RMSE, 0-255)", title="Rate against distortion")
    name = Path(record["model"]).name if record.get("model") else "the model"
    fig.suptitle(f"Variational bound of {name}: {record['bits_per_dim']:.3f} bits/dim over {record['num_images']} "
                 "images", fontsize=10)
    return fig


def shared_xt_figure(blocks: Sequence[tuple[torch.Tensor, Sequence[tuple[torch.Tensor, torch.Tensor]]]],
                     ts: Sequence[int]) -> Figure:
    """For each (x_0, [(x_t, samples) per t]) of ``blocks``, one row per t: x_0, x_t and the reverse samples drawn
    from that x_t (Ho et al. 2020, Fig. 7)."""
    rows, labels = [], []
    for n, (x0, results) in enumerate(blocks):
        source = _images(x0)[0]
        rows += [[source, _images(x_t)[0], *_images(samples)] for x_t, samples in results]
        labels += [f"t = {paper_t(t)}" if len(blocks) == 1 else f"image {n + 1}, t = {paper_t(t)}" for t in ts]
    samples = len(blocks[0][1][0][1])
    return _grid_figure(rows, labels, ["x₀", "x_t", *[f"sample {k + 1}" for k in range(samples)]],
                        "Samples x₀ ~ p(x₀ | x_t) sharing one x_t")


def interpolation_figure(x0_a: torch.Tensor, x0_b: torch.Tensor, rows: Sequence[torch.Tensor], ts: Sequence[int],
                         lambdas: Sequence[float]) -> Figure:
    """One row per t: source a, the decodings of (1 - lambda) x_t^a + lambda x_t^b, source b (Fig. 8)."""
    a, b = _images(x0_a)[0], _images(x0_b)[0]
    grid = [[a, *_images(decoded), b] for decoded in rows]
    return _grid_figure(grid, [f"t = {paper_t(t)}" for t in ts], ["source", *[f"λ={lam:.2g}" for lam in lambdas], "source"],
                        "Interpolation in x_t, decoded by the reverse process")


def inpainting_figure(x0: torch.Tensor, masks: Sequence[str], known: Sequence[torch.Tensor],
                      filled: Sequence[torch.Tensor], title: str) -> Figure:
    """One row per image: the original, then for each mask the masked input (grey where unknown) and the result."""
    grey = torch.zeros_like(x0)
    rows = [[img] for img in _images(x0)]
    for k_mask, result in zip(known, filled):
        for row, masked, out in zip(rows, _images(torch.where(k_mask.expand_as(x0), x0, grey)), _images(result)):
            row += [masked, out]
    labels = ["original"] + [label for m in masks for label in (f"{m} mask", "filled")]
    return _grid_figure(rows, [f"image {i + 1}" for i in range(len(rows))], labels, title)
