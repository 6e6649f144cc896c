"""The training loop's policies (ddpm.policies), each driven on its own, without a training run."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from ddpm.distributed import DistInfo
from ddpm.errors import TrainingError
from ddpm.policies import BadSteps, LossWindow, Progress, StopSignal, TimeBudget, due

ONE_PROCESS = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


@pytest.mark.parametrize("step, every, expected", [(10, 5, True), (11, 5, False), (0, 5, True), (10, 0, False),
                                                   (1, 1, True)])
def test_due(step, every, expected):
    assert due(step, every) is expected


def _step(window: LossWindow, loss: float, grad_norm: float, seconds: float) -> None:
    window.add(torch.tensor(loss), torch.tensor(grad_norm))
    window.add_seconds(seconds)


def test_loss_window_averages_the_finite_steps_and_counts_every_second():
    window = LossWindow()
    _step(window, 0.5, 2.0, 1.0)
    _step(window, 0.7, math.nan, 1.0)  # a skipped step (its norm NaN): its time counts, its loss and norm do not
    assert window.read() == [True, False]  # the flags of the steps since the last read, oldest first
    _step(window, 0.25, 1.0, 2.0)
    assert window.read() == [True] and window.read() == []
    loss, rate, grad_norm = window.close(batch_size=8)
    assert (loss, rate, grad_norm) == (0.375, 2 * 8 / 4.0, 1.5)
    assert (window.steps, window.seconds, window.loss, window.grad_norm) == (0, 0, 0, 0)  # afresh


def test_loss_window_of_skipped_steps_only_is_nan():
    window = LossWindow()
    _step(window, math.inf, math.nan, 1.0)
    assert window.read() == [False]
    loss, rate, grad_norm = window.close(batch_size=8)
    assert math.isnan(loss) and math.isnan(grad_norm) and rate == 0.0


def test_bad_steps_stop_after_more_than_the_limit_in_a_row_naming_the_last_checkpoint():
    guard = BadSteps(limit=2)
    def unasked():
        raise AssertionError("the checkpoints are listed only when the run stops")

    for step in range(1, 3):
        guard.observe(False, step, unasked)
    guard.observe(True, 3, unasked)  # a finite step resets the count
    guard.observe(False, 4, unasked)
    guard.observe(False, 5, unasked)
    with pytest.raises(TrainingError, match=r"3 steps in a row at step 6; the last good checkpoint is ckpt-4\.pt"):
        guard.observe(False, 6, lambda: Path("ckpt-4.pt"))


def test_time_budget():
    assert not TimeBudget(0, time.monotonic() - 1e6, ONE_PROCESS).spent()  # 0: no limit
    assert TimeBudget(10, time.monotonic() - 11, ONE_PROCESS).spent()
    budget = TimeBudget(10, time.monotonic(), ONE_PROCESS)
    assert not budget.spent() and 0 <= budget.used() < 10


def test_progress_counts_steps_or_the_share_of_the_budget():
    steps = Progress(TimeBudget(0, time.monotonic(), ONE_PROCESS), total_steps=100, step=40, enabled=True)
    steps.advance(False)
    assert steps.bar.n == 41
    timed = Progress(TimeBudget(60, time.monotonic() - 30, ONE_PROCESS), total_steps=100, step=40, enabled=True)
    timed.advance(False)
    assert 30 <= timed.bar.n < 60 and timed.bar.total == 60
    timed.advance(True)  # out of time: the bar ends full, whatever the clock says
    assert timed.bar.n == 60


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_asks_to_stop_and_the_handlers_are_restored(signum):
    before = signal.getsignal(signum)
    with StopSignal() as stop:
        assert stop.requested(ONE_PROCESS) is None
        os.kill(os.getpid(), signum)
        assert stop.requested(ONE_PROCESS) == signum
    assert signal.getsignal(signum) is before
