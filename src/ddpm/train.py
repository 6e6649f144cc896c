"""The training loop: Algorithm 1 of Ho et al. (2020) with the bookkeeping a long run needs.

Each step draws x_0 from the data, t ~ U{0..T-1} and eps ~ N(0, I), and takes a gradient step on
||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2. Around it: warm-up and LR schedules, AdamW or
Lion, mixed precision, gradient clipping, an EMA of the weights, DistributedDataParallel under ``torchrun``,
TensorBoard and ``metrics.jsonl`` logs, sample grids, atomic checkpoints, exact resume and clean preemption; with
``--class-cond``, the image's label (replaced by "no class" with probability ``--p-uncond``) as a third input.

All randomness of step s on rank r (data order, flips, timesteps, noise, dropout, label dropout) is derived from
(seed, s, r), so a resumed run repeats bit for bit what an uninterrupted one does.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ddpm import __version__
from ddpm.checkpoint import list_checkpoints, load_latest, save_checkpoint
from ddpm.config import (
    RunConfig, config_field, flag_name, make_config, may_change_on_resume, replace,
)
from ddpm.data import StepBatches, derive_seed, iterate_batches, open_training_data, to_device, to_model_range
from ddpm.diffusion import GaussianDiffusion
from ddpm.distributed import DistInfo, amp_dtype, autocast, barrier, cleanup, init_distributed
from ddpm.durations import format_duration
from ddpm.ema import EMA
from ddpm.errors import ConfigError
from ddpm.files import atomic_write
from ddpm.policies import BadSteps, LossWindow, Progress, StopSignal, TimeBudget, due
from ddpm.runlog import FID_METRICS, append_eval, append_metrics, eval_record
from ddpm.unet import UNet, count_parameters

SAMPLE_GRID = 64


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, steplr_steps: int,
              steplr_factor: float) -> float:
    """Multiplier of the peak LR at ``step``: linear warm-up, then constant, step decay or cosine decay to 0."""
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if schedule == "constant":
        return warmup
    if schedule == "step":
        return warmup * steplr_factor ** (step // steplr_steps)
    if schedule == "cosine":
        progress = min(1.0, max(0, step - warmup_steps) / max(1, total_steps - warmup_steps))
        return warmup * 0.5 * (1 + math.cos(math.pi * progress))
    raise ConfigError(f"unknown --lr-schedule {schedule!r}")


def make_optimizer(params, config: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "lion":
        from lion_pytorch import Lion

        return Lion(params, lr=t.lr, weight_decay=t.weight_decay)
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused, foreach=None if fused else True)


def resume_config(saved: RunConfig, preset: str | None, overrides: dict[str, dict[str, Any]]) -> RunConfig:
    """The config of a resumed run: the checkpoint's, with only the fields that may change on resume changed
    (:func:`ddpm.config.may_change_on_resume`).

    Any other explicitly given flag that disagrees with the checkpoint is refused, naming the flags.
    """
    conflicts = []
    if preset is not None and preset != saved.preset:
        conflicts.append(f"--preset ({saved.preset} in the checkpoint, {preset} given)")
    changes: dict[str, dict[str, Any]] = {}
    for section, values in overrides.items():
        saved_section = getattr(saved, section)
        for name, value in values.items():
            old = getattr(saved_section, name)
            if may_change_on_resume(section, name):
                changes.setdefault(section, {})[name] = value
            elif (tuple(value) if isinstance(value, list) else value) != old:
                conflicts.append(f"{flag_name(config_field(section, name))} ({old} in the checkpoint, {value} given)")
    if conflicts:
        raise ConfigError(f"cannot resume with different hyper-parameters: {'; '.join(conflicts)}; drop these flags "
                          "or start a new run with another --save-model")
    base = {s: {k: v for k, v in saved.to_dict()[s].items()} for s in ("model", "diffusion", "train")}
    for section, values in changes.items():
        base[section].update(values)
    return make_config(saved.preset, base)


class Trainer:
    """Owns the model, EMA, optimiser and run directory of one training run (one per rank under torchrun)."""

    def __init__(self, config: RunConfig, dist: DistInfo, state: dict | None = None, log=print):
        self.config, self.dist, self.log = config, dist, log
        m, t = config.model, config.train
        self.device = dist.device
        self.run_dir = Path(t.save_model)
        self.diffusion = GaussianDiffusion.from_config(config.diffusion)
        if m.class_cond and not m.class_names:
            raise ConfigError("a --class-cond run needs the class names of its data (see ddpm.train.with_classes)")

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.model = UNet(m).to(self.device)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, t.ema_decay, t.ema_warmup, t.ema_power)
        self.optimizer = make_optimizer(self.model.parameters(), config, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.amp_dtype = amp_dtype(self.device) if t.amp else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.step, self.elapsed, self.skipped = 0, 0.0, 0
        if state is not None:
            self._load_state(state)

        self.train_model: nn.Module = self.model
        if dist.enabled:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if t.compile:
            self.train_model = torch.compile(self.train_model)
        self.generator = torch.Generator(self.device)
        self.out_of_time = False
        self.last_grid: Path | None = None

    # ---------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
            "config": self.config.to_dict(), "elapsed": self.elapsed, "skipped_steps": self.skipped,
            "world_size": self.dist.world_size, "version": __version__,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.skipped = int(state.get("skipped_steps", 0))

    def save(self) -> Path | None:
        """Checkpoint on rank 0 (all ranks hold the same weights); the others wait for it."""
        path = None
        if self.dist.is_main:
            path = save_checkpoint(self.run_dir, self.step, self.state_dict(), self.config.train.keep_checkpoints)
        barrier(self.dist)
        return path

    def lr_factor(self, step: int) -> float:
        """The multiplier of the peak LR at ``step`` (:func:`lr_factor` with this run's settings)."""
        t = self.config.train
        return lr_factor(step, t.total_steps, t.warmup_steps, t.lr_schedule, t.steplr_steps, t.steplr_factor)

    # ---------------------------------------------------------------------------------------------- one step
    def loss(self, x0: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The loss of one batch of images in [-1, 1]: Algorithm 1's, weighted as ``--loss-weight`` says."""
        t = self.config.train
        return self.diffusion.loss(self.train_model, x0, generator=self.generator, weighting=t.loss_weight,
                                   gamma=t.min_snr_gamma, labels=labels)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on a uint8 batch (with its int64 labels for a class-conditional network); returns
        (loss, gradient norm) as 0-d tensors on the device, the norm NaN for a skipped step.

        A step whose loss or gradient norm is not finite is skipped: weights, optimiser state and EMA stay exactly as
        they were, while the LR schedule, the step count and the EMA's update count move on. The decision is a device
        tensor, so the step never waits for the device where the optimiser takes it as one (see
        :meth:`_optimizer_step`); the loop reads it back at its next sync point.
        """
        t = self.config.train
        self.generator.manual_seed(derive_seed(t.seed, self.step, self.dist.rank))
        torch.manual_seed(derive_seed(t.seed, self.step, self.dist.rank, 1))  # dropout
        x0 = to_model_range(images, t.hflip, self.generator)
        if t.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        if labels is not None:
            labels = drop_labels(labels, t.p_uncond, self.model.num_classes,
                                 torch.Generator().manual_seed(derive_seed(t.seed, self.step, self.dist.rank, 2)))
        with autocast(self.device, self.amp_dtype):
            loss = self.loss(x0, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if t.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip, foreach=True)
        else:  # the norm alone: clipping at infinity would multiply every gradient by 1
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None],
                                                      foreach=True)
        finite = torch.isfinite(grad_norm) & torch.isfinite(loss)
        self._optimizer_step(finite)
        self.ema.update(self.model, finite)
        self.scheduler.step()
        self.step += 1
        return loss.detach(), torch.where(finite, grad_norm, torch.nan)

    def _optimizer_step(self, finite: torch.Tensor) -> None:
        """The optimiser step, taken only if ``finite`` (a 0-d bool tensor on the device).

        With fp16 the gradient scaler decides, as it always has: it skips steps whose gradients overflowed (and lowers
        its scale). Fused AdamW (the CUDA default) is given the decision on the device as ``found_inf``, the input
        GradScaler feeds fused optimisers: at 1.0 its kernel leaves weights and moments alone and its step counts go
        back, with no host read. Lion and AdamW's foreach implementation (CPUs, MPS) have no such input and no exact
        device-side equivalent, so the flag is read on the host, one read per step: free on a CPU, a wait for the
        device elsewhere.
        """
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif getattr(self.optimizer, "_step_supports_amp_scaling", False):
            self.optimizer.found_inf = (~finite).float()
            self.optimizer.step()
            del self.optimizer.found_inf
        elif finite.item():
            self.optimizer.step()

    # ---------------------------------------------------------------------------------------------- the run
    def run(self, data, started: float | None = None) -> int | None:
        """Train until ``total_steps`` or ``max_time`` after ``started`` (a ``time.monotonic()``, default now).

        Returns the signal number if stopped by SIGINT/SIGTERM, else None; :attr:`out_of_time` says whether the
        time budget ended the run. Either way the last step is checkpointed and, unless sample grids are off, drawn.

        Between sync points (:meth:`sync_point`) the loop only queues work on the device; at one it reads the steps'
        results back (counting skipped steps, stopping after too many in a row), asks every rank for the time budget
        and a stop signal, and runs what is due: logging, a grid, FID, a checkpoint. So the budget and a signal take
        effect up to ``sync_every`` steps late, and every checkpoint is written at a sync point.
        """
        t, main = self.config.train, self.dist.is_main
        budget = TimeBudget(t.max_time, time.monotonic() if started is None else started, self.dist)
        reference = self._fid_reference() if t.fid_every and main else None  # fails now, not after hours
        writer = self._writer() if main else None
        progress = Progress(budget, t.total_steps, self.step, enabled=main)
        window, bad_steps = LossWindow(), BadSteps(t.max_bad_steps)
        batches = StepBatches(len(data), t.batch_size, t.seed, self.dist.rank, self.dist.world_size)
        self.out_of_time, stopped = False, None
        try:
            with StopSignal() as stop:
                step_start = time.perf_counter()
                for batch in iterate_batches(data, batches, self.step, t.total_steps, self.device, t.num_workers):
                    window.add(*(self.train_step(*batch) if isinstance(batch, tuple) else self.train_step(batch)))
                    sync = self.sync_point()
                    if sync:  # waits for the device, so that the time of the steps queued is counted
                        self._count_skipped(window.read(), bad_steps)
                    seconds = time.perf_counter() - step_start  # data + step; sampling and saving excluded
                    self.elapsed += seconds
                    window.add_seconds(seconds)
                    if not sync:
                        progress.advance(False)
                        step_start = time.perf_counter()
                        continue
                    if due(self.step, t.logging_steps):
                        metrics = window.close(t.batch_size)
                        if main:
                            self._log_metrics(writer, progress, *metrics)
                    self.out_of_time = budget.spent()
                    progress.advance(self.out_of_time)
                    ending = self.step == t.total_steps or self.out_of_time
                    if main and t.sample_every and (due(self.step, t.sample_every) or ending):
                        self._sample_grid(writer)
                    if due(self.step, t.fid_every):
                        self._log_fid(writer, reference)
                    saved = due(self.step, t.checkpoint_every) or ending
                    if saved:
                        self.save()
                    if self.out_of_time:
                        break
                    if (stopped := stop.requested(self.dist)) is not None:
                        if not saved:
                            self.save()
                        break
                    step_start = time.perf_counter()
        finally:
            progress.close()
            if writer is not None:
                writer.close()
        return stopped

    def sync_point(self) -> bool:
        """Whether the loop reads the device back after this step: every ``sync_every`` steps, at every step that
        logs, draws a grid, scores FID or saves, and at the last one. Ranks agree, since it depends on the step
        alone."""
        t = self.config.train
        return (self.step == t.total_steps
                or any(due(self.step, every) for every in (t.sync_every, t.logging_steps, t.checkpoint_every,
                                                           t.sample_every, t.fid_every)))

    def _count_skipped(self, finite: list[bool], bad_steps: BadSteps) -> None:
        """Count the skipped ones among the steps that ended at this one (``finite``, oldest first) and let
        ``bad_steps`` stop the run, naming the step at which too many in a row were reached."""
        first = self.step - len(finite) + 1
        for i, ok in enumerate(finite):
            self.skipped += not ok
            bad_steps.observe(ok, first + i, self.last_checkpoint)

    def last_checkpoint(self) -> Path | None:
        found = list_checkpoints(self.run_dir)
        return found[-1] if found else None

    def _writer(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def _log_metrics(self, writer, progress: Progress, loss: float, rate: float, grad_norm: float) -> None:
        """One metrics.jsonl line and the TensorBoard scalars: mean loss and gradient norm over the window's finite
        steps, its img/s, the LR and the skipped steps so far."""
        lr = self.scheduler.get_last_lr()[0]
        record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "images_per_sec": rate,
                  "train_sec": self.elapsed, "skipped_steps": self.skipped}
        append_metrics(self.run_dir, record)
        for key in ("loss", "lr", "grad_norm", "images_per_sec"):
            writer.add_scalar(f"train/{key}", record[key], self.step)
        progress.show(step=self.step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")

    def _fid_reference(self):
        """The statistics ``--fid-every`` compares with, loaded once (built-in ones are cached across runs)."""
        from ddpm.datasets import find_cifar10
        from ddpm.evaluate import check_steps
        from ddpm.metrics import load_source, source_kind

        t = self.config.train
        check_steps(self.diffusion, t.fid_sampler, [t.fid_steps])
        data_dir = None  # a built-in reference is read from the training data when that is CIFAR-10, else ./data
        if source_kind(t.fid_reference) == "reference" and t.data_dir and find_cifar10(Path(t.data_dir)):
            data_dir = t.data_dir
        self.log(f"--fid-every {t.fid_every}: reference {t.fid_reference}")
        return load_source(t.fid_reference, data_dir=data_dir, device=self.device.type)

    def _log_fid(self, writer, reference) -> None:
        """Score ``fid_samples`` EMA samples against ``reference`` on the main rank (the others wait): TensorBoard,
        metrics.jsonl and the same eval.jsonl line ``ddpm eval`` writes (:func:`ddpm.runlog.eval_record`)."""
        from ddpm.evaluate import evaluate

        if self.dist.is_main:
            t = self.config.train
            result = evaluate(self.ema.model, self.diffusion, reference, t.fid_samples, t.fid_sampler, t.fid_steps,
                              seed=t.seed, device=self.device, progress=False, amp=self.amp_dtype is not None,
                              guidance_scale=self.config.model.guidance_scale)
            append_eval(self.run_dir, eval_record(result, checkpoint=self.run_dir, step=self.step, weights="ema",
                                                  reference=t.fid_reference, reference_images=reference.num_images))
            append_metrics(self.run_dir, {"step": self.step, **{k: result[k] for k in FID_METRICS}})
            for key in FID_METRICS:
                if result[key] is not None:
                    writer.add_scalar(f"eval/{key}", result[key], self.step)
            self.log(f"step {self.step}: FID {result['fid']:.4f} ({t.fid_samples} samples, {t.fid_sampler} "
                     f"{t.fid_steps} steps, {result['wall_sec']:.0f} s)")
        barrier(self.dist)  # the other ranks wait here rather than in the next all-reduce

    @torch.no_grad()
    def _sample_grid(self, writer) -> None:
        """Samples of the EMA weights (:meth:`grid_sampling`) from fixed noise, so grids of successive steps are
        comparable."""
        from torchvision.utils import make_grid, save_image

        t, m = self.config.train, self.config.model
        generator = torch.Generator().manual_seed(t.seed)
        shape = (SAMPLE_GRID, m.in_channels, m.resolution, m.resolution)
        # A class-conditional network draws image i of class i mod K at its --guidance-scale.
        labels = torch.arange(SAMPLE_GRID) % self.model.num_classes if m.class_cond else None
        with autocast(self.device, self.amp_dtype):
            x = self.diffusion.sample(self.ema.model, shape, generator=generator, device=self.device, labels=labels,
                                      **self.grid_sampling())
        # One column per class when there are few enough classes (image i is of class i mod K).
        k = self.model.num_classes
        columns = k if k is not None and k <= 16 else int(math.sqrt(SAMPLE_GRID))
        grid = make_grid((x.float().cpu() + 1) / 2, nrow=columns)
        out = self.run_dir / "samples"
        out.mkdir(exist_ok=True)
        self.last_grid = out / f"step-{self.step:08d}.png"
        save_image(grid, self.last_grid)
        writer.add_image("samples/ema", grid.clamp(0, 1), self.step)


    def grid_sampling(self) -> dict[str, Any]:
        """How the sample grids are drawn: DDIM with ``--sample-steps`` at the run's guidance scale."""
        return dict(sampler="ddim", steps=min(self.config.train.sample_steps, self.diffusion.timesteps),
                    guidance_scale=self.config.model.guidance_scale)


def drop_labels(labels: torch.Tensor, p_uncond: float, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Label dropout (Ho & Salimans 2021): each label replaced by "no class" (``num_classes``) with probability
    ``p_uncond``, drawn on the CPU from ``generator``, so that one network learns eps(x, c) and eps(x)."""
    drop = to_device(torch.rand(labels.shape[0], generator=generator) < p_uncond, labels.device)
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def with_classes(config: RunConfig, data) -> RunConfig:
    """A --class-cond run's config with the class names of its training ``data`` (:class:`ddpm.data.TrainingData`);
    a resumed run's data must have the classes its checkpoint was trained on."""
    m = config.model
    if not m.class_cond:
        return config
    if m.class_names and tuple(m.class_names) != tuple(data.class_names):
        raise ConfigError(f"the data's classes ({', '.join(data.class_names)}) are not those this run was trained "
                          f"on ({', '.join(m.class_names)}); resume with the same --data-dir")
    return replace(config, "model", class_names=tuple(data.class_names))


def prepare_run(preset: str | None, overrides: dict[str, dict[str, Any]], resume: bool,
                log=print) -> tuple[RunConfig, dict | None]:
    """Resolve the config of a new or resumed run and load the checkpoint to resume from, if any."""
    fresh = make_config(preset or "seed", overrides)
    run_dir = Path(fresh.train.save_model)
    existing = list_checkpoints(run_dir)
    if not resume:
        if existing:
            raise ConfigError(f"{run_dir} already holds checkpoints; pass --resume to continue that run or choose "
                              "another --save-model")
        return fresh, None
    found = load_latest(run_dir)
    if found is None:
        log(f"--resume: no checkpoint in {run_dir} yet, starting a new run")
        return fresh, None
    path, state = found
    saved = RunConfig.from_dict(state["config"])
    config = resume_config(saved, preset, overrides)
    log(f"resuming from {path} (step {state['step']})")
    return config, state


def train(config: RunConfig, state: dict | None = None, log=print, make_trainer=Trainer) -> int:
    """Run (or continue) training; returns the process exit code (0, or 128 + signal when preempted).

    ``make_trainer(config, dist, state, log)`` builds the :class:`Trainer` (distillation passes its own).
    """
    dist = init_distributed(config.train.device)
    try:
        return _train(config, state, dist, log if dist.is_main else (lambda *a, **k: None), make_trainer)
    finally:
        cleanup(dist)


def _train(config: RunConfig, state: dict | None, dist: DistInfo, log, make_trainer) -> int:
    started = time.monotonic()  # --max-time counts from here: data loading and compilation included
    t = config.train
    run_dir = Path(t.save_model)
    if dist.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create run directory {run_dir}: {exc.strerror}") from None
        atomic_write(run_dir / "config.json", lambda f: f.write(json.dumps(config.to_dict(), indent=2).encode()))
    backend = f" ({torch.distributed.get_backend()} DistributedDataParallel)" if dist.enabled else ""
    log(f"rank {dist.rank} of world size {dist.world_size} on {dist.device}{backend}")
    # Rank 0 downloads/decodes first so that the others find the data in place.
    m = config.model

    def open_data():
        return open_training_data(t.data_dir, m.resolution, t.skip_bad_images, t.num_workers, channels=m.in_channels,
                                  labelled=m.class_cond)

    data = open_data() if dist.is_main else None
    barrier(dist)
    if data is None:
        data = open_data()
    if m.class_cond:
        config = with_classes(config, data)
        if dist.is_main:
            atomic_write(run_dir / "config.json", lambda f: f.write(json.dumps(config.to_dict(), indent=2).encode()))
    trainer = make_trainer(config, dist, state, log)
    log(f"data: {data.description}")
    if config.model.class_cond:
        log(f"classes: {', '.join(config.model.class_names)}; labels dropped with probability {t.p_uncond}")
    log(f"model: {count_parameters(trainer.model):,} parameters ({config.preset} preset); run directory {run_dir}")
    if t.max_time:
        log(f"time budget: {format_duration(t.max_time)} of wall-clock time, then a checkpoint and a sample grid")
    stopped = trainer.run(data, started)
    grid = f"; samples: {trainer.last_grid}" if trainer.last_grid else ""
    if stopped is not None:
        log(f"stopped by {signal.Signals(stopped).name} at step {trainer.step}; checkpoint saved in {run_dir}; "
            "continue with --resume")
        return 128 + stopped
    images = trainer.step * t.batch_size
    summary = f"{trainer.step} steps ({images:,} images) in {format_duration(trainer.elapsed)} of training"
    if trainer.out_of_time:
        log(f"time budget of {format_duration(t.max_time)} reached: {summary}; checkpoint in {run_dir}{grid}; "
            "continue with --resume")
    else:
        log(f"done: {summary}; checkpoints in {run_dir}{grid}")
    return 0
