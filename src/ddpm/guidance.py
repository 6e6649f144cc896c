"""Classifier-free guidance (Ho & Salimans 2021): a class-conditional network and labels as one ``model(x_t, t)``.

Every sampler of :mod:`ddpm.samplers` calls ``model(x_t, t)``; :func:`guided_model` wraps a class-conditional
network ``model(x_t, t, labels)`` (the value ``model.num_classes`` means "no class") into such a callable that
returns the guided prediction

    out = out(x_t, no class) + s * (out(x_t, c) - out(x_t, no class))

with the guidance scale ``s`` in diffusers' convention: s = 1 is the plain conditional model, s = 0 the
unconditional one, s > 1 pushes the samples towards what makes them recognisable as their class (Ho & Salimans
write w = s - 1: eps~ = (1 + w) eps(x, c) - w eps(x)). The two predictions come from one forward pass over a batch
of twice the size; s = 1 and s = 0 need only one of them and run the network once, on the original batch, so they
equal the plain conditional and unconditional predictions exactly.

The combination is applied to the network's raw output, whatever it predicts (``--prediction eps|x0|v``). That is
the same as guiding eps: at a given (x_t, t) each of eps, x_0 and v is an affine function of any other with the
same coefficients for both predictions (e.g. eps = (x_t - alpha x0) / sigma, eps = sigma x_t + alpha v, see
:func:`ddpm.schedules.split_prediction`), and an affine map commutes with the combination above because its weights
(1 - s and s) sum to 1. Clipping of x_0 happens after guidance, in the samplers.
"""

from __future__ import annotations

from typing import Callable

import torch

from ddpm.errors import ConfigError

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def num_classes(model) -> int | None:
    """K for a class-conditional network (label K is "no class"), None for an unconditional one or any callable
    that does not say."""
    return getattr(model, "num_classes", None)


def check_guidance(model, labels: torch.Tensor | None, guidance_scale: float) -> None:
    """Refuse labels for an unconditional network, labels out of range, and a negative or non-finite scale."""
    if not (guidance_scale >= 0 and guidance_scale != float("inf")):
        raise ConfigError(f"--guidance-scale must be a finite number >= 0, got {guidance_scale}")
    k = num_classes(model)
    if k is None:
        if labels is not None:
            raise ConfigError("this model is not class-conditional: it takes no classes (train one with --class-cond)")
        if guidance_scale != 1.0:
            raise ConfigError(f"--guidance-scale {guidance_scale} needs a class-conditional model (train one with "
                              "--class-cond)")
        return
    if labels is not None:
        if labels.dtype != torch.long or labels.ndim != 1:
            raise ValueError(f"labels must be an int64 tensor of shape (B,), got {labels.dtype} {tuple(labels.shape)}")
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) <= k):
            raise ConfigError(f"class labels must be in 0 .. {k} ({k}: no class), got {labels.tolist()}")


def guided_model(model, labels: torch.Tensor | None, guidance_scale: float = 1.0) -> Model:
    """``model`` as the ``model(x_t, t)`` the samplers call: unchanged for an unconditional network, else conditioned
    on ``labels`` (None: "no class" for every image) and guided with ``guidance_scale`` (see the module docstring).
    """
    check_guidance(model, labels, guidance_scale)
    k = num_classes(model)
    if k is None:
        return model
    if labels is None or guidance_scale == 0.0:
        return lambda x, t: model(x, t, torch.full((x.shape[0],), k, device=x.device, dtype=torch.long))
    labels_on = {}

    def on(device: torch.device) -> torch.Tensor:
        if device not in labels_on:
            labels_on[device] = labels.to(device)
        return labels_on[device]

    if guidance_scale == 1.0:
        return lambda x, t: model(x, t, on(x.device))

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = on(x.device)
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, torch.full_like(c, k)]))
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    return guided
