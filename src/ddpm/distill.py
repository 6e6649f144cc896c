"""Progressive distillation (Salimans & Ho 2022): a student that takes one sampling step where its teacher takes two.

DDIM with eta = 0 (Song et al. 2021, eq. 12) is a deterministic map from noise to images. With N steps its error
is large; with 2N it is smaller. The student starts as a copy of the teacher and learns, at each of its N
timesteps t, the x_0-prediction x~ for which one DDIM step from z_t lands where two of the teacher's land
(Algorithm 2 of Salimans & Ho, here on the discrete schedule):

    z_m = DDIM_teacher(z_t: t -> m),   z_s = DDIM_teacher(z_m: m -> s),
    x~  = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t),

which solves z_s = alpha_s x~ + sigma_s (z_t - alpha_t x~) / sigma_t, the DDIM step t -> s. The student is trained
on the network target that x~ implies (v = alpha eps~ - sigma x~ for a v-network, whose squared error is the
"SNR + 1" weighting of Salimans & Ho's sec. 4). It never sees the data's own x_0 as a target, only the teacher's
two-step endpoint: that is why it can take big steps where a denoiser trained on the data cannot (its best guess
of x_0 from a noisy z_t is a blur; the teacher's endpoint is one sharp image). Then the student becomes the teacher
and the steps halve again, ``teacher_steps`` -> ... -> ``student_steps``.

The timesteps are the ``trailing`` spacing (:mod:`ddpm.spacing`), whose N-step grid is every other point of the
2N-step one, and the last step goes to the clean image (alpha = 1, sigma = 0, where x~ = z_s). For a
class-conditional teacher the first stage's teacher is guided (:func:`ddpm.guidance.guided_model`, both passes), so
the student draws the guided picture in one call per step (guidance distillation at a fixed scale, the simplest form
of Meng et al. 2023); images whose label dropout made them "no class" teach it the unconditional picture too.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.checkpoint import load_latest, list_checkpoints
from ddpm.config import DistillConfig, RunConfig, TrainConfig, make_config, replace, without_paths
from ddpm.distributed import DistInfo
from ddpm.errors import ConfigError
from ddpm.files import atomic_write
from ddpm.guidance import guided_model
from ddpm.model_io import load_model, save_safetensors
from ddpm.samplers import Model
from ddpm.schedules import NoiseSchedule, prediction_target, split_prediction
from ddpm.spacing import time_grid
from ddpm.train import Trainer, resume_config, train
from ddpm.unet import UNet

DEFAULT_TEACHER_STEPS = 16
# The training settings a student starts from, over its teacher's: no warm-up (it starts from trained weights), no
# EMA (each stage ends with the LR at 0), no FID during the run (score the student with `ddpm eval`).
STUDENT_TRAIN = dict(lr=2e-4, warmup_steps=0, lr_schedule="constant", ema_decay=0.0, fid_every=0, max_time=0.0)
# The training flags `ddpm distill` takes; the others are the teacher's or fixed by the method.
TRAIN_FLAGS = ("save_model", "data_dir", "batch_size", "optimizer", "lr", "weight_decay", "grad_clip", "amp", "hflip",
               "seed", "p_uncond", "max_time", "logging_steps", "sync_every", "checkpoint_every", "keep_checkpoints",
               "sample_every", "num_workers", "device", "compile", "skip_bad_images", "max_bad_steps")


def _alpha_sigma(diffusion: NoiseSchedule, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t = sqrt(abar_t) and sigma_t = sqrt(1 - abar_t) per image, shaped like ``like``; t = -1 is the clean
    image (alpha = 1, sigma = 0)."""
    abar = torch.cat([diffusion.alphas_cumprod.double(), torch.ones(1, dtype=torch.float64)])
    a = abar[t.cpu()].to(like.device).view(-1, *([1] * (like.ndim - 1)))
    return a.sqrt().to(like.dtype), (1 - a).sqrt().to(like.dtype)


