"""``ddpm distill``: progressive distillation of a trained model into a student that samples in a few steps; see
:mod:`ddpm.distill`.

The student starts as a copy of TEACHER and learns to take one DDIM step where the teacher takes two; each stage
halves the steps, from ``--teacher-steps`` to ``--student-steps``. A class-conditional teacher's first stage is
guided at ``--guidance-scale``, so the student draws that picture in one network call per step. The run directory
is an ordinary run: ``ddpm sample --load-model RUN`` samples the student with its own steps, and ``--resume``,
``--max-time``, checkpoints and sample grids work as in ``ddpm train``; each stage's student is also written as
``RUN/student-N.safetensors``. The training flags default to the teacher's settings, except --lr 2e-4, no warm-up,
no EMA and no --max-time (each stage's LR decays linearly to 0); --save-model and --data-dir to their usual
defaults.
"""

from __future__ import annotations

import argparse

from ddpm.commands.options import MODEL_SOURCES, HelpFormatter, add_config_arguments, overrides_from_args
from ddpm.config import DistillConfig, TrainConfig

EXAMPLE = """example (the shipped conditional model, CIFAR-10 from the JPEG archive, 16 -> 2 steps on a CPU):
  ddpm distill models/ddpm-cifar10-cpu.safetensors --data-dir cifar10-jpeg.tar.gz --save-model runs/student \\
      --max-time 2h
  ddpm distill models/ddpm-cifar10-cpu.safetensors --data-dir cifar10-jpeg.tar.gz --save-model runs/student --resume
  ddpm sample --load-model runs/student --class horse"""

# The training flags distillation takes (the rest are the teacher's or the method's; see ddpm.distill).
SECTIONS = {"distill": DistillConfig, "train": TrainConfig}


def register(subparsers) -> None:
    from ddpm.distill import TRAIN_FLAGS

    parser = subparsers.add_parser("distill", help="distil a model into a few-step student",
                                   description=__doc__,
                                   epilog=EXAMPLE, formatter_class=HelpFormatter)
    parser.add_argument("teacher", metavar="TEACHER", nargs="?", default=None,
                        help=f"the model to distil: {MODEL_SOURCES} (may be left out with --resume)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in --save-model (a new run if there is none)")
    add_config_arguments(parser, SECTIONS, only={"train": TRAIN_FLAGS},
                         defaults={"distill": "{shown}", "train": "the teacher's; see above"})
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ddpm import distill

    overrides = overrides_from_args(args, SECTIONS)
    settings = DistillConfig(**overrides.get("distill", {}), **({"teacher": args.teacher} if args.teacher else {}))
    return distill.run(settings, overrides.get("train", {}), args.resume)
