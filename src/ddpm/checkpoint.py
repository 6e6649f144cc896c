"""Training checkpoints that are never lost and never run code.

A run directory holds ``ckpt-<step>.pt`` files (model, EMA, optimiser, LR scheduler, grad scaler, step, config),
a ``latest`` pointer and ``config.json``. Writes are atomic (:func:`ddpm.files.atomic_write`), so a crash or a full
disk leaves the previous checkpoint intact; only the newest ``keep`` are kept. A checkpoint file therefore only
ever appears complete, and loading takes the newest by step (``latest`` names it for people and scripts),
falling back to older ones with a warning when a file was damaged afterwards. Files are read with
``torch.load(weights_only=True)`` and the config inside is plain data, so a checkpoint from elsewhere cannot
execute code. Rebuilding a network from a checkpoint (or from any other model file) is :mod:`ddpm.model_io`'s job.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ddpm.errors import CheckpointError
from ddpm.files import atomic_write, torch_load_failure

CHECKPOINT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.pt"


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
