"""``ddpm export``: write a run's EMA weights as .safetensors with the config in the file's metadata.

The file alone rebuilds the model: ``ddpm sample --load-model model.safetensors``.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ddpm.cli import HelpFormatter

    parser = subparsers.add_parser("export", help="export weights as safetensors", description=__doc__,
                                   formatter_class=HelpFormatter)
    parser.add_argument("run", metavar="RUN", help="run directory (its newest checkpoint) or checkpoint .pt")
    parser.add_argument("--output", required=True, metavar="FILE.safetensors", help="file to write")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA or raw training weights")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ddpm.checkpoint import export_safetensors

    path = export_safetensors(args.run, args.output, args.weights)
    print(f"wrote {path}")
    return 0
