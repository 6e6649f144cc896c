"""``ddpm export``: write a run's EMA weights in ddpm's own format or as a diffusers ``DDPMPipeline`` folder.

``--format safetensors`` (default): one .safetensors file with the config in its metadata, which alone rebuilds the
model: ``ddpm sample --load-model model.safetensors``. ``--format diffusers``: a folder (``model_index.json``,
``unet/``, ``scheduler/``) that ``diffusers.DDPMPipeline.from_pretrained(DIR)`` loads, for the tools that take
one; only the ``skip="block"`` networks (the ``ho2020`` family) are ``UNet2DModel``s, a class-conditional one with
``num_class_embeds``. ``--guidance-scale S`` stores a class-conditional model's recommended guidance scale, the one
sampling uses when given none (pick it with ``ddpm eval RUN --guidance-scale 0,1,1.5,2,3,5``).
"""

from __future__ import annotations

import argparse

from ddpm.commands.options import MODEL_SOURCES, HelpFormatter, guidance_scale


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export weights as safetensors or a diffusers pipeline",
                                   description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run", metavar="RUN", help=MODEL_SOURCES)
    parser.add_argument("--output", required=True, metavar="PATH",
                        help="file to write (safetensors) or folder to write (diffusers)")
    parser.add_argument("--format", choices=("safetensors", "diffusers"), default="safetensors",
                        help="ddpm's own .safetensors file, or a diffusers DDPMPipeline folder")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA or raw training weights")
    parser.add_argument("--guidance-scale", type=guidance_scale, default=None, metavar="S",
                        help="class-conditional models: the recommended classifier-free guidance scale to store in "
                             "the file, used by sample, eval and visualize when they are given none (1: the plain "
                             "conditional model); default: the run's --guidance-scale")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.format == "diffusers":
        from ddpm.model_io import export_diffusers as export
    else:
        from ddpm.model_io import export_safetensors as export

    path = export(args.run, args.output, args.weights, args.guidance_scale)
    print(f"wrote {path}")
    return 0
