"""``ddpm nll MODEL --data-dir DIR``: the variational bound on -log p(x_0) (Ho et al. 2020, eq. 5) in bits/dim.

All T terms are computed for every image, none sampled: the prior L_T = KL(q(x_T | x_0) || N(0, I)), each
L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) and the discretised decoder L_0 = -log p(x_0 | x_1) (eq. 13),
with the model's own reverse variance and x0_hat clipped to [-1, 1]. Images are read as they are (uint8 pixels to
[-1, 1], not resized): they must have the model's size. That is T network evaluations per image: on a GPU minutes
for the 10,000 CIFAR-10 test images, on a CPU about 10 s per image for the 1.4M-parameter model.
Prints the mean bits/dim with its standard error over images and its three parts (prior, sum of the KL terms,
decoder); ``--json`` prints one JSON object instead, with every term (``terms_bpd``, index = the code's 0-based t:
the decoder at 0) and the RMSE of x0_hat per t (``rmse_255``) for ``ddpm visualize rate-distortion``.
A class-conditional model is called with no class: its bound is that of the unconditional model it also is,
comparable with an unconditional model's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ddpm.commands.options import MODEL_SOURCES, HelpFormatter, add_image_source, add_variance_argument, positive_int
from ddpm.config import DEVICE_HELP, DEVICES

EXAMPLE = """examples:
  ddpm nll models/ddpm-cifar10-cpu.safetensors --data-dir cifar10-jpeg/test --num-images 100 --batch-size 100
  ddpm nll runs/cifar10 --data-dir ./data --split test --json > nll.json"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("nll", help="the variational bound (negative log-likelihood) in bits/dim",
                                   description=__doc__, epilog=EXAMPLE, formatter_class=HelpFormatter)
    parser.add_argument("checkpoint", metavar="MODEL", help=MODEL_SOURCES)
    add_image_source(parser, None, "images evaluated (None: all of them)")
    parser.add_argument("--batch-size", type=positive_int, default=100,
                        help="images per network call (each batch makes T calls)")
    parser.add_argument("--seed", type=int, default=0,
                        help="image i draws its noise eps for every x_t from seed SEED + i, whatever the batch size")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema",
                        help="EMA (what papers report) or raw training weights")
    parser.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    add_variance_argument(parser)
    parser.add_argument("--amp", action="store_true",
                        help="run the network under autocast (bfloat16/float16 where the device has it, see `ddpm "
                             "sample --help`); the bound's arithmetic stays float64, but the network's rounding "
                             "moves every term: for a comparison with published numbers leave it off")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (bits_per_dim, stderr, prior_bpd, kl_bpd, decoder_bpd, "
                             "terms_bpd, rate_bpd, rmse_255, num_images, ...) instead of the summary line")
    parser.set_defaults(func=run)


def measure(args: argparse.Namespace) -> dict:
    """The bound of ``args.checkpoint`` on the images of ``args`` as one JSON-ready record (shared with ``ddpm
    visualize rate-distortion``, which draws the same pass)."""
    import torch
    from tqdm.auto import tqdm

    from ddpm.datasets import load_images
    from ddpm.distributed import resolve_device
    from ddpm.errors import DataError
    from ddpm.likelihood import bound_terms, check_bound_schedule, summarize
    from ddpm.model_io import load_model

    device = resolve_device(args.device)
    loaded = load_model(args.checkpoint, device, args.weights, args.variance)
    check_bound_schedule(loaded.diffusion)
    images, description = load_images(args.data_dir, args.num_images, None, args.split)
    c = loaded.config.model
    if tuple(images.shape[1:]) != (c.in_channels, c.resolution, c.resolution):
        raise DataError(f"{description}: the images are {images.shape[2]}x{images.shape[3]} with {images.shape[1]} "
                        f"channels, the model's are {c.resolution}x{c.resolution} with {c.in_channels}; the bound is "
                        "over the pixels as they are, so pass images of the model's size")
    T = loaded.diffusion.timesteps
    print(f"{loaded.source} (step {loaded.step}, {loaded.weights} weights), T = {T}: {len(images)} images, "
          f"{description}", file=sys.stderr)
    start = time.perf_counter()
    parts = []
    with tqdm(total=T * len(images), unit="img", desc="nll", mininterval=10, file=sys.stderr) as bar:
        for i in range(0, len(images), args.batch_size):
            batch = images[i:i + args.batch_size]
            x0 = batch.to(device).double() / 127.5 - 1  # uint8 levels 0..255 -> the grid -1, -1 + 2/255, ..., 1
            generators = [torch.Generator(device).manual_seed(args.seed + i + k) for k in range(len(batch))]
            parts.append(bound_terms(loaded.model, loaded.diffusion, x0, generators, args.amp,
                                     progress=lambda t, n=len(batch): bar.update(n)))
    summary = summarize(parts)
    record = {"model": str(loaded.source), "step": loaded.step, "weights": loaded.weights, "data": description,
              "timesteps": T, "variance": loaded.diffusion.variance, "seed": args.seed, "amp": args.amp,
              "device": str(device), "wall_sec": time.perf_counter() - start, **summary.to_dict()}
    if summary.num_images < 2:  # one image: no standard error, null rather than NaN in JSON
        record["stderr"] = None
    return record


def run(args: argparse.Namespace) -> int:
    record = measure(args)
    if args.json:
        print(json.dumps(record))
    else:
        stderr = "n/a" if record["stderr"] is None else f"{record['stderr']:.4f}"
        print(f"{record['bits_per_dim']:.4f} bits/dim ± {stderr} (s.e. over {record['num_images']} images) = prior "
              f"L_T {record['prior_bpd']:.6f} + L_1..L_{record['timesteps'] - 1} {record['kl_bpd']:.4f} + decoder L_0 "
              f"{record['decoder_bpd']:.4f} | {record['wall_sec']:.1f} s")
    return 0
