"""``ddpm import``: convert a diffusers folder (a ``UNet2DModel`` and its scheduler) into ddpm's own format.

Reads both layouts found in the wild: google/ddpm-cifar10-32's (``config.json``, the weights and
``scheduler_config.json`` in one folder) and a pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``).
The .safetensors it writes holds the config in its metadata. Every other command also reads the folder directly
(``ddpm eval DIR``); importing once saves the conversion each time and gives one file to keep.
"""

from __future__ import annotations

import argparse

from ddpm.commands.options import HelpFormatter


def register(subparsers) -> None:
    parser = subparsers.add_parser("import", help="convert a diffusers folder into a ddpm .safetensors",
                                   description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("folder", metavar="DIR", help="local diffusers folder (download it first, e.g. with "
                                                      "`hf download google/ddpm-cifar10-32 --local-dir DIR`)")
    parser.add_argument("--output", required=True, metavar="FILE.safetensors", help="file to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ddpm.diffusers_format import is_diffusers_folder
    from ddpm.errors import CheckpointError
    from ddpm.model_io import export_safetensors

    if not is_diffusers_folder(Path(args.folder)):
        raise CheckpointError(f"{args.folder} is not a diffusers folder (it has neither model_index.json nor "
                              "diffusion_pytorch_model.safetensors/.bin)")
    path = export_safetensors(args.folder, args.output)
    print(f"wrote {path}")
    return 0
