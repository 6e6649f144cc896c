"""Exponential moving average of the weights, the weights Ho et al. (2020) sample from (decay 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def warmup_decay(num_updates: int, decay: float, warmup: str = "power", power: float = 2 / 3) -> float:
    """The EMA decay d_n of update n (counting from 0), never above ``decay``.

    A fixed 0.9999 averages over the last ~10,000 steps, so for the first tens of thousands of steps the average
    is dominated by the random initial weights. A warm-up shortens the window while the run is young:

    - ``"power"``: d_n = 1 - (1 + n)^-power, the warm-up of ``ema_pytorch`` and of ``diffusers``' ``EMAModel``
      (``use_ema_warmup``, inv_gamma = 1; its docstring gives power 2/3 for runs of a million steps or more and 3/4
      for shorter ones). The window grows like n^power: 100 steps at n = 1,000 and 460 at n = 10,000 with 2/3, so
      the average follows the weights closely early on and stays short of 0.9999 until n = 1M.
    - ``"tf"``: d_n = (1 + n) / (10 + n), TensorFlow's ``ExponentialMovingAverage(num_updates=n)``; the window
      grows like n / 9 (1,100 steps at n = 10,000).
    - ``"none"``: d_n = ``decay`` from the first update, Ho et al.'s fixed 0.9999.
    """
    if warmup == "none":
        return decay
    if warmup == "tf":
        return min(decay, (1 + num_updates) / (10 + num_updates))
    if warmup == "power":
        return min(decay, 1 - (1 + num_updates) ** -power)
    raise ValueError(f"unknown EMA warm-up {warmup!r}; choose power, tf or none")


class EMA:
    """shadow <- d_n * shadow + (1 - d_n) * param after each optimiser step, d_n from :func:`warmup_decay`.

    The shadow copy is a float32 module in eval mode, usable directly for sampling. Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: str = "power", power: float = 2 / 3):
        self.decay, self.warmup, self.power = decay, warmup, power
        self.num_updates = 0
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def current_decay(self) -> float:
        return warmup_decay(self.num_updates, self.decay, self.warmup, self.power)

    @torch.no_grad()
    def update(self, model: nn.Module, taken: torch.Tensor) -> None:
        """Average ``model``'s weights in after an optimiser step; ``taken``, a 0-d bool tensor on their device, says
        whether that step was taken.

        A skipped step (``taken`` False) updates with weight 0, which leaves the average exactly as it was, decided
        on the device: no host read, and the same one pass over the weights as a taken step. (On CUDA a tensor
        weight takes ``_foreach_lerp_``'s per-tensor path, one kernel per parameter tensor.) :attr:`num_updates`
        counts skipped steps too, so that the host knows d_n without reading the flag: the warm-up follows the
        optimiser steps attempted.
        """
        weight = taken.float() * (1.0 - self.current_decay())  # rounded to float32 as a Python float weight is; or 0
        shadow = list(self.model.parameters())
        params = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(shadow, params, [weight] * len(shadow))
        for shadow_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            shadow_buffer.copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])
