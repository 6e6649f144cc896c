"""Training and sampling throughput on one device, the numbers behind ``ddpm bench``.

The training step timed is :meth:`ddpm.train.Trainer.train_step` of a real :class:`~ddpm.train.Trainer` (forward,
backward, gradient clipping, optimiser, EMA), with the same options (``--amp``, ``--compile``, ``--channels-last``)
that ``ddpm train`` takes. Sampling is timed per network evaluation: a forward pass without gradients in eval mode,
the unit every sampler repeats (a DDIM-50 image costs 50 of them), and optionally one whole DDIM batch.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention; element-wise
work is free) on one image; achieved FLOP/s are then set against a large matmul measured on the same device in the
same dtype, the practical peak. ``profile=True`` adds ``torch.profiler`` tables of one more training step and one more
forward pass after the timed ones: where the time goes, operator by operator, how many kernels run and what share
casts and copies take (the first thing to look at before changing a step). Peak memory on CUDA is ``torch.cuda.max_memory_allocated`` (weights, gradients,
optimiser state and activations); on the CPU it is how far the process's peak resident set size (``ru_maxrss``) grows
during the phase, so weights, EMA copy and anything an earlier phase already touched are not counted; on Apple's MPS
it is the memory the Metal driver holds at the end of the phase (MPS keeps no peak).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import sys
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from ddpm.config import RunConfig
from ddpm.distributed import DistInfo, autocast, resolve_device
from ddpm.errors import ConfigError
from ddpm.unet import count_parameters

aten = torch.ops.aten

# PyTorch's CPU attention kernel has no FLOP formula of its own (the CUDA kernels do): count it like theirs.
CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_backward_flop_count(grad, q, k, v),
}
MIN_MATMUL_SECONDS = 0.5


@dataclass
class BenchResult:
    """What ``ddpm bench`` measured; ``--json`` prints it as is."""

    preset: str
    parameters: int
    batch_size: int
    device: str
    threads: int
    dtype: str
    compile: bool
    channels_last: bool
    steps: int
    warmup: int
    train_images_per_sec: float
    train_ms_per_step: float
    forward_images_per_sec: float
    forward_ms_per_pass: float
    forward_flops_per_image: int
    train_flops_per_image: int
    train_tflops: float
    forward_tflops: float
    matmul_peak_tflops: float
    matmul_size: int
    train_share_of_peak: float
    forward_share_of_peak: float
    memory_measure: str
    train_peak_memory_bytes: int
    forward_peak_memory_bytes: int
    ddim_steps: int
    ddim_seconds_per_batch: float | None
    profile: str | None = None
    torch_version: str = torch.__version__


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """FLOP/s of a ``size`` x ``size`` matmul in ``dtype``, repeated for at least half a second after a warm-up."""
    g = torch.Generator(device).manual_seed(0)
    a = torch.randn(size, size, generator=g, device=device).to(dtype)
    b = torch.randn(size, size, generator=g, device=device).to(dtype)
    torch.mm(a, b)
    synchronize(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < MIN_MATMUL_SECONDS:
        for _ in range(max(1, runs)):  # doubles the batch of launches each time, so the clock is read rarely
            torch.mm(a, b)
            runs += 1
        synchronize(device)
    return 2 * size**3 * runs / (time.perf_counter() - start)


def flops_per_image(trainer, image: torch.Tensor) -> tuple[int, int]:
    """FLOPs of one forward pass and of one training step's forward and backward, for one image in [-1, 1].

    Counted on the uncompiled model (FLOPs do not depend on compilation); the gradients are discarded.
    """
    model, t = trainer.model, torch.zeros(1, dtype=torch.long, device=image.device)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as forward:
        model.eval()(image, t)
    model.train()
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as train:
        trainer.diffusion.loss(model, image).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return forward.get_total_flops(), train.get_total_flops()


class PeakMemory:
    """Peak memory of the code run inside ``with``: see the module docstring for what each device measures."""

    def __init__(self, device: torch.device):
        self.device, self.bytes = device, 0
        self.measure = {"cuda": "cuda max_memory_allocated", "mps": "mps driver_allocated_memory at the end"}.get(
            device.type, "growth of peak RSS (ru_maxrss)")

    @staticmethod
    def _max_rss() -> int:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = self._max_rss()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.device.type == "mps":  # MPS keeps no peak; Metal's memory is not in the resident set size
            self.bytes = torch.mps.driver_allocated_memory()
        else:
            self.bytes = self._max_rss() - self._start


# Operators that only move or convert data: the share of the host's time they take is what autocast's casts and
# memory-format changes cost.
CAST_AND_COPY = ("aten::copy_", "aten::_to_copy", "aten::to", "aten::contiguous", "aten::clone")


def profile_call(what: str, call, device: torch.device, rows: int = 25) -> str:
    """The ``torch.profiler`` table of ``call()``, the ``rows`` operators with the most self time on the device
    (CUDA) or the host (elsewhere), under a line that counts its aten operator calls (nested ones included, as the
    profiler records them), device kernels and the share of host time spent in casts and copies
    (:data:`CAST_AND_COPY`): numbers to compare before and after a change."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    if not cuda:  # Kineto, the profiler's back end, reports the missing GPU as an ERROR line on a CPU machine
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        call()
        synchronize(device)
    events = prof.key_averages()
    host_events = [e for e in events if e.device_type == DeviceType.CPU]
    calls = sum(e.count for e in host_events if e.key.startswith("aten::"))
    kernels = sum(e.count for e in events if e.device_type == DeviceType.CUDA)
    total = sum(e.self_cpu_time_total for e in host_events) or 1
    casts = sum(e.self_cpu_time_total for e in host_events if e.key in CAST_AND_COPY) / total
    head = (f"{what}: {calls} aten operator calls on the host (nested included)"
            + (f", {kernels} CUDA kernels" if cuda else "") + f"; casts and copies {casts:.1%} of host self time")
    return head + "\n" + events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                      row_limit=rows)


