"""Checkpoints that are never lost and never run code.

A run directory holds ``ckpt-<step>.pt`` files (model, EMA, optimiser, LR scheduler, grad scaler, step, config),
a ``latest`` pointer and ``config.json``. Writes are atomic (temp file, fsync, rename), so a crash or a full
disk leaves the previous checkpoint intact; only the newest ``keep`` are kept. A checkpoint file therefore only
ever appears complete, and loading takes the newest by step (``latest`` names it for people and scripts),
falling back to older ones with a warning when a file was damaged afterwards. Files are read with
``torch.load(weights_only=True)`` and the config inside is plain data, so a checkpoint from elsewhere cannot
execute code. ``export`` writes the EMA weights as safetensors with the config in the file's metadata.
:func:`load_model` also reads diffusers folders, translated by :mod:`ddpm.diffusers_format`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpm.config import RunConfig, validate
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError, DDPMError
from ddpm.unet import UNet

CHECKPOINT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.pt"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    On any failure (a full disk included) the temp file is removed and ``path`` keeps its old content.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # e.g. the folder is missing: there is no temp file to remove
            tmp.unlink()
        if isinstance(exc, OSError):
            raise CheckpointError(f"could not write {path}: {exc.strerror or exc}; any previous version of it is "
                                  "intact") from None
        raise


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run directory, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Atomically write ``state`` as the checkpoint of ``step``, point ``latest`` at it, prune to ``keep`` files.

    Temp files that a killed trainer left behind are removed too.
    """
    run_dir = Path(run_dir)
    path = run_dir / checkpoint_name(step)
    # torch.save reports a failed write (a full disk) as an opaque RuntimeError; writing its bytes ourselves
    # keeps the OSError, hence a clear message, at the cost of one copy of the checkpoint in host memory.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))
    atomic_write(run_dir / LATEST, lambda f: f.write(path.name.encode() + b"\n"))
    stale = [*run_dir.glob(".ckpt-*.pt.tmp-*"), *run_dir.glob(f".{LATEST}.tmp-*")]
    for old in list_checkpoints(run_dir)[:-keep] + stale:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read one checkpoint file safely (``weights_only=True``); corrupt or foreign files raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        reason = torch_load_failure(exc)
        if "Unsupported global" in reason:
            raise CheckpointError(f"refusing to load {path}: it holds Python objects other than tensors and plain "
                                  f"data, which could run code ({reason})") from None
        raise CheckpointError(f"checkpoint {path} is truncated, corrupt or not a ddpm checkpoint ({reason})") from None
    if not isinstance(state, dict) or not {"model", "config", "step"} <= set(state):
        raise CheckpointError(f"{path} is not a ddpm checkpoint (it lacks model, config or step)")
    return state


def torch_load_failure(exc: Exception) -> str:
    """The first sentence of what ``torch.load`` found wrong, without its advice to turn ``weights_only`` off."""
    text = str(exc).partition("WeightsUnpickler error:")[2] or str(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), exc.__class__.__name__)
    return first.split(". ")[0].rstrip(".")


def load_latest(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """The newest readable checkpoint of a run, skipping damaged ones with a warning; None if there is none.

    Raises CheckpointError when checkpoints exist but none can be read.
    """
    candidates = list(reversed(list_checkpoints(run_dir)))
    for path in candidates:
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointError as exc:
            warnings.warn(f"{exc}; trying the previous checkpoint", stacklevel=2)
    if candidates:
        raise CheckpointError(f"no readable checkpoint in {run_dir} (all {len(candidates)} are damaged)")
    return None


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


def load_model(path: str | Path, device: str | torch.device = "cpu", weights: str = "ema") -> LoadedModel:
    """Rebuild the network from a run directory (its newest checkpoint), a ``.pt`` checkpoint, an exported
    ``.safetensors`` file or a diffusers folder; ``weights`` picks the EMA (default) or the raw training weights."""
    from ddpm import diffusers_format  # it imports this module

    path = Path(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path, device)
    if diffusers_format.is_diffusers_folder(path):
        if weights != "ema":
            raise CheckpointError(f"{path} is a diffusers folder, which holds one set of weights; drop --weights "
                                  f"{weights}")
        config, tensors = diffusers_format.read_folder(path)
        config = _config_from(config.to_dict(), path)
        model = _build(config, tensors, path).to(device).eval()
        return LoadedModel(model, GaussianDiffusion.from_config(config.diffusion), config, 0, path, "published")
    if path.is_dir():
        found = load_latest(path)
        if found is None:
            raise CheckpointError(f"no checkpoint in {path}; train first or pass a checkpoint file with --load-model")
        path, state = found
    else:
        state = load_checkpoint(path)
    config = _config_from(state["config"], path)
    if weights == "ema" and "ema" in state:
        tensors = state["ema"]["model"]
    elif weights in ("ema", "raw"):
        tensors = state["model"]
    else:
        raise CheckpointError(f"unknown weights {weights!r}; choose 'ema' or 'raw'")
    model = _build(config, tensors, path).to(device).eval()
    return LoadedModel(model, GaussianDiffusion.from_config(config.diffusion), config, int(state["step"]), path,
                       weights if "ema" in state else "raw")


def export_safetensors(source: str | Path, output: str | Path, weights: str = "ema") -> Path:
    """Write the EMA (or raw) weights of a run or checkpoint as safetensors, config and step in the metadata."""
    loaded = load_model(source, "cpu", weights)
    output = Path(output)
    tensors = {k: v.contiguous() for k, v in loaded.model.state_dict().items()}
    metadata = {"config": json.dumps(loaded.config.to_dict()), "step": str(loaded.step), "weights": loaded.weights,
                "format": "ddpm"}
    atomic_write(output, lambda f: f.write(safetensors_bytes(tensors, metadata)))
    return output


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a safetensors file (a format that holds no code)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None


def _load_safetensors(path: Path, device: str | torch.device) -> LoadedModel:
    tensors, metadata = read_safetensors(path)
    if "config" not in metadata:
        raise CheckpointError(f"{path} has no ddpm config in its metadata; export it with `ddpm export`")
    config = _config_from(metadata["config"], path)
    model = _build(config, tensors, path).to(device).eval()
    return LoadedModel(model, GaussianDiffusion.from_config(config.diffusion), config,
                       int(metadata.get("step", 0)), path, metadata.get("weights", "ema"))