def ddim_step(model: Model, diffusion: NoiseSchedule, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
              clip: bool = True) -> torch.Tensor:
    """One deterministic DDIM step per image from t to s (s = -1: the clean image), z_s = alpha_s x0 + sigma_s eps
    with (eps, x0) the network's at (z_t, t) (Song et al. 2021, eq. 12 with eta = 0), x0 clipped to [-1, 1] and
    eps recomputed from it when ``clip``, as :func:`ddpm.samplers.ddim_sample` does."""
    alpha_t, sigma_t = _alpha_sigma(diffusion, t, z)
    eps, x0 = split_prediction(model(z, t).float(), z, alpha_t, sigma_t, diffusion.prediction)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (z - alpha_t * x0) / sigma_t
    alpha_s, sigma_s = _alpha_sigma(diffusion, s, z)
    return alpha_s * x0 + sigma_s * eps


@torch.no_grad()
def distillation_target(teacher: Model, diffusion: NoiseSchedule, z_t: torch.Tensor, t: torch.Tensor,
                        mid: torch.Tensor, s: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """x~: the x_0-prediction with which one DDIM step t -> s from ``z_t`` lands where the teacher's two steps
    t -> mid -> s land (Salimans & Ho 2022, Algorithm 2; see the module docstring)."""
    z_s = ddim_step(teacher, diffusion, ddim_step(teacher, diffusion, z_t, t, mid, clip), mid, s, clip)
    alpha_t, sigma_t = _alpha_sigma(diffusion, t, z_t)
    alpha_s, sigma_s = _alpha_sigma(diffusion, s, z_t)
    ratio = sigma_s / sigma_t
    return (z_s - ratio * z_t) / (alpha_s - ratio * alpha_t)


def distillation_loss(student: Model, teacher: Model, diffusion: NoiseSchedule, x0: torch.Tensor,
                      teacher_grid: list[int], generator: torch.Generator | None = None,
                      clip: bool = True) -> torch.Tensor:
    """The student's squared error against the target of :func:`distillation_target`, in its own prediction.

    Each image gets one of the student's steps t -> s at random (t = ``teacher_grid[2k]``, s = ``teacher_grid[2k +
    2]`` or the clean image after the last), z_t = alpha_t x_0 + sigma_t eps from the data (eq. 4), and the
    teacher's step through m = ``teacher_grid[2k + 1]``. ``student`` and ``teacher`` are ``model(x_t, t)``
    callables (conditioning already bound); ``generator`` draws k and eps.
    """
    if len(teacher_grid) % 2:
        raise ValueError(f"a teacher grid of {len(teacher_grid)} steps cannot be halved")
    device = generator.device if generator is not None else x0.device
    batch = x0.shape[0]
    k = torch.randint(0, len(teacher_grid) // 2, (batch,), generator=generator, device=device).cpu()
    grid = torch.tensor([*teacher_grid, -1])
    t, mid, s = grid[2 * k].to(x0.device), grid[2 * k + 1].to(x0.device), grid[2 * k + 2].to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
    alpha_t, sigma_t = _alpha_sigma(diffusion, t, x0)
    z_t = alpha_t * x0 + sigma_t * noise
    x_target = distillation_target(teacher, diffusion, z_t, t, mid, s, clip)
    eps_target = (z_t - alpha_t * x_target) / sigma_t
    target = prediction_target(x_target, eps_target, alpha_t, sigma_t, diffusion.prediction)
    return F.mse_loss(student(z_t, t).float(), target.float())


def student_steps(distill: DistillConfig, stage: int) -> int:
    """The steps of the student of ``stage`` (0: the first halving of ``teacher_steps``)."""
    return distill.teacher_steps // 2 ** (stage + 1)


class DistillTrainer(Trainer):
    """The training loop of :class:`ddpm.train.Trainer` with the distillation loss and its stages.

    Stage k runs ``stage_steps`` optimisation steps with the LR decaying linearly from its peak to 0. At the start
    of stage k + 1 the student's weights become the teacher (unguided from then on: the guidance is in them), the
    optimiser's moments restart and the student's recorded sampling steps halve. The teacher's weights and stage are
    part of every checkpoint, so a resumed run repeats an uninterrupted one bit for bit.
    """

    def __init__(self, config: RunConfig, dist: DistInfo, state: dict | None, log, distill: DistillConfig,
                 teacher: nn.Module):
        self.distill = distill
        super().__init__(config, dist, state, log)
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        if state is None:
            self.teacher_stage = 0
            weights = self.teacher.state_dict()
            self.model.load_state_dict(weights)
            self.ema.model.load_state_dict(weights)
        else:
            self.teacher.load_state_dict(state["teacher"])
            self.teacher_stage = int(state["teacher_stage"])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "teacher": self.teacher.state_dict(), "teacher_stage": self.teacher_stage,
                "distill": dataclasses.asdict(self.distill)}

    def lr_factor(self, step: int) -> float:
        """1 at the start of each stage, falling linearly towards 0 at its end."""
        return 1.0 - (step % self.distill.stage_steps) / self.distill.stage_steps

    def run(self, data, started: float | None = None) -> int | None:
        """:meth:`ddpm.train.Trainer.run`, then the last stage's student as a model file when the run is complete."""
        stopped = super().run(data, started)
        if stopped is None and self.step == self.config.train.total_steps:
            self.log(f"the student: {self.save_student()}; `ddpm sample --load-model` it (or {self.run_dir})")
        return stopped

    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        stage = self.step // self.distill.stage_steps
        if stage != self.teacher_stage:
            self._next_stage(stage)
        return super().train_step(images, labels)

    def student_file(self, steps: int) -> Path:
        """Where the student of ``steps`` steps is written as a model file when its stage ends."""
        return self.run_dir / f"student-{steps}.safetensors"

    def save_student(self) -> Path | None:
        """Write the current stage's student (its EMA weights and recorded sampling) as a model file, on rank 0."""
        if not self.dist.is_main:
            return None
        steps = student_steps(self.distill, self.teacher_stage)
        return save_safetensors(self.config, self.ema.model.state_dict(), self.step, "ema", self.student_file(steps))

    def _next_stage(self, stage: int) -> None:
        self.log(f"stage {self.teacher_stage + 1} done: {self.save_student()}")
        weights = self.ema.model.state_dict()
        self.teacher.load_state_dict(weights)
        self.model.load_state_dict(weights)
        self.optimizer.state.clear()
        self.ema.num_updates = 0
        self.teacher_stage = stage
        self.config = replace(self.config, "diffusion", sampling_steps=student_steps(self.distill, stage))
        self.log(f"stage {stage + 1} of {self.distill.stages()}: {student_steps(self.distill, stage - 1)} -> "
                 f"{student_steps(self.distill, stage)} steps")

    def loss(self, x0: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        scale = 1.0 if self.teacher_stage else self.distill.guidance_scale
        teacher = guided_model(self.teacher, labels, scale)
        student = self.train_model if labels is None else (lambda x, t: self.train_model(x, t, labels))
        grid = time_grid("trailing", self.diffusion, 2 * student_steps(self.distill, self.teacher_stage))
        return distillation_loss(student, teacher, self.diffusion, x0, grid, self.generator)

    def grid_sampling(self) -> dict[str, Any]:
        """The student's own sampling: DDIM on its trailing grid, the guidance built in."""
        return dict(sampler="ddim", steps=student_steps(self.distill, self.teacher_stage), spacing="trailing",
                    guidance_scale=1.0)


# ------------------------------------------------------------------------------------------------------ set-up
def resolve(distill: DistillConfig, teacher: RunConfig) -> DistillConfig:
    """``distill`` with its defaults filled in from the ``teacher``'s config, after refusing what cannot be
    distilled: an eps-predicting teacher, a guidance scale for an unconditional one, steps that do not halve."""
    d, m = teacher.diffusion, teacher.model
    if d.prediction == "eps":
        raise ConfigError("the teacher predicts eps, whose x_0 = (x_t - sigma eps) / alpha is unusable at the few, "
                          "noisy steps of a student (Salimans & Ho 2022, sec. 4); distil a v- or x0-predicting model")
    steps, scale = distill.teacher_steps, distill.guidance_scale
    if d.distilled:
        if d.time_spacing != "trailing" or (steps and steps != d.sampling_steps):
            raise ConfigError(f"the teacher is a student that samples in {d.sampling_steps} {d.time_spacing} steps; "
                              "it can only be halved from those (drop --teacher-steps)")
        if scale not in (None, 1.0):
            raise ConfigError("the teacher is a student with its guidance built in; drop --guidance-scale")
        steps, scale = d.sampling_steps, 1.0
    if scale is not None and not m.class_cond:
        raise ConfigError("the teacher is not class-conditional, so --guidance-scale does not apply")
    resolved = dataclasses.replace(distill, teacher_steps=steps or DEFAULT_TEACHER_STEPS,
                                   guidance_scale=m.guidance_scale if scale is None else scale)
    resolved.check()
    time_grid("trailing", NoiseSchedule.from_config(d), resolved.teacher_steps)  # refuses more steps than T
    return resolved


def student_config(teacher: RunConfig, distill: DistillConfig, train_overrides: dict[str, Any]) -> RunConfig:
    """The student's run config: the teacher's network and schedule with the student's sampling recorded
    (DDIM, trailing, the first stage's steps, guidance built in), and the teacher's training settings under
    :data:`STUDENT_TRAIN` and the given flags, for ``stages x stage_steps`` steps."""
    base = without_paths(teacher).to_dict()
    train = {**base["train"], **STUDENT_TRAIN, **train_overrides,
             "total_steps": distill.stages() * distill.stage_steps}
    diffusion = {**base["diffusion"], "sampler": "ddim", "time_spacing": "trailing", "distilled": True,
                 "sampling_steps": student_steps(distill, 0)}
    return make_config(teacher.preset, {"model": {**base["model"], "guidance_scale": 1.0}, "diffusion": diffusion,
                                        "train": train})


def prepare(distill: DistillConfig, train_overrides: dict[str, Any], resume: bool,
            log=print) -> tuple[RunConfig, DistillConfig, dict | None, nn.Module]:
    """The student's config, the distillation settings, the checkpoint to resume from (or None) and the teacher
    network of a new or resumed ``ddpm distill`` run."""
    run_dir = Path(train_overrides.get("save_model", TrainConfig.save_model))
    if list_checkpoints(run_dir) and not resume:
        raise ConfigError(f"{run_dir} already holds checkpoints; pass --resume to continue that distillation or "
                          "choose another --save-model")
    found = load_latest(run_dir) if resume else None
    if found is not None:
        path, state = found
        if "distill" not in state:
            raise ConfigError(f"{run_dir} is a training run, not a distillation; choose another --save-model")
        saved = DistillConfig(**state["distill"])
        given = {f.name: getattr(distill, f.name) for f in dataclasses.fields(distill)
                 if getattr(distill, f.name) != getattr(DistillConfig(), f.name)}
        changed = [f"{name} ({getattr(saved, name)} in the checkpoint, {value} given)"
                   for name, value in given.items() if value != getattr(saved, name)]
        if changed:
            raise ConfigError(f"cannot resume with different distillation settings: {'; '.join(changed)}")
        config = resume_config(RunConfig.from_dict(state["config"]), None, {"train": train_overrides})
        log(f"resuming from {path} (step {state['step']})")
        return config, saved, state, UNet(config.model)
    if resume:
        log(f"--resume: no checkpoint in {run_dir} yet, starting a new distillation")
    if not distill.teacher:
        raise ConfigError("name the teacher: ddpm distill TEACHER --save-model RUN")
    loaded = load_model(distill.teacher, "cpu")
    distill = resolve(distill, loaded.config)
    return student_config(loaded.config, distill, train_overrides), distill, None, loaded.model


def run(distill: DistillConfig, train_overrides: dict[str, Any], resume: bool, log=print) -> int:
    """Distil (or continue distilling) a teacher into a student; returns the exit code as :func:`ddpm.train.train`."""
    config, distill, state, teacher = prepare(distill, train_overrides, resume, log)
    run_dir = Path(config.train.save_model)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = json.dumps(dataclasses.asdict(distill), indent=2).encode()
    atomic_write(run_dir / "distill.json", lambda f: f.write(settings))
    guidance = f", guidance scale {distill.guidance_scale} built in" if config.model.class_cond else ""
    log(f"progressive distillation of {distill.teacher}: {distill.teacher_steps} -> {distill.student_steps} DDIM "
        f"steps in {distill.stages()} stages of {distill.stage_steps} steps{guidance}")
    return train(config, state, log, lambda c, dist, s, lg: DistillTrainer(c, dist, s, lg, distill, teacher))
