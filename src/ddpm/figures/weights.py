"""The loss-weights figure: what each parameterisation of the network's output, and min-SNR-gamma, make the training
loss weigh at each timestep, all written as weights on the one error they share, ||x_0 - x0_hat||^2."""

from __future__ import annotations

from matplotlib.figure import Figure

from ddpm.schedules import NoiseSchedule, min_snr_weight

PREDICTION_COLORS = {"eps": "tab:blue", "v": "tab:green", "x0": "tab:red"}


def x0_error_weights(schedule: NoiseSchedule, gamma: float) -> dict[str, list[float]]:
    """Per timestep, the weight that each loss puts on ||x_0 - x0_hat||^2.

    eps - eps_hat = -sqrt(SNR) (x_0 - x0_hat) and v - v_hat = -sqrt(SNR + 1) (x_0 - x0_hat) at the same x_t, so the
    uniform losses of the three targets weigh the x_0 error by SNR (eps, Ho et al.'s L_simple), SNR + 1 (v) and 1
    (x0); min-SNR-gamma makes it min(SNR, gamma) whatever the target (Hang et al. 2023): the min-SNR weight of the
    target times that target's factor.
    """
    snr = schedule.snr
    factor = {"eps": snr, "v": snr + 1, "x0": snr ** 0}
    weights = {f"{p}, uniform": factor[p].tolist() for p in PREDICTION_COLORS}
    weights[f"any, min-SNR-{gamma:g}"] = (min_snr_weight(snr, gamma, "eps") * factor["eps"]).tolist()
    return weights


def loss_weights_figure(timesteps: int = 1000, gamma: float = 5.0) -> Figure:
    """SNR(t) of the linear and cosine schedules over T = ``timesteps`` (top), and the weights of
    :func:`x0_error_weights` for the linear schedule (bottom), both on log scales."""
    schedules = {name: NoiseSchedule(timesteps, schedule=name) for name in ("linear", "cosine")}
    fig = Figure(figsize=(7, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    ts = list(range(1, timesteps + 1))  # the paper's t; the schedule's tensors are indexed by t - 1
    for name, schedule in schedules.items():
        top.plot(ts, schedule.snr.tolist(), label=f"{name} schedule")
    top.axhline(gamma, color="grey", linestyle=":", label=f"gamma = {gamma:g}")
    top.set(yscale="log", ylabel="SNR(t) = alpha-bar / (1 - alpha-bar)", title=f"Signal-to-noise ratio, T = {timesteps}")
    top.legend(fontsize=8)
    for label, values in x0_error_weights(schedules["linear"], gamma).items():
        prediction = label.split(",")[0]
        # eps is drawn wide: it runs under v at small t and under min-SNR at large t.
        style = dict(color=PREDICTION_COLORS[prediction], linewidth=4 if prediction == "eps" else 1.5, alpha=0.8) \
            if prediction in PREDICTION_COLORS else dict(color="black", linestyle="--")
        bottom.plot(ts, values, label=label, **style)
    bottom.set(yscale="log", xlabel="t (the paper's 1 … T)", ylabel="weight on ||x0 - x0_hat||^2",
               title="What each loss weighs at each t (linear schedule)")
    bottom.legend(fontsize=8)
    for axes in (top, bottom):
        axes.grid(alpha=0.3)
    return fig
