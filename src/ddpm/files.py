"""Bytes on disk: atomic writes, and safetensors / ``torch.load`` reading that never runs code.

Every file the project writes for keeps (checkpoints, their ``latest`` pointer, ``config.json``, exported models,
cached statistics) goes through :func:`atomic_write`, so a crash or a full disk leaves the previous version intact.
This module knows nothing of what the files hold.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from ddpm.errors import CheckpointError, OutputError


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object], durable: bool = True) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then rename it over ``path``: readers see the old
    content or the new, never a part. ``durable`` also fsyncs the file and its folder, so that the new content
    survives a power cut too (checkpoints); generated images skip it, as they can be drawn again.

    On any failure (a full disk included) the temp file is removed and ``path`` keeps its old content; an OSError
    becomes an :class:`~ddpm.errors.OutputError` that names the file.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # e.g. the folder is missing: there is no temp file to remove
            tmp.unlink()
        if isinstance(exc, OSError):
            raise OutputError(f"could not write {path}: {exc.strerror or exc}; any previous version of it is "
                              "intact") from None
        raise


def torch_load_failure(exc: Exception) -> str:
    """The first sentence of what ``torch.load`` found wrong, without its advice to turn ``weights_only`` off."""
    text = str(exc).partition("WeightsUnpickler error:")[2] or str(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), exc.__class__.__name__)
    return first.split(". ")[0].rstrip(".")


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """``tensors`` and string ``metadata`` in the safetensors format, ready for :func:`atomic_write`."""
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
