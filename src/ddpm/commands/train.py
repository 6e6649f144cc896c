"""``ddpm train`` (and ``python main.py --train``): train a DDPM; see :mod:`ddpm.train`."""

from __future__ import annotations

import argparse
import dataclasses
import json

from ddpm.commands.options import HelpFormatter, add_config_arguments, add_preset_argument, overrides_from_args
from ddpm.config import make_config
from ddpm.unet import UNet, count_parameters

EXAMPLE = """examples:
  ddpm train --preset tiny --data-dir ./my_images --save-model runs/tiny
  ddpm train --preset ho2020 --amp --compile --save-model runs/ho2020            # CIFAR-10, one GPU
  torchrun --nproc_per_node 8 -m ddpm train --preset ho2020 --save-model runs/ho2020   # eight GPUs
  python main.py --train --time-steps 1000 --total-steps 500000 --warmup-steps 5000 --logging-steps 1000 \\
      --checkpoint 50000 --batch-size 128 --nf 128 --lr 1e-4 --lr-schedule step --steplr-steps 50000 \\
      --steplr-factor 0.5 --save-model ddpm"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a model", description=__doc__.split(";")[0] + ".",
                                   epilog=EXAMPLE, formatter_class=HelpFormatter)
    add_preset_argument(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in --save-model (a new run if there is none)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config and the parameter count, then exit")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = overrides_from_args(args)
    preset = getattr(args, "preset", None)
    # Validated before importing the training modules (torchvision takes seconds), so a bad flag fails at once.
    config = make_config(preset or "seed", overrides)
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2))
        if config.model.class_cond and not config.model.class_names:
            unconditional = dataclasses.replace(config.model, class_cond=False)
            print(f"parameters: {count_parameters(UNet(unconditional))} + {config.model.time_emb_dim} per class and "
                  "one for 'no class' (the class embedding; the classes come from the data)")
        else:
            print(f"parameters: {count_parameters(UNet(config.model))}")
        return 0
    from ddpm.train import prepare_run, train

    config, state = prepare_run(preset, overrides, args.resume)
    return train(config, state)
