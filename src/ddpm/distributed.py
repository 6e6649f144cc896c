"""Process-group set-up for ``torchrun`` (DistributedDataParallel): NCCL on GPUs, gloo on CPUs.

Without torchrun's environment variables everything degrades to a single process, so the same code path
serves one CPU, one GPU and many nodes.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ddpm.errors import ConfigError, DDPMWarning


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    launched: bool = False  # started by torchrun, even as its only process: DDP and collectives are on

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.launched


def mps_available() -> bool:
    """Whether this machine has an Apple-silicon GPU that PyTorch can use (the ``mps`` device)."""
    return torch.backends.mps.is_available()


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA when available, else Apple's MPS, else the CPU; asking for a device that is not there is an
    error, not a silent fallback."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
        return torch.device("cuda", local_rank)
    if choice == "mps" or (choice == "auto" and mps_available()):
        if not mps_available():
            raise ConfigError("--device mps was requested but this machine has no Apple-silicon GPU that PyTorch "
                              "can use; use --device cpu")
        return torch.device("mps")
    if choice not in ("auto", "cpu"):
        raise ConfigError(f"unknown device {choice!r}; choose auto, cpu, cuda or mps")
    return torch.device("cpu")


class AmpWarning(DDPMWarning):
    """``--amp`` was asked for where mixed precision would be slower than float32, so it is off."""


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN computes bfloat16 on this CPU with vector instructions (AVX-512 or AMX on x86, BF16 on Arm)
    rather than emulating it: the same check PyTorch's own bf16 CPU paths make (False on builds without oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp``: bfloat16 where the device has it (CPUs with AVX-512/AMX, Ampere and later
    GPUs), float16 on older GPUs and Apple's MPS, and None (float32, with an :class:`AmpWarning`) on a CPU without bf16
    instructions, where emulated bf16 is far slower than float32 (a training step 20x slower, docs/benchmarks.md)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16  # with a gradient scaler; Apple GPUs compute bfloat16 only on recent macOS versions
    if device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("--amp is off: this CPU has no bfloat16 instructions (AVX-512 or AMX), where bf16 runs many "
                      "times slower than float32; running in float32", AmpWarning, stacklevel=2)
        return None
    return torch.bfloat16


def sampling_amp(device: torch.device, asked: bool | None) -> bool:
    """Whether sampling runs the network under autocast: as ``asked`` (``--amp``/``--no-amp``), else on a CPU with
    bfloat16 instructions only, where it draws 1.9x the images per second with the same FID (docs/benchmarks.md);
    elsewhere float32, as before (on a GPU it pays off with --compile only)."""
    if asked is not None:
        return asked
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype``, or nothing when ``dtype`` is None (float32): older PyTorch versions refuse to
    build an autocast context for MPS even disabled."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def init_distributed(device_choice: str) -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    launched = "WORLD_SIZE" in os.environ
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    if launched and device.type == "mps":
        raise ConfigError("torchrun with --device mps: PyTorch has no process-group backend for Apple GPUs; run "
                          "one process without torchrun")
    if launched and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, local_rank, world_size, device, launched)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def any_rank(info: DistInfo, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. a signal that reached only some of them)."""
    if not info.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
