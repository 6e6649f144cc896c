"""The training loop's policies, each a small object that a test can drive without a training run.

:class:`ddpm.train.Trainer` runs the algorithm (a step, then these): :class:`LossWindow` averages what is logged
every ``--logging-steps``, :class:`BadSteps` stops a run that keeps producing non-finite steps, :class:`TimeBudget`
ends it at ``--max-time`` on every rank at once, :class:`Progress` draws the bar (steps, or the time budget),
:class:`StopSignal` turns SIGINT/SIGTERM into a save-and-stop, and :func:`due` says when a periodic job is due.
What needs the device's numbers or the other ranks (:meth:`LossWindow.read`, :class:`BadSteps`, :class:`TimeBudget`,
:class:`StopSignal`) is asked only at the loop's sync points: every ``--sync-every`` steps and at each logging,
checkpoint, grid and FID step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ddpm.distributed import DistInfo, any_rank
from ddpm.errors import TrainingError


def due(step: int, every: int) -> bool:
    """Whether a job run every ``every`` steps (0: never) is due after ``step`` steps."""
    return every > 0 and step % every == 0


class LossWindow:
    """Mean loss, mean gradient norm and throughput over the steps since the last log line; skipped (non-finite)
    steps add time only.

    A step's loss and gradient norm stay on the device: :meth:`add` sums them there, and :meth:`read`, at a sync
    point of the loop, brings the sums and each step's finite flag to the host in one transfer, the loop's one wait
    for the device. The host adds the sums of successive reads in double precision.
    """

    def __init__(self):
        self.loss, self.grad_norm, self.steps, self.seconds = 0.0, 0.0, 0, 0.0
        self._sums: torch.Tensor | None = None  # (loss, gradient norm) summed over the finite steps not yet read
        self._finite: list[torch.Tensor] = []  # whether each step not yet read was finite (0-d bool tensors)

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """One step's loss and gradient norm, 0-d tensors on the device; the norm is NaN for a skipped step."""
        finite = torch.isfinite(grad_norm)
        values = torch.where(finite, torch.stack((loss.detach().float(), grad_norm.float())), 0.0)
        self._sums = values if self._sums is None else self._sums + values
        self._finite.append(finite)

    def add_seconds(self, seconds: float) -> None:
        self.seconds += seconds

    def read(self) -> list[bool]:
        """Whether each step added since the last read was finite, oldest first; their sums join the window's."""
        if not self._finite:
            return []
        values = torch.cat((self._sums, torch.stack(self._finite).to(self._sums.dtype))).tolist()
        finite = [flag == 1.0 for flag in values[2:]]
        self.loss += values[0]
        self.grad_norm += values[1]
        self.steps += sum(finite)
        self._sums, self._finite = None, []
        return finite

    def close(self, batch_size: int) -> tuple[float, float, float]:
        """(mean loss, images per second, mean gradient norm) of the steps read so far, and a fresh window; the
        means are NaN if all of them were skipped."""
        loss, grad_norm = ((self.loss / self.steps, self.grad_norm / self.steps) if self.steps
                           else (float("nan"), float("nan")))
        rate = self.steps * batch_size / max(self.seconds, 1e-9)
        self.__init__()
        return loss, rate, grad_norm


class BadSteps:
    """Counts non-finite steps in a row and stops the run after ``limit`` of them."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row = limit, 0

    def observe(self, finite: bool, step: int, last_checkpoint: Callable[[], Path | None]) -> None:
        """Record a step; raise :class:`TrainingError` once more than ``limit`` in a row were non-finite, naming
        ``last_checkpoint()`` (asked only then)."""
        self.in_a_row = 0 if finite else self.in_a_row + 1
        if self.in_a_row > self.limit:
            # Skipped steps leave the weights alone, so the newest checkpoint holds the last good ones.
            raise TrainingError(
                f"non-finite loss or gradients for {self.in_a_row} steps in a row at step {step}; the last good "
                f"checkpoint is {last_checkpoint() or 'none'}. Start a new run with a lower --lr, a --grad-clip or "
                "without --amp (these cannot change on --resume), or --resume with a larger --max-bad-steps if the "
                "spike is transient"
            )


class TimeBudget:
    """``--max-time`` seconds of wall-clock time from ``started`` (a ``time.monotonic()``); 0 means no limit.

    :meth:`spent` asks every rank, so all stop at the same step even when their clocks disagree by a step.
    """

    def __init__(self, seconds: float, started: float, dist: DistInfo):
        self.seconds, self.started, self.dist = seconds, started, dist

    def used(self) -> float:
        return time.monotonic() - self.started

    def spent(self) -> bool:
        return bool(self.seconds) and any_rank(self.dist, self.used() >= self.seconds)


class Progress:
    """The progress bar: steps out of ``total_steps``, or, with a time budget (which then ends the run), the share
    of the budget used, with the step in the postfix. Drawn on the main rank only."""

    def __init__(self, budget: TimeBudget, total_steps: int, step: int, enabled: bool):
        self.budget = budget
        if budget.seconds:
            self.bar = tqdm(total=budget.seconds, disable=not enabled, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of the time budget{postfix}")
        else:
            self.bar = tqdm(total=total_steps, initial=step, disable=not enabled, dynamic_ncols=True, unit="step")

    def advance(self, out_of_time: bool) -> None:
        """After a step: one more step, or the budget used so far (all of it once ``out_of_time``)."""
        if self.budget.seconds:
            used = self.budget.seconds if out_of_time else min(self.budget.used(), self.budget.seconds)
            self.bar.update(used - self.bar.n)
        else:
            self.bar.update(1)

    def show(self, **values: Any) -> None:
        self.bar.set_postfix(**values)

    def close(self) -> None:
        self.bar.close()


class StopSignal:
    """First SIGINT/SIGTERM asks the loop to save and stop; a second SIGINT exits at once, without saving.

    The second one ends the process on the spot rather than raising KeyboardInterrupt: raised at an arbitrary
    point, that can leave a lock held (TensorBoard's queue, for one) and hang the clean-up forever. Checkpoints
    are written atomically, so nothing but the steps since the last one is lost.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            print("\nreceived SIGINT again: quitting without saving", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint at the next sync point (within "
              "--sync-every steps; press Ctrl-C again to quit without saving)", file=sys.stderr, flush=True)

    def requested(self, dist: DistInfo) -> int | None:
        """The signal that asked to stop, on any rank (SIGTERM stands for another rank's), else None."""
        if any_rank(dist, self.signum is not None):
            return self.signum or signal.SIGTERM
        return None

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
