"""Step spacings (:mod:`ddpm.spacing`): the grids against their formulas, diffusers' linspace and each other."""

from __future__ import annotations

import math

import numpy as np
import pytest
from diffusers import DPMSolverMultistepScheduler

from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.samplers import sampling_timesteps
from ddpm.spacing import KARRAS_RHO, SPACINGS, time_grid

pytestmark = pytest.mark.filterwarnings("ignore::ddpm.schedules.ScheduleWarning")


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("T, steps", [(1000, 1), (1000, 2), (1000, 10), (1000, 50), (1000, 999), (100, 100), (10, 7)])
@pytest.mark.parametrize("call_at_zero", [True, False])
def test_grids_are_strictly_decreasing_from_the_top(spacing, T, steps, call_at_zero):
    if not call_at_zero and steps > T - 1:
        steps = T - 1
    d = GaussianDiffusion(T) if T >= 100 else GaussianDiffusion(T, schedule="cosine")
    grid = time_grid(spacing, d, steps, call_at_zero)
    assert len(grid) == steps and grid[0] == T - 1
    assert all(a > b for a, b in zip(grid, grid[1:]))
    if spacing == "trailing":  # the same for every sampler: one T/N step short of t = 0
        assert grid[-1] == round(T / steps) - 1
    elif steps > 1:
        assert grid[-1] == 0 if call_at_zero else grid[-1] >= 1


@pytest.mark.parametrize("T, steps", [(1000, 10), (1000, 50), (100, 7), (50, 50)])
def test_uniform_is_ddim_s_grid_and_diffusers_linspace(T, steps):
    d = GaussianDiffusion(T)
    assert time_grid("uniform", d, steps) == sampling_timesteps(T, steps)
    if steps < T:
        ref = DPMSolverMultistepScheduler(num_train_timesteps=T)
        ref.set_timesteps(steps)
        assert time_grid("uniform", d, steps, call_at_zero=False) == [int(t) for t in ref.timesteps]


@pytest.mark.parametrize("T, steps", [(1000, 1), (1000, 8), (1000, 16), (1000, 10), (1000, 37), (100, 64), (1000, 1000)])
def test_trailing_is_diffusers_trailing_and_halves_nest(T, steps):
    """diffusers' DDIMScheduler(timestep_spacing="trailing") places the same timesteps, and the grid of N steps is every
    other point of the grid of 2N, which a progressively distilled student's steps rely on."""
    from diffusers import DDIMScheduler

    d = GaussianDiffusion(T)
    ref = DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    ref.set_timesteps(steps)
    assert time_grid("trailing", d, steps) == [int(t) for t in ref.timesteps]
    if 2 * steps <= T:
        assert time_grid("trailing", d, 2 * steps)[::2] == time_grid("trailing", d, steps)


def test_quadratic_and_the_schedule_spacings_follow_their_formulas():
    """Away from the rounding, each grid is its formula: (T - 1)(1 - u)^2, even steps in lambda = log(alpha /
    sigma), and Karras et al.'s sigma^(1/7) evenly spaced."""
    T, steps = 1000, 8
    d = GaussianDiffusion(T)
    abar = d.alphas_cumprod.double().numpy()
    u = np.arange(steps) / (steps - 1)
    assert time_grid("quadratic", d, steps) == [round(x) for x in (T - 1) * (1 - u) ** 2]
    lam = 0.5 * np.log(abar / (1 - abar))
    steps_in_lambda = np.diff(lam[time_grid("logsnr", d, steps)])
    assert np.allclose(steps_in_lambda, steps_in_lambda.mean(), rtol=0.05)  # rounding t moves lambda a little
    sigma = np.sqrt((1 - abar) / abar)
    root = sigma[time_grid("karras", d, steps)] ** (1 / KARRAS_RHO)
    assert np.allclose(np.diff(root), np.diff(root).mean(), rtol=0.05)
    assert math.isclose(root[0], sigma[-1] ** (1 / KARRAS_RHO)) and math.isclose(root[-1], sigma[0] ** (1 / KARRAS_RHO))


def test_spacings_differ_where_they_should():
    """Quadratic, log-SNR and Karras put more of their steps at small t than uniform does."""
    d = GaussianDiffusion(1000)
    below_200 = {s: sum(t < 200 for t in time_grid(s, d, 20)) for s in SPACINGS}
    assert below_200["uniform"] == 4
    assert all(below_200[s] > 4 for s in ("quadratic", "logsnr", "karras")), below_200


def test_bad_spacing_and_step_counts_are_one_line_errors():
    d = GaussianDiffusion(100)
    with pytest.raises(ConfigError, match="unknown time spacing 'cosine'; choose one of uniform, quadratic"):
        time_grid("cosine", d, 10)
    with pytest.raises(ConfigError, match="between 1 and T = 100, got 101"):
        time_grid("logsnr", d, 101)
    with pytest.raises(ConfigError, match="between 1 and T - 1 = 99, got 100"):
        time_grid("karras", d, 100, call_at_zero=False)


def test_cli_refuses_a_bad_spacing_in_one_line(capsys):
    from ddpm.cli import main

    for command in (["sample", "--load-model", "m"], ["eval", "m"], ["visualize", "trajectory", "m"]):
        with pytest.raises(SystemExit) as exit:  # argparse's own one-line usage error
            main([*command, "--time-spacing", "cosine"])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and "invalid choice: 'cosine'" in err and "Traceback" not in err
