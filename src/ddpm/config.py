"""Typed configuration: the single source of truth for defaults, presets, CLI flags and checkpoints.

Three dataclasses describe a run. :class:`ModelConfig` rebuilds the network, :class:`DiffusionConfig` the
noise schedule, :class:`TrainConfig` the optimisation. Every field carries its help text (and, where the
original command line spelt it differently, its flag) in ``metadata``, so ``--help``, the presets and the
``config.json`` saved with each run can never disagree. The field defaults are the ``seed`` preset, the
original project's "Parameters used"; the other presets are lists of overrides.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ddpm.durations import parse_duration
from ddpm.errors import ConfigError
from ddpm.presets import PRESETS
from ddpm.samplers import SAMPLERS  # the live registry: a sampler registered later is a valid choice too
from ddpm.schedules import PREDICTIONS, SCHEDULES, VARIANCES, NoiseSchedule
from ddpm.spacing import SPACINGS


DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_HELP = "device (auto: CUDA when available, else Apple's MPS, else the CPU)"
LOSS_WEIGHTS = ("uniform", "min-snr")
# Precision/recall use each sample's 3rd nearest neighbour, so every evaluation needs at least 4 samples.
MIN_EVAL_SAMPLES = 4


def _opt(default: Any, help: str, flag: str | None = None, choices: tuple | None = None, resume: bool = False,
         bound: str | None = None, path: bool = False, cli: bool = True, **extra: Any):
    """A dataclass field whose metadata describes its command-line flag and its rules.

    ``flag``: the flag's name where it is not ``--field-name``; ``choices``: the allowed values; ``resume``: may
    differ between a checkpoint and the command that resumes it (bookkeeping, not the hyper-parameters that shape
    what is learnt); ``bound``: the values allowed, ``"positive"``, ``"non_negative"`` or an interval such as
    ``"[0, 1)"``, checked by :func:`validate` (:func:`check_bound`); ``path``: names
    a file or folder of the machine the run is on, which exported models leave out (:func:`without_paths`);
    ``cli``: whether the field has a flag (False: it is filled in from the data, e.g. the class names);
    ``extra``: argparse settings (``type``, ``metavar``, ``nargs``).
    """
    meta = {"help": help, "flag": flag, "choices": choices, "resume": resume, "bound": bound, "path": path,
            "cli": cli, **extra}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    """The UNet (see :mod:`ddpm.unet` for how each field shapes it)."""

    resolution: int = _opt(32, "image side length in pixels (square images)", bound="positive")
    in_channels: int = _opt(3, "image channels", bound="positive")
    nf: int = _opt(32, "base channel count of the UNet", bound="positive")
    ch_mult: tuple[int, ...] = _opt((1, 2, 4), "channel multiplier per resolution level", nargs="+")
    num_res_blocks: int = _opt(2, "residual blocks per encoder level", bound="positive")
    attn_resolutions: tuple[int, ...] = _opt((8, 4), "resolutions (pixels) that get self-attention", nargs="+")
    dropout: float = _opt(0.1, "dropout rate inside residual blocks", bound="[0, 1)")
    time_emb_dim: int = _opt(512, "width of the timestep embedding fed to every residual block", bound="positive")
    activation: str = _opt("relu", "activation function", choices=("relu", "silu"))
    norm_groups: int = _opt(32, "GroupNorm groups; must divide every channel count", bound="positive")
    skip: str = _opt(
        "level",
        "'level': one skip per level, learned k4s2 down/up-sampling (the original network); "
        "'block': a skip from every block, conv/nearest resampling (Ho et al.)",
        choices=("level", "block"),
    )
    attention_heads: int = _opt(1, "heads in each self-attention block (when --attention-head-dim is 0)",
                                bound="positive")
    attention_head_dim: int = _opt(
        0, "channels per self-attention head, so that wider blocks get more heads (diffusers' attention_head_dim); "
           "0: --attention-heads heads in every block", bound="non_negative")
    norm_eps: float = _opt(1e-5, "epsilon of every GroupNorm (PyTorch's default; Ho et al.'s TensorFlow code: 1e-6)",
                           bound="positive")
    downsample_padding: str = _opt(
        "symmetric",
        "padding of the stride-2 3x3 down-sampling convolution of 'block' UNets: 'symmetric' (1 pixel on every side) "
        "or 'same' (TensorFlow's SAME: 1 pixel right and bottom only, as in Ho et al.'s code)",
        choices=("symmetric", "same"),
    )
    time_cos_first: bool = _opt(
        False, "timestep embedding: cosines before sines (diffusers' flip_sin_to_cos; Ho et al.: sines first)")
    time_freq_shift: int = _opt(
        1, "timestep embedding frequencies are 10000^(-i / (nf/2 - shift)), i < nf/2: 1 in Ho et al.'s code, "
           "0 in Vaswani et al. (diffusers' freq_shift)")
    grad_checkpoint: bool = _opt(False, "recompute residual blocks in the backward pass to save memory", resume=True)
    class_cond: bool = _opt(
        False, "class-conditional network: a learned class embedding (one row per class and one for 'no class') "
               "added to the timestep embedding; the classes are the data's (CIFAR-10's labels, or one sub-folder "
               "per class, sorted by name), see --p-uncond and --guidance-scale")
    class_names: tuple[str, ...] = _opt(
        (), "the classes of a --class-cond network, in label order; filled in from the data", cli=False)
    guidance_scale: float = _opt(
        1.0, "classifier-free guidance scale s that sampling uses when given none, eps = eps(x, no class) + s "
             "(eps(x, c) - eps(x, no class)): 1 is the plain conditional model, 0 the unconditional one (Ho & "
             "Salimans' w = s - 1); `ddpm export --guidance-scale` sets it after a sweep", resume=True,
        bound="non_negative")


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process q(x_t | x_0) and the reverse-process variance (Ho et al. 2020, sec. 2-3)."""

    timesteps: int = _opt(1000, "diffusion steps T", flag="--time-steps", bound="positive")
    # None scales Ho et al.'s range to T, so that x_T is noise at any T; a number is used as given (see
    # ddpm.schedules.linear_beta_range). Checkpoints saved before the scaling hold numbers: they keep their schedule.
    beta_start: float | None = _opt(None, "beta_1 of the linear schedule, used as given; None: 1e-4 x 1000/T, Ho et "
                                          "al.'s value for T = 1000 scaled to reach noise at any T (Nichol & Dhariwal)")
    beta_end: float | None = _opt(None, "beta_T of the linear schedule, used as given; None: 0.02 x 1000/T, Ho et "
                                        "al.'s value for T = 1000 scaled to reach noise at any T (Nichol & Dhariwal)")
    schedule: str = _opt("linear", "noise schedule", choices=SCHEDULES)
    variance: str = _opt(
        "fixed_large",
        "reverse-process variance sigma_t^2: beta_t ('fixed_large', Ho's CIFAR-10 choice) "
        "or the posterior beta-tilde_t ('fixed_small')",
        choices=VARIANCES,
    )
    prediction: str = _opt(
        "eps",
        "what the network predicts: 'eps', the noise (Ho et al.); 'x0', the clean image; 'v' = sqrt(alpha-bar) eps - "
        "sqrt(1 - alpha-bar) x0 (Salimans & Ho 2022). Every sampler, the loss and the diffusers export follow it",
        choices=PREDICTIONS,
    )
    sampler: str = _opt("ddpm", "the sampler that sampling uses when given none; `ddpm export --sampler` records a "
                                "measured choice", choices=SAMPLERS, cli=False)
    time_spacing: str = _opt("uniform", "where that sampler's steps go (ddpm.spacing)", choices=SPACINGS, cli=False)
    sampling_steps: int = _opt(0, "that sampler's network calls per image; 0: its own default", cli=False,
                               bound="non_negative")
    distilled: bool = _opt(False, "a student of `ddpm distill`: its network is right only at its recorded sampler's "
                                  "timesteps, with the guidance of its teacher built in", cli=False)

    def sampling(self, sampler: str | None, steps: int | None, spacing: str | None) -> tuple[str, int | None, str]:
        """The (sampler, steps, spacing) to sample with: those given, the rest from this file's recommendation when
        no other sampler is asked for; another sampler gets its own defaults (uniform spacing; None steps: all T
        for ddpm, 50 for the others), so ``--sampler ddpm`` alone is Ho et al.'s sampler."""
        if sampler is None or sampler == self.sampler:
            return (self.sampler, (self.sampling_steps or None) if steps is None else steps,
                    spacing or self.time_spacing)
        return sampler, steps, spacing or "uniform"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data and bookkeeping of a training run."""

    save_model: str = _opt("runs/ddpm", "run directory: checkpoints, config, samples and logs go here", resume=True,
                           path=True)
    data_dir: str | None = _opt(
        None,
        "training images: a folder (recursive), a .zip/.tar(.gz) of images, or a folder holding "
        "cifar-10-batches-py/ or cifar-10-python.tar.gz; default: CIFAR-10 in ./data (downloaded if absent)",
        resume=True, path=True,
    )
    total_steps: int = _opt(1_000_000, "optimisation steps", resume=True, bound="positive")
    batch_size: int = _opt(512, "global batch size (split across ranks under torchrun)", bound="positive")
    optimizer: str = _opt("lion", "optimiser", choices=("lion", "adamw"))
    lr: float = _opt(1e-5, "peak learning rate", bound="(0, 1)")
    weight_decay: float = _opt(0.0, "decoupled weight decay", bound="non_negative")
    lr_schedule: str = _opt("constant", "learning-rate schedule after warm-up", choices=("constant", "step", "cosine"))
    warmup_steps: int = _opt(5000, "linear learning-rate warm-up steps", bound="non_negative")
    steplr_steps: int = _opt(100_000, "period of the 'step' schedule", bound="positive")
    steplr_factor: float = _opt(0.5, "factor applied every --steplr-steps by the 'step' schedule", bound="(0, 1]")
    grad_clip: float = _opt(0.0, "clip the global gradient norm to this value (0: off)", bound="non_negative")
    loss_weight: str = _opt(
        "uniform",
        "weight of each timestep's squared error: 'uniform' (Ho et al.'s L_simple) or 'min-snr', min(SNR, gamma) "
        "expressed for --prediction (Hang et al. 2023): eps: min(SNR, gamma)/SNR, x0: min(SNR, gamma), v: "
        "min(SNR, gamma)/(SNR + 1)", choices=LOSS_WEIGHTS)
    min_snr_gamma: float = _opt(5.0, "gamma of --loss-weight min-snr (Hang et al.'s default: 5)", bound="positive")
    ema_decay: float = _opt(0.9999, "decay of the exponential moving average of the weights (0: off); with a "
                                    "warm-up, the value the decay grows towards", bound="[0, 1)")
    ema_warmup: str = _opt(
        "power",
        "EMA decay warm-up (see ddpm.ema): 'power': 1 - (1 + n)^-EMA_POWER (diffusers, ema_pytorch), 'tf': "
        "(1 + n) / (10 + n) (TensorFlow's num_updates), 'none': the fixed decay of Ho et al.; each capped at "
        "--ema-decay", choices=("power", "tf", "none"))
    ema_power: float = _opt(2 / 3, "exponent of the 'power' EMA warm-up: 2/3 reaches 0.999 at 31.6k steps and 0.9999 "
                                   "at 1M, 3/4 reaches them at 10k and 215k", bound="positive")
    amp: bool = _opt(False, "mixed precision: bf16 where the device computes it (GPUs since Ampere, CPUs with "
                                   "AVX-512/AMX), fp16 with a gradient scaler on older GPUs and MPS; float32, with a "
                                   "warning, on a CPU without bf16 instructions")
    hflip: bool = _opt(True, "random horizontal flips")
    seed: int = _opt(0, "random seed; with the same seed a CPU run is reproducible")
    p_uncond: float = _opt(0.1, "probability that a --class-cond run replaces an image's label by 'no class' (label "
                                "dropout, Ho & Salimans 2021), so that one network is also unconditional",
                           bound="[0, 1]")
    max_time: float = _opt(0.0, "stop cleanly after this much wall-clock time of this invocation, with a checkpoint "
                                "and a sample grid (e.g. 2h, 90m, 1h30m, 45s, or seconds; 0: no limit; checked every "
                                "--sync-every steps, so a run may go over by that many); --resume continues the run",
                           type=parse_duration, metavar="DURATION", resume=True, bound="non_negative")
    logging_steps: int = _opt(1000, "write metrics every this many steps", resume=True, bound="positive")
    sync_every: int = _opt(
        10, "wait for the device only every this many steps (and at each logging, checkpoint, sample-grid and FID "
            "step), the host queueing steps in between: only then are non-finite steps counted and every rank "
            "asked for the time budget and SIGINT/SIGTERM, so --max-time may go over, and a signal's checkpoint come, "
            "up to this many steps late", resume=True, bound="positive")
    checkpoint_every: int = _opt(50_000, "save a checkpoint every this many steps", flag="--checkpoint",
                                 resume=True, bound="positive")
    keep_checkpoints: int = _opt(3, "keep the newest K checkpoints", resume=True, bound="positive")
    sample_every: int = _opt(10_000, "save a sample grid from the EMA weights every this many steps (0: off)",
                             resume=True, bound="non_negative")
    sample_steps: int = _opt(100, "DDIM steps used for the --sample-every grids", resume=True, bound="positive")
    fid_every: int = _opt(0, "FID/KID/precision/recall of the EMA weights every this many steps (0: off); slow on "
                             "a CPU, see docs/fid.md", resume=True, bound="non_negative")
    fid_samples: int = _opt(5000, "samples drawn for each --fid-every evaluation (image i uses seed --seed + i)",
                            resume=True)
    fid_sampler: str = _opt("ddim", "sampler of the --fid-every evaluations", choices=SAMPLERS, resume=True)
    fid_steps: int = _opt(50, "sampling steps of the --fid-every evaluations", resume=True, bound="positive")
    fid_reference: str = _opt(
        "cifar10-train",
        "reference of the --fid-every evaluations: anything `ddpm fid` takes as B (a built-in CIFAR-10 name, whose "
        "statistics are computed once from the pickles in --data-dir or ./data and cached, a folder, an archive, "
        "an .npz of images or of statistics)", resume=True, path=True)
    num_workers: int = _opt(2, "data-loading worker processes (image folders too large for memory)",
                            resume=True, bound="non_negative")
    device: str = _opt("auto", DEVICE_HELP, choices=DEVICES, resume=True)
    compile: bool = _opt(False, "torch.compile the model", resume=True)
    channels_last: bool = _opt(False, "use the channels_last memory format (faster convolutions on GPUs)", resume=True)
    skip_bad_images: bool = _opt(False, "warn about unreadable images and skip them instead of stopping", resume=True)
    max_bad_steps: int = _opt(5, "stop after this many consecutive non-finite losses or gradients",
                              resume=True, bound="positive")


@dataclass(frozen=True)
class DistillConfig:
    """Progressive distillation (Salimans & Ho 2022) of a teacher into a student that samples in fewer steps."""

    teacher: str = _opt("", "the teacher: a model file, checkpoint or run directory", cli=False, path=True)
    teacher_steps: int = _opt(
        0, "DDIM steps (trailing spacing) of the teacher that the first student halves, a power of two; 0: a "
           "distilled teacher's own, else 16", bound="non_negative")
    student_steps: int = _opt(2, "the final student's steps (network calls per image), a power of two; each stage "
                                 "halves the steps", bound="positive")
    stage_steps: int = _opt(2000, "optimisation steps of each halving, the LR decaying linearly to 0 in each",
                            bound="positive")
    guidance_scale: float | None = _opt(
        None, "class-conditional teachers: the guidance scale that the first student learns to draw in one call "
              "per step; none given: the teacher file's recommended scale")

    def stages(self) -> int:
        """The number of halvings from ``teacher_steps`` to ``student_steps``."""
        return int(math.log2(self.teacher_steps // self.student_steps))

    def check(self) -> None:
        """Refuse values out of their bounds and step counts that halving cannot connect."""
        for f in fields(self):
            if f.metadata["bound"]:
                check_bound(flag_name(f), getattr(self, f.name), f.metadata["bound"])
        for flag, n in (("--teacher-steps", self.teacher_steps), ("--student-steps", self.student_steps)):
            if n & (n - 1):
                raise ConfigError(f"{flag} must be a power of two for progressive distillation (each stage halves "
                                  f"the steps), got {n}")
        if self.student_steps >= self.teacher_steps:
            raise ConfigError(f"--student-steps ({self.student_steps}) must be fewer than the teacher's steps "
                              f"({self.teacher_steps})")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; saved as ``config.json`` and inside every checkpoint."""

    preset: str = "seed"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Plain JSON-able data (lists, numbers, strings), safe for ``torch.load(weights_only=True)``."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take :data:`LEGACY_DEFAULTS`, else
        the field defaults."""
        try:
            return cls(
                preset=data.get("preset", "seed"),
                **{name: _from_dict(section, {**LEGACY_DEFAULTS.get(name, {}), **data.get(name, {})})
                   for name, section in SECTIONS.items()},
            )
        except TypeError as exc:
            raise ConfigError(f"config does not match this version of ddpm: {exc}") from None


def _from_dict(cls, data: dict):
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {sorted(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


SECTIONS: dict[str, type] = {"model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig}


def flag_name(field: dataclasses.Field) -> str:
    """The command-line flag of a config field: its ``flag`` metadata, else ``--field-name``."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def config_field(section: str, name: str) -> dataclasses.Field:
    """The field ``name`` of the config section ``section`` ("model", "diffusion" or "train")."""
    return {f.name: f for f in fields(SECTIONS[section])}[name]


