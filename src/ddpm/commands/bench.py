"""``ddpm bench``: training and sampling throughput, FLOP/s and peak memory of a preset on one device.

Times the real training step (:meth:`ddpm.train.Trainer.train_step`: forward, backward, clipping, optimiser, EMA) and
the forward pass a sampler repeats, counts FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` and compares the
achieved FLOP/s with a large matmul timed on the same device in the same dtype. See :mod:`ddpm.bench`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from ddpm.commands.options import HelpFormatter, add_preset_argument
from ddpm.config import DEVICE_HELP, DEVICES

EXAMPLE = """examples:
  ddpm bench --preset tiny --device cpu
  ddpm bench --preset ho2020 --batch-size 128 --amp --compile --channels-last --device cuda
  ddpm bench --preset ho2020 --batch-size 16 --device cpu --steps 3 --warmup 1 --ddim-steps 50 --json
  ddpm bench --preset ho2020 --batch-size 128 --amp --device cuda --profile   # where one step's time goes"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="measure training and sampling speed", description=__doc__,
                                   epilog=EXAMPLE, formatter_class=HelpFormatter)
    add_preset_argument(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="images per step; None: the preset's batch size")
    parser.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model, as `ddpm train --compile`")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision as `ddpm train --amp`; presets that train with it (cpu) are measured with it "
                             "only when this flag is given")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps, and as many timed forward passes")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps and passes before the timed ones (compilation, allocator, kernel choice)")
    parser.add_argument("--ddim-steps", type=int, default=0, help="also time one DDIM batch of this many steps (0: off)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one more training step and one more forward pass with torch.profiler and "
                             "print their tables (operators by self time, the number of operator calls and CUDA "
                             "kernels, the share of time in casts and copies); under --json it is the 'profile' field")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ddpm.bench import format_table, run_benchmark
    from ddpm.config import make_config

    # --amp alone decides: a preset that trains with it (cpu) is measured in float32 unless it is given.
    train = dict(device=args.device, compile=args.compile, channels_last=args.channels_last, amp=args.amp)
    if args.batch_size is not None:
        train["batch_size"] = args.batch_size
    config = make_config(getattr(args, "preset", None) or "seed", {"train": train})
    result = run_benchmark(config, args.steps, args.warmup, args.ddim_steps, args.profile)
    print(json.dumps(dataclasses.asdict(result), indent=2) if args.json else format_table(result))
    return 0
