"""The training-curve figure of ``ddpm plot``: a run's ``metrics.jsonl`` records (:func:`ddpm.runlog.read_metrics`)
drawn against the step."""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure



def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction, as TensorBoard's smoothing slider (0: none)."""
    out, average = [], 0.0
    for n, v in enumerate(values, start=1):
        average = weight * average + (1 - weight) * v
        out.append(average / (1 - weight**n) if weight else v)
    return out


def metrics_figure(records: Sequence[dict], title: str, smoothing: float = 0.6) -> Figure:
    """Loss (raw and smoothed, log scale), learning rate, gradient norm and, with ``--fid-every``, FID against
    the training step."""
    evaluations = [r for r in records if r.get("fid") is not None]
    records = [r for r in records if "loss" in r]
    steps = [r["step"] for r in records]
    panels = 4 if evaluations else 3
    fig = Figure(figsize=(8, 7 + 1.8 * (panels - 3)), layout="constrained")
    axes = fig.subplots(panels, 1, sharex=True, height_ratios=[2.2, 1, 1, 1.4][:panels])
    loss_ax, lr_ax, grad_ax = axes[:3]
    loss = [r["loss"] for r in records]
    loss_ax.semilogy(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="logged (mean over the window)")
    loss_ax.semilogy(steps, smooth(loss, smoothing), color="tab:blue", lw=1.5, label=f"smoothed ({smoothing})")
    loss_ax.set_ylabel("loss ‖ε − ε_θ‖²")
    loss_ax.legend()
    loss_ax.set_title(title, fontsize=10)
    lr_ax.plot(steps, [r["lr"] for r in records], color="tab:green")
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    lr_ax.set_ylim(bottom=0)
    grad_ax.semilogy(steps, [r.get("grad_norm", float("nan")) for r in records], color="tab:red", lw=0.8)
    grad_ax.set_ylabel("gradient norm")
    if evaluations:
        axes[3].plot([r["step"] for r in evaluations], [r["fid"] for r in evaluations], marker="o", color="tab:purple")
        axes[3].set_ylabel("FID (EMA)")
    axes[-1].set_xlabel("training step")
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig
