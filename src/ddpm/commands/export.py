"""``ddpm export``: write a run's EMA weights in ddpm's own format or as a diffusers ``DDPMPipeline`` folder.

``--format safetensors`` (default): one .safetensors file with the config in its metadata, which alone rebuilds the
model: ``ddpm sample --load-model model.safetensors``. ``--format diffusers``: a folder (``model_index.json``,
``unet/``, ``scheduler/``) that ``diffusers.DDPMPipeline.from_pretrained(DIR)`` loads, for the tools that take
one; only the ``skip="block"`` networks (the ``ho2020`` family) are ``UNet2DModel``s, a class-conditional one with
``num_class_embeds``. ``--guidance-scale S`` stores a class-conditional model's recommended guidance scale, the one
sampling uses when given none (pick it with ``ddpm eval RUN --guidance-scale 0,1,1.5,2,3,5``); ``--sampler``,
``--time-spacing`` and ``--sampling-steps`` likewise store the sampling that ``ddpm sample`` and ``ddpm eval`` use
when given no sampler flags (pick them with ``benchmarks/sampler_sweep.py``; a diffusers folder does not carry them).
"""

from __future__ import annotations

import argparse

from ddpm.commands.options import MODEL_SOURCES, HelpFormatter, add_sampler_arguments, guidance_scale, positive_int


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
    add_sampler_arguments(parser)
    parser.add_argument("--sampling-steps", type=positive_int, default=None,
                        help="the recommended sampler's network calls per image to store; default: the run's, or the "
                             "sampler's own default when --sampler changes it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ddpm.errors import ConfigError
    from ddpm.model_io import export_diffusers, export_safetensors

    sampling = dict(sampler=args.sampler, time_spacing=args.time_spacing, sampling_steps=args.sampling_steps)
    if args.format == "diffusers":
        if any(v is not None for v in sampling.values()):
            raise ConfigError("a diffusers folder carries no recommended sampler; export --format safetensors to "
                              "store --sampler, --time-spacing and --sampling-steps")
        path = export_diffusers(args.run, args.output, args.weights, args.guidance_scale)
    else:
        path = export_safetensors(args.run, args.output, args.weights, args.guidance_scale, sampling)
    print(f"wrote {path}")
    return 0
