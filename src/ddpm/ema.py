"""Exponential moving average of the weights, the weights Ho et al. (2020) sample from (decay 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """shadow <- d_n * shadow + (1 - d_n) * param after each optimiser step, with d_n = min(decay, (1+n)/(10+n)).

    The warm-up term (as in TensorFlow's ``ExponentialMovingAverage(num_updates=n)``) lets the average follow
    the fast early changes of the weights; after a few thousand updates d_n = ``decay``. The shadow copy is
    a float32 module in eval mode, usable directly for sampling. Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        shadow = list(self.model.parameters())
        params = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(shadow, params, weight)
        for shadow_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            shadow_buffer.copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])
