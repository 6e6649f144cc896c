"""The training-curve figure of ``ddpm plot``: a run's ``metrics.jsonl`` read and drawn against the step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from ddpm.errors import DataError


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (``path`` is the file or its run directory), one per logged step.

    Lines of the same step are merged (``--fid-every`` writes its metrics on a line of their own). A resumed run
    may log a step twice (when it resumed from a checkpoint older than its last log line); the later values win,
    so the curve is the one the final weights followed. A line cut short by a crash is skipped.
    """
    path = Path(path)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"no metrics.jsonl at {path}; pass a run directory of `ddpm train` (its --save-model) or "
                        "the metrics.jsonl file itself")
    records: dict[int, dict] = {}
    for line in file.read_text().splitlines():
        try:
            record = json.loads(line)
            records.setdefault(int(record["step"]), {}).update(record)
        except (ValueError, KeyError, TypeError):
            continue
    if not records:
        raise DataError(f"{file} holds no metrics yet; training writes one line every --logging-steps steps")
    return [records[s] for s in sorted(records)]


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
