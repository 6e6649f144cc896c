"""The ``ddpm`` command line: one sub-command per module in :mod:`ddpm.commands`.

``python main.py --train ...`` and ``python main.py --sample ...`` (the original project's spelling) are the same
as ``ddpm train ...`` and ``ddpm sample ...``. Errors the user can fix are printed as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from ddpm.commands import (
    bench, demo, distill, eval, export, fid, import_diffusers, nll, plot, sample, train, visualize,
)
from ddpm.commands.options import HelpFormatter
from ddpm.errors import DDPMError, DDPMWarning

# The sub-commands in the order --help lists them; each module defines `register(subparsers)` and `run(args)`,
# and imports what it runs only when it runs, so that `ddpm --help` stays fast.
COMMANDS = (train, distill, sample, export, import_diffusers, fid, eval, nll, bench, visualize, plot, demo)
LEGACY_FLAGS = {"--train": "train", "--sample": "sample"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm", formatter_class=HelpFormatter,
        description="Denoising Diffusion Probabilistic Models (Ho et al., 2020): train, sample, evaluate.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ddpm`` console script and of ``main.py``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    legacy = [flag for flag in LEGACY_FLAGS if flag in argv]
    if len(legacy) > 1:
        print("ddpm: error: use one of --train and --sample", file=sys.stderr)
        return 2
    if legacy:
        argv.remove(legacy[0])
        argv.insert(0, LEGACY_FLAGS[legacy[0]])
    args = build_parser().parse_args(argv)
    show = warnings.showwarning

    def show_warning(message, category, *rest, **kwargs):
        # ddpm's own warnings are one line, like its errors; those of other libraries keep their usual form.
        if issubclass(category, DDPMWarning):
            print(f"ddpm {args.command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *rest, **kwargs)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return args.func(args) or 0
    except DDPMError as exc:
        print(f"ddpm {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"ddpm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