def amp_forward(net, x: torch.Tensor, timesteps: torch.Tensor, amp) -> torch.Tensor:
    """One network evaluation under ``amp()`` (the trainer's autocast context), the unit every sampler repeats."""
    with amp():
        return net(x, timesteps)


def run_benchmark(config: RunConfig, steps: int, warmup: int, ddim_steps: int = 0,
                  profile: bool = False) -> BenchResult:
    """Time ``steps`` training steps and ``steps`` forward passes (after ``warmup`` of each) of ``config``'s model;
    with ``profile``, also profile one more training step and one more forward pass (:func:`profile_call`)."""
    from ddpm.train import Trainer  # the training module pulls in TensorBoard's and tqdm's imports

    if steps < 1 or warmup < 0 or ddim_steps < 0:
        raise ConfigError(f"need --steps >= 1, --warmup >= 0 and --ddim-steps >= 0, got {steps}, {warmup}, {ddim_steps}")
    if config.model.class_cond and not config.model.class_names:  # no data here: ten classes, as CIFAR-10's
        model = dataclasses.replace(config.model, class_names=tuple(map(str, range(10))))
        config = dataclasses.replace(config, model=model)
    t, m = config.train, config.model
    device = resolve_device(t.device)
    trainer = Trainer(config, DistInfo(0, 0, 1, device), log=lambda *a, **k: None)
    batch, shape = t.batch_size, (t.batch_size, m.in_channels, m.resolution, m.resolution)
    g = torch.Generator(device).manual_seed(t.seed)
    images = torch.randint(0, 256, shape, generator=g, device=device, dtype=torch.uint8)
    x = torch.randn(shape, generator=g, device=device)
    if t.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    timesteps = trainer.diffusion.sample_timesteps(batch, device, g)
    amp = partial(autocast, device, trainer.amp_dtype)
    net = trainer.train_model  # compiled when --compile

    # Sampling first: its forward passes need less memory than training, so the CPU's peak RSS still grows for both.
    net.eval()
    with torch.no_grad(), PeakMemory(device) as forward_memory:
        for i in range(warmup + steps):
            if i == warmup:
                synchronize(device)
                start = time.perf_counter()
            amp_forward(net, x, timesteps, amp)
        synchronize(device)
        forward_seconds = time.perf_counter() - start
    ddim_seconds = None
    if ddim_steps:
        # Untimed first: a compiled network recompiles for the sampler's inputs (an NCHW x_T), ~20 s for ho2020.
        with torch.no_grad(), amp():
            trainer.diffusion.sample(net, shape, sampler="ddim", steps=2, generator=g, device=device)
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad(), amp():
            trainer.diffusion.sample(net, shape, sampler="ddim", steps=ddim_steps, generator=g, device=device)
        synchronize(device)
        ddim_seconds = time.perf_counter() - start
    net.train()

    with PeakMemory(device) as train_memory:
        for i in range(warmup + steps):
            if i == warmup:
                synchronize(device)
                start = time.perf_counter()
            trainer.train_step(images)  # queues the step; nothing in it waits for the device (on CUDA)
        synchronize(device)
        train_seconds = time.perf_counter() - start
    table = None
    if profile:
        net.eval()
        with torch.no_grad():
            forward = profile_call("one forward pass, no grad (1 NFE)", lambda: amp_forward(net, x, timesteps, amp),
                                   device)
        net.train()
        table = profile_call("one training step", lambda: trainer.train_step(images), device) + "\n\n" + forward

    forward_flops, train_flops = flops_per_image(trainer, x[:1])
    dtype = trainer.amp_dtype or torch.float32
    size = 8192 if device.type == "cuda" else 2048
    peak = matmul_peak(device, dtype, size)
    train_rate, forward_rate = steps * batch / train_seconds, steps * batch / forward_seconds
    return BenchResult(
        preset=config.preset, parameters=count_parameters(trainer.model), batch_size=batch, device=str(device),
        threads=torch.get_num_threads(), dtype=str(dtype).removeprefix("torch."), compile=t.compile,
        channels_last=t.channels_last, steps=steps, warmup=warmup,
        train_images_per_sec=train_rate, train_ms_per_step=1000 * train_seconds / steps,
        forward_images_per_sec=forward_rate, forward_ms_per_pass=1000 * forward_seconds / steps,
        forward_flops_per_image=forward_flops, train_flops_per_image=train_flops,
        train_tflops=train_flops * train_rate / 1e12, forward_tflops=forward_flops * forward_rate / 1e12,
        matmul_peak_tflops=peak / 1e12, matmul_size=size,
        train_share_of_peak=train_flops * train_rate / peak, forward_share_of_peak=forward_flops * forward_rate / peak,
        memory_measure=train_memory.measure, train_peak_memory_bytes=train_memory.bytes,
        forward_peak_memory_bytes=forward_memory.bytes, ddim_steps=ddim_steps, ddim_seconds_per_batch=ddim_seconds,
        profile=table,
    )