def may_change_on_resume(section: str, name: str) -> bool:
    """Whether a resumed run may give this field another value than its checkpoint holds (``resume`` metadata)."""
    return config_field(section, name).metadata["resume"]

# Fields added after checkpoints were already written, with the value that reproduces what such an older checkpoint
# was trained with: a key missing from a saved config takes this, not today's default, so a resume stays exact.
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {"ema_warmup": "tf"},
}

def make_config(preset: str = "seed", overrides: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """The preset's config with ``overrides`` (section -> field -> value) applied on top, validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    sections = {}
    for name, cls in SECTIONS.items():
        values = {**PRESETS[preset].get(name, {}), **(overrides or {}).get(name, {})}
        sections[name] = cls(**values)
    config = RunConfig(preset=preset, **sections)
    validate(config)
    return config


def replace(config: RunConfig, section: str, **changes: Any) -> RunConfig:
    """A copy of ``config`` with some fields of one section changed (configs are immutable)."""
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **changes)})


def without_paths(config: RunConfig) -> RunConfig:
    """``config`` with every field that names a file or folder (``path`` metadata) back at its default.

    What an exported model keeps: the run and data directories of the machine it was trained on mean nothing
    elsewhere, and nothing that rebuilds the model depends on them.
    """
    for section in SECTIONS:
        values = getattr(config, section)
        defaults = {f.name: f.default for f in fields(values) if f.metadata["path"]}
        if defaults:
            config = replace(config, section, **defaults)
    return config


def num_downsamples(model: ModelConfig) -> int:
    """'level' UNets halve after every level (bottleneck below the last); 'block' ones between levels."""
    return len(model.ch_mult) if model.skip == "level" else len(model.ch_mult) - 1


_INTERVAL = re.compile(r"([\[(])(\S+), (\S+)([\])])")


def check_bound(flag: str, value: float, bound: str) -> None:
    """Raise ConfigError unless ``value`` is finite and within ``bound``: ``"positive"``, ``"non_negative"`` or an
    interval written as in mathematics, e.g. ``"(0, 1]"``."""
    if not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, got {value}")
    if bound == "positive" and not value > 0:
        raise ConfigError(f"{flag} must be positive, got {value}")
    if bound == "non_negative" and not value >= 0:
        raise ConfigError(f"{flag} must be >= 0, got {value}")
    if bound in ("positive", "non_negative"):
        return
    match = _INTERVAL.fullmatch(bound)
    if match is None:
        raise ValueError(f"unknown bound {bound!r} of {flag}")  # a mistake in this file, not the user's
    opening, low, high, closing = match.groups()
    above = value >= float(low) if opening == "[" else value > float(low)
    below = value <= float(high) if closing == "]" else value < float(high)
    if not (above and below):
        raise ConfigError(f"{flag} must be in {bound}, got {value}")


def validate(config: RunConfig) -> None:
    """Refuse configurations that would crash later or train something silently wrong; warn about a schedule whose
    x_T is not pure noise (:class:`ddpm.schedules.ScheduleWarning`), which old checkpoints may still hold."""
    m, d, t = config.model, config.diffusion, config.train
    for section in SECTIONS:
        values = getattr(config, section)
        for f in fields(values):
            if f.metadata["bound"]:
                check_bound(flag_name(f), getattr(values, f.name), f.metadata["bound"])
    if m.class_names and not m.class_cond:
        raise ConfigError("class names belong to a --class-cond network")
    if len(set(m.class_names)) != len(m.class_names):
        raise ConfigError(f"class names must be distinct, got {list(m.class_names)}")
    if m.guidance_scale != 1.0 and not m.class_cond:
        raise ConfigError(f"--guidance-scale {m.guidance_scale} needs a class-conditional network (--class-cond)")
    if d.sampler not in SAMPLERS or d.time_spacing not in SPACINGS:
        raise ConfigError(f"unknown recommended sampler {d.sampler!r} or spacing {d.time_spacing!r}; choose from "
                          f"{', '.join(SAMPLERS)} and {', '.join(SPACINGS)}")
    if t.fid_every and t.fid_samples < MIN_EVAL_SAMPLES:
        raise ConfigError(f"--fid-samples must be at least {MIN_EVAL_SAMPLES}, got {t.fid_samples}")
    if not 0 <= m.time_freq_shift < m.nf // 2:  # nf/2 frequencies spaced over (nf/2 - shift) intervals
        raise ConfigError(f"the timestep embedding needs nf/2 > --time-freq-shift >= 0 (its nf/2 frequencies are "
                          f"spaced over nf/2 - shift intervals), got --nf {m.nf} and --time-freq-shift "
                          f"{m.time_freq_shift}")
    if not all(math.isfinite(b) for b in (d.beta_start, d.beta_end) if b is not None):
        raise ConfigError("--beta-start and --beta-end must be finite numbers")
    if m.skip == "level" and m.downsample_padding != "symmetric":
        raise ConfigError("--downsample-padding applies to the 3x3 down-sampling of --skip block; the k4 convolutions "
                          "of --skip level always pad symmetrically")
    # Building the schedule refuses a linear beta range outside (0, 1) and warns when x_T is not pure noise.
    NoiseSchedule.from_config(d)
    if not m.ch_mult or any(c <= 0 for c in m.ch_mult):
        raise ConfigError(f"--ch-mult must be positive integers, got {list(m.ch_mult)}")
    downs = num_downsamples(m)
    if m.resolution % (2**downs):
        raise ConfigError(
            f"--resolution {m.resolution} cannot be halved {downs} times (the UNet's down-sampling steps); "
            f"use a multiple of {2**downs} or fewer --ch-mult levels"
        )
    reachable = {m.resolution // 2**i for i in range(downs + 1)}
    missing = sorted(set(m.attn_resolutions) - reachable)
    if missing:
        raise ConfigError(
            f"--attn-resolutions {missing} are never reached by the UNet (its resolutions are "
            f"{sorted(reachable, reverse=True)}); change --attn-resolutions, --resolution or --ch-mult"
        )
    for c in {m.nf * k for k in m.ch_mult}:
        if c % m.norm_groups:
            raise ConfigError(
                f"GroupNorm with {m.norm_groups} groups cannot divide {c} channels (--nf {m.nf} x --ch-mult); "
                f"pick --nf divisible by {m.norm_groups} or change --norm-groups"
            )
        if m.attention_head_dim and c % m.attention_head_dim:
            raise ConfigError(f"--attention-head-dim {m.attention_head_dim} must divide every channel count ({c})")
        if not m.attention_head_dim and c % m.attention_heads:
            raise ConfigError(f"--attention-heads {m.attention_heads} must divide every channel count ({c})")
