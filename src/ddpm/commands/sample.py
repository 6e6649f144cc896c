"""``ddpm sample`` (and ``python main.py --sample``): draw images from a trained model.

Writes a grid (``--output``), a folder of PNGs named by seed (``--output-dir``; an interrupted job resumes by
skipping the images already there) and/or an .npz of uint8 images (``--npz``, N x H x W x 3 under ``arr_0``, the
format of OpenAI's evaluator; a class-conditional model's labels under ``arr_1``, as guided-diffusion writes them).
Under ``torchrun`` each rank draws its share of the seeds into ``--output-dir``.
A class-conditional model draws the classes of ``--class`` (default: image i of class i mod K) with classifier-free
guidance ``--guidance-scale`` (default: the model's recommended scale).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ddpm.commands.options import (
    GUIDANCE_HELP, MODEL_SOURCES, HelpFormatter, add_amp_argument, add_class_argument, add_compile_argument,
    add_sampler_arguments, add_variance_argument, conditioning, guidance_scale,
)
from ddpm.config import DEVICE_HELP, DEVICES


def register(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="sample images from a checkpoint", description=__doc__,
                                   formatter_class=HelpFormatter)
    parser.add_argument("--load-model", required=True, metavar="PATH", help=MODEL_SOURCES)
    parser.add_argument("--num-samples", type=int, default=64, help="number of images")
    add_sampler_arguments(parser)
    parser.add_argument("--sampling-steps", type=int, default=None,
                        help="network evaluations; default: the file's recommendation with its sampler, else all T "
                             "for ddpm and 50 for the others")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0: deterministic)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed SEED + i")
    parser.add_argument("--output", default=None, metavar="FILE.png",
                        help="image grid (about sqrt(N) columns); default samples.png unless --output-dir/--npz is given")
    parser.add_argument("--output-dir", default=None, metavar="DIR", help="also write one PNG per image, named by seed")
    parser.add_argument("--npz", default=None, metavar="FILE.npz",
                        help="also write all images as a uint8 .npz (arr_0; a class-conditional model's labels: arr_1)")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA or raw training weights")
    parser.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0 to [-1, 1]")
    parser.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    add_class_argument(parser)
    parser.add_argument("--guidance-scale", type=guidance_scale, default=None, metavar="S", help=GUIDANCE_HELP)
    add_compile_argument(parser)
    add_amp_argument(parser)
    add_variance_argument(parser)
    parser.set_defaults(func=run)


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse outputs that cannot be written before minutes of sampling, not after; create --output-dir."""
    from PIL import Image

    from ddpm.errors import OutputError

    for flag, name in (("--output", args.output), ("--npz", args.npz)):
        if name is None:
            continue
        path = Path(name)
        if not path.parent.is_dir():
            raise OutputError(f"cannot write {flag} {path}: {path.parent} is not an existing folder")
        if path.is_dir():
            raise OutputError(f"cannot write {flag} {path}: it is a folder, give a file name")
    if args.npz is not None and not args.npz.endswith(".npz"):
        args.npz += ".npz"  # what numpy.savez writes for such a name
    if args.output and Path(args.output).suffix.lower() not in Image.registered_extensions():
        raise OutputError(f"--output {args.output}: the file name must end in an image type such as .png")
    if args.output_dir:
        try:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create --output-dir {args.output_dir}: {exc.strerror}") from None


def _write_collections(args: argparse.Namespace, seeds: list[int], kept: dict[int, np.ndarray],
                       folder: Path | None, labels: list[int] | None) -> None:
    """--npz and the --output grid of all the images, read back from --output-dir when they went there; ``labels``
    (a class-conditional model's, one per seed) go into the .npz as ``arr_1``."""
    from PIL import Image
    from torchvision.utils import save_image

    from ddpm.errors import OutputError
    from ddpm.files import atomic_write
    from ddpm.generate import grid_columns, image_path

    if folder is not None:
        try:
            kept = {s: np.asarray(Image.open(image_path(folder, s)).convert("RGB")) for s in seeds}
        except OSError as exc:  # a PNG damaged or removed since it was written
            raise OutputError(f"cannot read back {exc.filename or 'an image'} from --output-dir: "
                              f"{exc.strerror or exc}; delete it and run the command again to redraw it") from None
    images = np.stack([kept[s] for s in seeds])
    if args.npz:
        arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": np.asarray(labels, np.int64)}
        atomic_write(Path(args.npz), lambda f: np.savez(f, **arrays))
    if args.output:
        grid = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        kind = Image.registered_extensions()[Path(args.output).suffix.lower()]
        atomic_write(Path(args.output), lambda f: save_image(grid, f, nrow=grid_columns(len(seeds)), padding=2,
                                                             format=kind))


