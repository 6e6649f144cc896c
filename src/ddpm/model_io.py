"""One door in and out for trained models: :func:`load_model` over every format, and the two exports.

A model comes from a run directory (its newest checkpoint), a ``.pt`` checkpoint (:mod:`ddpm.checkpoint`), an
exported ``.safetensors`` file (EMA weights, the config in its metadata) or a diffusers folder
(:mod:`ddpm.diffusers_format`); whichever it is, the result is a :class:`LoadedModel`. The exports write the
weights back out as safetensors or as a diffusers ``DDPMPipeline`` folder, keeping in their config only what
rebuilds the model (:func:`ddpm.config.without_paths`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpm import diffusers_format
from ddpm.checkpoint import load_checkpoint, load_latest
from ddpm.config import RunConfig, replace, validate, without_paths
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError, ConfigError, DDPMError
from ddpm.files import atomic_write, read_safetensors, safetensors_bytes
from ddpm.samplers import SAMPLERS
from ddpm.schedules import NoiseSchedule
from ddpm.spacing import time_grid
from ddpm.unet import UNet

WEIGHTS = ("ema", "raw")


@dataclass
class LoadedModel:
    """A network ready for sampling, with the diffusion and config it was trained with."""

    model: UNet
    diffusion: GaussianDiffusion
    config: RunConfig
    step: int
    source: Path
    weights: str


def _config_from(data: Any, source: Path) -> RunConfig:
    try:
        config = RunConfig.from_dict(data if isinstance(data, dict) else json.loads(data))
        validate(config)
        return config
    except (DDPMError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source} holds an invalid or incompatible config ({exc})") from None


def _build(config: RunConfig, weights: dict[str, torch.Tensor], source: Path) -> UNet:
    model = UNet(config.model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        # The first line only says "Error(s) in loading state_dict"; the next one names a mismatch.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"weights in {source} do not fit the network its config describes "
                              f"({lines[min(1, len(lines) - 1)]})") from None
    return model


def _loaded(config: RunConfig, tensors: dict[str, torch.Tensor], device, step: int, source: Path,
            weights: str, variance: str | None) -> LoadedModel:
    model = _build(config, tensors, source).to(device).eval()
    if variance is not None:  # not learnt (Ho et al. sec. 3.2): any model samples with either
        config = replace(config, "diffusion", variance=variance)
        validate(config)
    return LoadedModel(model, GaussianDiffusion.from_config(config.diffusion), config, step, source, weights)


def load_model(path: str | Path, device: str | torch.device = "cpu", weights: str = "ema",
               variance: str | None = None) -> LoadedModel:
    """Rebuild the network from a run directory (its newest checkpoint), a ``.pt`` checkpoint, an exported
    ``.safetensors`` file or a diffusers folder; ``weights`` picks the EMA (default) or the raw training weights;
    ``variance`` replaces the reverse-process variance the model was trained with ("fixed_large" or "fixed_small")."""
    path = Path(path)
    if weights not in WEIGHTS:
        raise CheckpointError(f"unknown weights {weights!r}; choose 'ema' or 'raw'")
    if path.suffix == ".safetensors":
        tensors, metadata = read_safetensors(path)
        if "config" not in metadata:
            raise CheckpointError(f"{path} has no ddpm config in its metadata; export it with `ddpm export`")
        config = _config_from(metadata["config"], path)
        return _loaded(config, tensors, device, int(metadata.get("step", 0)), path, metadata.get("weights", "ema"),
                       variance)
    if diffusers_format.is_diffusers_folder(path):
        if weights != "ema":
            raise CheckpointError(f"{path} is a diffusers folder, which holds one set of weights; drop --weights "
                                  f"{weights}")
        config, tensors = diffusers_format.read_folder(path)
        return _loaded(_config_from(config.to_dict(), path), tensors, device, 0, path, "published", variance)
    if path.is_dir():
        found = load_latest(path)
        if found is None:
            raise CheckpointError(f"no checkpoint in {path}; train first or pass a checkpoint file with --load-model")
        path, state = found
    else:
        state = load_checkpoint(path)
    config = _config_from(state["config"], path)
    has_ema = "ema" in state
    tensors = state["ema"]["model"] if weights == "ema" and has_ema else state["model"]
    return _loaded(config, tensors, device, int(state["step"]), path, weights if has_ema else "raw", variance)


def _with_guidance(loaded: LoadedModel, guidance_scale: float | None) -> RunConfig:
    """The config to export: the loaded one with the recommended classifier-free guidance scale set, if given."""
    if guidance_scale is None:
        return loaded.config
    if not loaded.config.model.class_cond:
        raise ConfigError(f"{loaded.source} is not class-conditional, so --guidance-scale does not apply (train a "
                          "model with --class-cond)")
    config = replace(loaded.config, "model", guidance_scale=guidance_scale)
    validate(config)
    return config


def _with_sampling(config: RunConfig, sampling: dict[str, Any] | None) -> RunConfig:
    """``config`` with the recommended sampler, time spacing and steps of ``sampling`` (keys of
    :class:`~ddpm.config.DiffusionConfig`: ``sampler``, ``time_spacing``, ``sampling_steps``), checked against the
    schedule; a new sampler without steps or spacing gets its own defaults."""
    given = {k: v for k, v in (sampling or {}).items() if v is not None}
    if not given:
        return config
    if "sampler" in given:
        given = {"time_spacing": "uniform", "sampling_steps": 0, **given}
    config = replace(config, "diffusion", **given)
    validate(config)
    d = config.diffusion
    if d.sampling_steps:
        time_grid(d.time_spacing, NoiseSchedule.from_config(d), d.sampling_steps, SAMPLERS[d.sampler].call_at_zero)
    return config


def export_safetensors(source: str | Path, output: str | Path, weights: str = "ema",
                       guidance_scale: float | None = None, sampling: dict[str, Any] | None = None) -> Path:
    """Write the EMA (or raw) weights of a run or checkpoint as safetensors, config and step in the metadata;
    ``guidance_scale`` sets a class-conditional model's recommended scale and ``sampling`` its recommended sampler,
    time spacing and steps (see :func:`_with_sampling`): what sampling uses when given none."""
    loaded = load_model(source, "cpu", weights)
    config = _with_sampling(_with_guidance(loaded, guidance_scale), sampling)
    return save_safetensors(config, loaded.model.state_dict(), loaded.step, loaded.weights, output)


def save_safetensors(config: RunConfig, weights: dict[str, torch.Tensor], step: int, kind: str,
                     output: str | Path) -> Path:
    """Write network ``weights`` (``kind``: "ema" or "raw") as a model file that :func:`load_model` reads, the
    config without paths (:func:`ddpm.config.without_paths`) and the step in its metadata."""
    output = Path(output)
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    metadata = {"config": json.dumps(without_paths(config).to_dict()), "step": str(step), "weights": kind,
                "format": "ddpm"}
    atomic_write(output, lambda f: f.write(safetensors_bytes(tensors, metadata)))
    return output


def export_diffusers(source: str | Path, output: str | Path, weights: str = "ema",
                     guidance_scale: float | None = None) -> Path:
    """Write a run's EMA (or raw) weights as a ``DDPMPipeline`` folder (see
    :func:`ddpm.diffusers_format.write_folder`); ``diffusers.DDPMPipeline.from_pretrained(output)`` loads it. A
    class-conditional model becomes a ``UNet2DModel`` with ``num_class_embeds`` (its classes + "no class")."""
    loaded = load_model(source, "cpu", weights)
    d = loaded.config.diffusion
    if d.distilled:
        raise ConfigError(f"{loaded.source} is a distilled student, right only at its own {d.sampling_steps} "
                          f"{d.time_spacing} DDIM steps, while a diffusers DDPMPipeline samples with 1,000 ancestral "
                          "steps; export --format safetensors")
    config = _with_guidance(loaded, guidance_scale)
    return diffusers_format.write_folder(config, loaded.model.state_dict(), Path(output))