def format_table(r: BenchResult) -> str:
    """A few aligned lines for the terminal."""
    options = ", ".join(f"{name} {'on' if on else 'off'}" for name, on in (("compile", r.compile),
                                                                          ("channels_last", r.channels_last)))
    lines = [
        f"{r.preset} preset, {r.parameters:,} parameters, batch {r.batch_size}, {r.device} ({r.threads} threads), "
        f"{r.dtype}, {options}; {r.steps} timed after {r.warmup} warm-up",
        f"{'':26}{'img/s':>10}{'ms/batch':>11}{'GFLOP/img':>11}{'TFLOP/s':>9}{'of peak':>9}{'peak memory':>13}",
    ]
    rows = [("training step", r.train_images_per_sec, r.train_ms_per_step, r.train_flops_per_image, r.train_tflops,
             r.train_share_of_peak, r.train_peak_memory_bytes),
            ("forward, no grad (1 NFE)", r.forward_images_per_sec, r.forward_ms_per_pass, r.forward_flops_per_image,
             r.forward_tflops, r.forward_share_of_peak, r.forward_peak_memory_bytes)]
    for name, rate, ms, flops, tflops, share, memory in rows:
        lines.append(f"{name:26}{rate:10.2f}{ms:11.1f}{flops / 1e9:11.3f}{tflops:9.3f}{share:9.1%}"
                     f"{memory / 2**20:9.0f} MiB")
    if r.ddim_seconds_per_batch is not None:
        lines.append(f"{f'DDIM-{r.ddim_steps} batch':26}{r.batch_size / r.ddim_seconds_per_batch:10.2f}"
                     f"{1000 * r.ddim_seconds_per_batch:11.1f}")
    lines.append(f"matmul peak: {r.matmul_peak_tflops:.3f} TFLOP/s ({r.dtype}, {r.matmul_size}x{r.matmul_size}); "
                 f"FLOPs from FlopCounterMode; peak memory: {r.memory_measure}")
    if r.profile:
        lines += ["", r.profile]
    return "\n".join(lines)