def run(args: argparse.Namespace) -> int:
    from ddpm.distributed import barrier, cleanup, init_distributed, sampling_amp
    from ddpm.errors import ConfigError
    from ddpm.generate import generate, image_path, save_png
    from ddpm.model_io import load_model
    from ddpm.samplers import default_steps

    if args.num_samples <= 0 or args.batch_size <= 0:
        raise ConfigError("--num-samples and --batch-size must be positive")
    if args.output is None and args.output_dir is None and args.npz is None:
        args.output = "samples.png"
    _check_outputs(args)
    dist = init_distributed(args.device)
    try:
        if dist.enabled and args.output_dir is None:
            raise ConfigError("under torchrun pass --output-dir: each rank writes its share of the images there")
        loaded = load_model(args.load_model, dist.device, args.weights, args.variance)
        classes = conditioning(loaded, args.classes, args.guidance_scale)
        sampler, steps, spacing = loaded.config.diffusion.sampling(args.sampler, args.sampling_steps,
                                                                   args.time_spacing)
        seeds = [args.seed + i for i in range(args.num_samples)]
        if loaded.model.num_classes is not None:  # image i's class: the (i mod n)-th of --class, else i mod K
            cycle = classes or list(range(loaded.model.num_classes))
            label_of = {s: cycle[i % len(cycle)] for i, s in enumerate(seeds)}
        folder = Path(args.output_dir) if args.output_dir else None
        missing = [s for s in seeds if folder is None or not image_path(folder, s).exists()]
        barrier(dist)  # every rank lists the folder before any rank writes to it, so all split the same list
        todo = missing[dist.rank::dist.world_size]
        labels = None if loaded.model.num_classes is None else [label_of[s] for s in todo]
        if dist.is_main:
            conditional = ""
            variance = f" ({loaded.diffusion.variance} variance)" if sampler == "ddpm" else ""
            if labels is not None:
                names = loaded.config.model.class_names
                shown = ", ".join(names[k] for k in (classes or range(len(names))))
                scale = loaded.config.model.guidance_scale if args.guidance_scale is None else args.guidance_scale
                conditional = f", classes {shown}, guidance scale {scale:g}"
            print(f"{loaded.source} (step {loaded.step}, {loaded.weights} weights): {len(seeds)} images, "
                  f"{len(seeds) - len(missing)} already written, sampler {sampler}{variance}, "
                  f"{default_steps(sampler, loaded.diffusion.timesteps) if steps is None else steps} steps "
                  f"({spacing}){conditional}")
        kept: dict[int, np.ndarray] = {}

        def on_batch(batch_seeds, images):
            for s, image in zip(batch_seeds, images.numpy()):
                if folder is not None:
                    save_png(image, image_path(folder, s))
                else:
                    kept[s] = image

        model = torch.compile(loaded.model) if args.compile else loaded.model
        rate = generate(model, loaded.diffusion, todo, args.batch_size, on_batch, sampler, steps, args.eta,
                        not args.no_clip, dist.device, progress=dist.is_main,
                        amp=sampling_amp(dist.device, args.amp), labels=labels,
                        guidance_scale=args.guidance_scale, spacing=spacing)
        barrier(dist)
        if not dist.is_main:
            return 0
        if args.npz or args.output:
            every_label = None if loaded.model.num_classes is None else [label_of[s] for s in seeds]
            _write_collections(args, seeds, kept, folder, every_label)
        written = ", ".join(str(p) for p in (args.output, args.output_dir, args.npz) if p)
        print(f"wrote {len(seeds)} images to {written} ({rate:.2f} img/s)")
        return 0
    finally:
        cleanup(dist)
