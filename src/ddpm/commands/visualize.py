"""``ddpm visualize``: figures that show what a DDPM does (PNG, and a GIF for the reverse process).

  forward        real images noised by q(x_t | x_0) for the linear and cosine schedules, with alpha-bar_t and SNR(t)
  trajectory     the reverse process of a checkpoint: x_t and the predicted x_0 every k steps, as a strip and a GIF
  loss-vs-t      the loss per timestep bucket on held-out images, of one model or several: where each struggles
  architecture   a diagram of the UNet of a preset or checkpoint, drawn by walking the network itself
  classes        a class-conditional model's samples, one labelled row per class
  guidance       a class-conditional model: the same seeds at several guidance scales side by side
  loss-weights   SNR(t) and what each prediction target and min-SNR weigh at each t
  rate-distortion  the terms of the variational bound against t, and rate against distortion (Ho et al., Fig. 5)
  shared-xt      several reverse samples from one x_t of a real image, at several t (Fig. 7)
  interpolation  two real images noised to x_t, mixed linearly and decoded, at several t (Fig. 8)
  inpainting     a masked region of real images filled by the model (replacement method, RePaint's resampling)

A class-conditional model draws its trajectory with a class per seed (--class) at its guidance scale; the
figures that start from real images (loss-vs-t, rate-distortion, shared-xt, interpolation, inpainting) call it
with no class, as the unconditional model it also is (label dropout, `ddpm train --p-uncond`).

See docs/guide.md for each figure next to the equation it illustrates.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ddpm.commands.options import (
    GUIDANCE_HELP, MODEL_SOURCES, HelpFormatter, add_class_argument, add_image_source, add_sampler_arguments,
    add_variance_argument, guidance_scale, guidance_scales, positive_int,
)
from ddpm.config import DEVICE_HELP, DEVICES

EXAMPLES = """examples:
  ddpm visualize forward --data-dir cifar10-jpeg.tar.gz --num-images 4 --output forward.png
  ddpm visualize trajectory runs/tiny --sampler ddim --sampling-steps 20 --every 2
  ddpm visualize loss-vs-t runs/tiny --data-dir ./data --num-images 512
  ddpm visualize loss-vs-t runs/eps runs/v --data-dir cifar10-jpeg/test   # two models, same t and eps
  ddpm visualize architecture ho2020 --output ho2020.png
  ddpm visualize loss-weights --gamma 5 --output weights.png
  ddpm visualize classes runs/cond --per-class 10 --sampler ddim --sampling-steps 50 --output classes.png
  ddpm visualize guidance runs/cond --scales 0,1,2,4,8 --class cat,horse,ship --output guidance.png
  ddpm visualize rate-distortion nll.json --output rate-distortion.png
  ddpm visualize shared-xt runs/tiny --data-dir cifar10-jpeg/test --timesteps 250 500 750 999 --sampling-steps 100
  ddpm visualize interpolation runs/tiny --data-dir cifar10-jpeg/test --timesteps 250 500 --lambdas 9
  ddpm visualize inpainting runs/tiny --data-dir cifar10-jpeg/test --num-images 4 --resample 5 --jump-length 10"""


def register(subparsers) -> None:
    from ddpm.config import DiffusionConfig
    from ddpm.presets import PRESETS

    parser = subparsers.add_parser("visualize", help="figures of the forward and reverse process, loss and network",
                                   description=__doc__, epilog=EXAMPLES, formatter_class=HelpFormatter)
    figures = parser.add_subparsers(dest="figure", metavar="FIGURE", required=True)

    def add(name: str, help: str, default_output: str) -> argparse.ArgumentParser:
        sub = figures.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
        sub.add_argument("--output", default=default_output, metavar="FILE.png", help="PNG file to write")
        sub.add_argument("--dpi", type=positive_int, default=100, help="pixels per inch of the PNG")
        return sub

    diffusion = DiffusionConfig()
    forward = add("forward", "real images noised by q(x_t | x_0) for the linear and cosine schedules, with the "
                  "curves of alpha-bar_t and SNR(t)", "forward.png")
    forward.add_argument("--data-dir", default=None, metavar="PATH",
                         help="images: a folder, a .zip/.tar(.gz) of images, or CIFAR-10 pickles; None: CIFAR-10 in "
                              "./data (downloaded if absent)")
    forward.add_argument("--num-images", type=positive_int, default=4, metavar="N",
                         help="images shown, spread evenly over the source in sorted order; only these are decoded")
    forward.add_argument("--resolution", type=positive_int, default=32, help="images are resized to this side")
    forward.add_argument("--time-steps", type=positive_int, default=diffusion.timesteps,
                         help="T; the columns t = 0 100 250 500 750 999 are scaled to T")
    help_of = {field.name: field.metadata["help"] for field in dataclasses.fields(DiffusionConfig)}
    forward.add_argument("--beta-start", type=float, default=diffusion.beta_start, help=help_of["beta_start"])
    forward.add_argument("--beta-end", type=float, default=diffusion.beta_end, help=help_of["beta_end"])
    forward.add_argument("--seed", type=int, default=0, help="seed of the noise eps, the same in every panel")

    def add_checkpoint(sub: argparse.ArgumentParser, several: bool = False) -> None:
        if several:  # one curve per model, all with the same noise schedule
            sub.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                             help=MODEL_SOURCES + "; several: one curve each, all with the same noise schedule")
        else:
            sub.add_argument("checkpoint", metavar="CHECKPOINT", help=MODEL_SOURCES)
        sub.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA or raw training weights")
        sub.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)

    trajectory = add("trajectory", "the reverse process of a checkpoint: x_t and the predicted x_0 every k steps, "
                     "as a strip PNG and an animated GIF", "trajectory.png")
    add_checkpoint(trajectory)
    trajectory.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3],
                            help="one image per seed, the image `ddpm sample --seed` draws for it")
    add_sampler_arguments(trajectory)
    trajectory.add_argument("--sampling-steps", type=positive_int, default=None,
                            help="network evaluations; None: the file's recommended steps with its sampler, else all T "
                              "for ddpm, 50 for the others")
    trajectory.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0: deterministic)")
    trajectory.add_argument("--every", type=positive_int, default=None, metavar="K",
                            help="a strip column every K steps (and the last); None: about 10 columns")
    trajectory.add_argument("--gif", default=None, metavar="FILE.gif",
                            help="animated GIF to write; None: --output with the suffix .gif")
    trajectory.add_argument("--gif-frames", type=positive_int, default=50, help="about this many GIF frames")
    trajectory.add_argument("--scale", type=positive_int, default=3, help="GIF upscaling (nearest neighbour)")
    trajectory.add_argument("--frame-ms", type=positive_int, default=80, help="GIF frame duration")
    trajectory.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0 to [-1, 1]")
    add_class_argument(trajectory)
    trajectory.add_argument("--guidance-scale", type=guidance_scale, default=None, metavar="S", help=GUIDANCE_HELP)

    loss = add("loss-vs-t", "the training loss per timestep bucket on held-out images of one checkpoint or several "
               "(one curve each, on the same t and eps), printed and plotted", "loss_vs_t.png")
    add_checkpoint(loss, several=True)
    add_image_source(loss, 512, "held-out images evaluated")
    loss.add_argument("--buckets", type=positive_int, default=10, help="equal-width timestep buckets")
    loss.add_argument("--batch-size", type=positive_int, default=128, help="images per forward pass")
    loss.add_argument("--seed", type=int, default=0, help="seed of t and eps, so checkpoints compare on the same draws")

    architecture = add("architecture", "a diagram of the UNet (levels, channels, resolutions, attention, skips), "
                       "drawn by walking the network built from a preset or checkpoint", "architecture.png")
    architecture.add_argument("source", metavar="SOURCE", nargs="?", default="seed",
                              help=f"a preset ({', '.join(PRESETS)}) or a {MODEL_SOURCES}")

    weights = add("loss-weights", "SNR(t) and the weight that eps-, x0- and v-prediction and min-SNR-gamma put on the "
                  "x0 error at each timestep", "loss_weights.png")
    weights.add_argument("--time-steps", type=positive_int, default=diffusion.timesteps, help="T")
    weights.add_argument("--gamma", type=float, default=5.0, help="gamma of min-SNR-gamma")

    def add_sampling(sub: argparse.ArgumentParser) -> None:
        add_checkpoint(sub)
        add_class_argument(sub)
        add_sampler_arguments(sub, fallback="ddim")
        sub.add_argument("--sampling-steps", type=positive_int, default=None,
                         help="network evaluations; None: the file's recommended steps with its sampler, else all T "
                              "for ddpm, 50 for the others")
        sub.add_argument("--seed", type=int, default=0, help="first seed")

    classes = add("classes", "a class-conditional model's samples, one labelled row per class", "classes.png")
    add_sampling(classes)
    classes.add_argument("--per-class", type=positive_int, default=10, metavar="N", help="images in each row")
    classes.add_argument("--guidance-scale", type=guidance_scale, default=None, metavar="S", help=GUIDANCE_HELP)

    guidance = add("guidance", "a class-conditional model: one seed per class drawn at several guidance scales side "
                   "by side", "guidance.png")
    add_sampling(guidance)
    guidance.add_argument("--scales", type=guidance_scales, default=[0.0, 1.0, 2.0, 4.0, 8.0], metavar="S[,S...]",
                          help="the guidance scales, one column each (0: unconditional, 1: conditional)")

    def add_images(sub: argparse.ArgumentParser, count: int) -> None:
        add_image_source(sub, count, "images used")
        sub.add_argument("--seed", type=int, default=0, help="seed of every noise draw, so the figure is reproducible")

    def add_timesteps(sub: argparse.ArgumentParser, default: list[int]) -> None:
        sub.add_argument("--timesteps", type=int, nargs="+", default=default, metavar="T",
                         help="the 0-based timesteps of x_t (each below the model's T)")

    def add_steps(sub: argparse.ArgumentParser, default: int | None) -> None:
        sub.add_argument("--sampling-steps", type=positive_int, default=default,
                         help="reverse steps from the largest t down to 0, respaced (Nichol & Dhariwal 2021); "
                              "None, or more than there are timesteps: every timestep")

    rate = add("rate-distortion", "the terms of the variational bound against t, and rate (bits/dim) against "
               "distortion (RMSE of x0_hat, 0-255) from the same pass as `ddpm nll` (Ho et al. 2020, Fig. 5)",
               "rate_distortion.png")
    rate.add_argument("source", metavar="SOURCE",
                      help=f"the JSON that `ddpm nll --json` printed (*.json), or a {MODEL_SOURCES} to run that pass")
    rate.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA or raw training weights")
    rate.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    rate.add_argument("--batch-size", type=positive_int, default=100, help="images per network call")
    add_variance_argument(rate)
    add_images(rate, 16)

    shared = add("shared-xt", "one real image noised to x_t at several t, and several reverse samples from each "
                 "x_t (Ho et al. 2020, Fig. 7)", "shared_xt.png")
    add_checkpoint(shared)
    add_images(shared, 1)
    add_timesteps(shared, [249, 499, 749, 999])
    shared.add_argument("--samples", type=positive_int, default=4, help="reverse samples per x_t")
    add_steps(shared, 100)

    interp = add("interpolation", "two real images noised to x_t, mixed as (1 - lambda) x_t + lambda x_t' and decoded "
                 "by the reverse process, at several t (Ho et al. 2020, Fig. 8)", "interpolation.png")
    add_checkpoint(interp)
    add_images(interp, 2)
    add_timesteps(interp, [99, 249, 499])
    interp.add_argument("--lambdas", type=positive_int, default=7, metavar="K",
                        help="K values of lambda evenly spaced from 0 to 1 (K >= 2)")
    add_steps(interp, 100)

    inpainting = add("inpainting", "real images with a masked region filled by the model; the known pixels follow "
                     "q(x_t | x_0) at every step and are kept exactly (replacement method; RePaint's resampling "
                     "with --resample > 1)", "inpainting.png")
    add_checkpoint(inpainting)
    add_images(inpainting, 4)
    inpainting.add_argument("--masks", nargs="+", choices=("centre", "half", "random"),
                            default=["centre", "half", "random"], help="masks, one pair of columns each")
    inpainting.add_argument("--mask-fraction", type=float, default=0.5,
                            help="the fraction of pixels the random mask hides")
    inpainting.add_argument("--resample", type=positive_int, default=1,
                            help="RePaint's r: each jump of --jump-length steps is walked this many times (1: the "
                                 "plain replacement method); network calls grow about r-fold")
    inpainting.add_argument("--jump-length", type=positive_int, default=10, help="RePaint's jump length j, in steps")
    add_steps(inpainting, 100)
    parser.set_defaults(func=run)


def _check_output(*paths: str | Path) -> None:
    from ddpm.errors import ConfigError

    for path in paths:
        if not Path(path).parent.exists():
            raise ConfigError(f"cannot write {path}: folder {Path(path).parent} does not exist")


def run_forward(args: argparse.Namespace) -> int:
    from ddpm.datasets import load_images
    from ddpm.figures.common import save_figure
    from ddpm.figures.forward import forward_figure, scaled_timesteps

    _check_output(args.output)
    images, description = load_images(args.data_dir, args.num_images, args.resolution)
    fig = forward_figure(images, args.time_steps, args.beta_start, args.beta_end, args.seed)
    width, height = save_figure(fig, args.output, args.dpi)
    ts = " ".join(map(str, scaled_timesteps(args.time_steps)))
    print(f"{description}: t = {ts} (the paper's count) of T = {args.time_steps}; wrote {args.output} ({width}x{height})")
    return 0


def run_trajectory(args: argparse.Namespace) -> int:
    from ddpm.commands.options import conditioning
    from ddpm.distributed import resolve_device
    from ddpm.errors import ConfigError
    from ddpm.figures.common import save_figure
    from ddpm.figures.trajectory import every_k, number_of_steps, record_trajectory, trajectory_figure, trajectory_gif
    from ddpm.model_io import load_model

    gif = args.gif or str(Path(args.output).with_suffix(".gif"))
    _check_output(args.output, gif)
    if args.eta < 0:
        raise ConfigError(f"--eta must be >= 0, got {args.eta}")
    device = resolve_device(args.device)
    loaded = load_model(args.checkpoint, device, args.weights)
    sampler, steps, spacing = _sampling(loaded, args, "ddpm")
    total = number_of_steps(loaded.diffusion, sampler, steps)
    strip = every_k(total, args.every or max(1, round(total / 10)))
    frames = every_k(total, max(1, round(total / args.gif_frames)))
    c = loaded.config.model
    labels, scale = None, 1.0
    if loaded.model.num_classes is not None:  # seed i of the (i mod n)-th class of --class, else of class i mod K
        cycle = conditioning(loaded, args.classes, args.guidance_scale) or list(range(loaded.model.num_classes))
        labels = [cycle[i % len(cycle)] for i in range(len(args.seeds))]
        scale = c.guidance_scale if args.guidance_scale is None else args.guidance_scale
    else:
        conditioning(loaded, args.classes, args.guidance_scale)  # refuses --class and --guidance-scale
    record = record_trajectory(loaded.model, loaded.diffusion, args.seeds, (c.in_channels, c.resolution, c.resolution),
                               strip | frames, sampler, steps, args.eta, not args.no_clip, device, labels, scale,
                               spacing)
    width, height = save_figure(trajectory_figure(record, strip), args.output, args.dpi)
    gif_width, gif_height = trajectory_gif(record, gif, args.scale, args.frame_ms)
    print(f"{loaded.source} (step {loaded.step}, {loaded.weights} weights), {sampler}, {total} steps, "
          f"seeds {' '.join(map(str, args.seeds))}: wrote {args.output} ({width}x{height}, {len(strip)} columns) "
          f"and {gif} ({gif_width}x{gif_height}, {len(record.steps)} frames)")
    return 0


def run_loss_vs_t(args: argparse.Namespace) -> int:
    import torch

    from ddpm.datasets import load_images
    from ddpm.distributed import resolve_device
    from ddpm.errors import ConfigError
    from ddpm.figures.common import save_figure
    from ddpm.figures.loss import loss_figure, loss_per_timestep, uniform_t_loss
    from ddpm.model_io import load_model

    _check_output(args.output)
    device = resolve_device(args.device)
    models = [load_model(path, device, args.weights) for path in args.checkpoints]
    first = models[0]
    for other in models[1:]:  # the same (x_0, t, eps) only mean the same x_t under the same schedule
        if (other.config.model.resolution != first.config.model.resolution
                or not torch.equal(other.diffusion.alphas_cumprod, first.diffusion.alphas_cumprod)):
            raise ConfigError(f"{other.source} and {first.source} differ in noise schedule or resolution: loss-vs-t "
                              "compares models on the same x_t, so give it models of one schedule and size")
    images, description = load_images(args.data_dir, args.num_images, first.config.model.resolution, args.split)
    curves = []
    for loaded in models:
        rows = loss_per_timestep(loaded.model, loaded.diffusion, images, args.buckets, args.batch_size, args.seed,
                                 device)
        name = f"{loaded.source.name} (step {loaded.step}, {loaded.diffusion.prediction}-prediction)"
        print(f"{loaded.source} (step {loaded.step}, {loaded.weights} weights, predicts "
              f"{loaded.diffusion.prediction}) on {len(images)} images, {description}")
        print(f"{'t from':>7} {'to':>6} {'loss':>10} {'± s.e.':>9} {'no network':>11}   (t: the paper's 1 .. T, the "
              "code's t + 1; loss: of the eps the output implies; no network: eps_hat = sqrt(1 - alpha-bar_t) x_t)")
        for r in rows:
            print(f"{r.start + 1:>7} {r.stop:>6} {r.mean:>10.5f} {r.stderr:>9.5f} {r.trivial:>11.2e}")
        print(f"mean over t ~ U{{1..{loaded.diffusion.timesteps}}}: {uniform_t_loss(rows):.5f}")
        curves.append((name, rows))
    names = first.source.name if len(models) == 1 else f"{len(models)} models"
    title = f"Loss per timestep: {names}, {len(images)} held-out images"
    width, height = save_figure(loss_figure(curves, first.diffusion, title), args.output, args.dpi)
    print(f"wrote {args.output} ({width}x{height})")
    return 0


def run_architecture(args: argparse.Namespace) -> int:
    from ddpm.config import make_config
    from ddpm.presets import PRESETS
    from ddpm.figures.architecture import architecture_figure
    from ddpm.figures.common import save_figure
    from ddpm.model_io import load_model
    from ddpm.unet import UNet, count_parameters

    _check_output(args.output)
    if args.source in PRESETS and not Path(args.source).exists():
        config = make_config(args.source)
        model, name = UNet(config.model), f"preset {args.source}"
    else:
        loaded = load_model(args.source, "cpu")
        config, model, name = loaded.config, loaded.model, f"{loaded.source} (preset {loaded.config.preset})"
    m = config.model
    title = (f"UNet of {name}: {count_parameters(model) / 1e6:.2f}M parameters, nf={m.nf}, "
             f"ch_mult={list(m.ch_mult)}, {m.num_res_blocks} res blocks per level, skip={m.skip}, "
             f"attention at {', '.join(f'{r}×{r}' for r in m.attn_resolutions)} and in the middle")
    width, height = save_figure(architecture_figure(model, title), args.output, args.dpi)
    print(f"{title}\nwrote {args.output} ({width}x{height})")
    return 0


def run_loss_weights(args: argparse.Namespace) -> int:
    import math

    from ddpm.errors import ConfigError
    from ddpm.figures.common import save_figure
    from ddpm.figures.weights import loss_weights_figure

    if not (math.isfinite(args.gamma) and args.gamma > 0):
        raise ConfigError(f"--gamma must be a positive number, got {args.gamma}")
    _check_output(args.output)
    width, height = save_figure(loss_weights_figure(args.time_steps, args.gamma), args.output, args.dpi)
    print(f"wrote {args.output} ({width}x{height})")
    return 0


def _conditional(args: argparse.Namespace, scales):
    """The loaded class-conditional model and the classes of the rows (--class, default all of them)."""
    from ddpm.commands.options import conditioning
    from ddpm.distributed import resolve_device
    from ddpm.errors import ConfigError
    from ddpm.model_io import load_model

    _check_output(args.output)
    device = resolve_device(args.device)
    loaded = load_model(args.checkpoint, device, args.weights)
    if not loaded.config.model.class_cond:
        raise ConfigError(f"{loaded.source} is not class-conditional: `ddpm visualize {args.figure}` draws the "
                          "classes of a model trained with --class-cond")
    rows = conditioning(loaded, args.classes, scales) or list(range(loaded.model.num_classes))
    return loaded, rows, device


def _sampling(loaded, args: argparse.Namespace, fallback: str) -> tuple[str, int | None, str]:
    """(sampler, steps, spacing): the flags', else the model file's recommendation
    (:meth:`ddpm.config.DiffusionConfig.sampling`), else ``fallback`` with its own defaults for a file that records
    none."""
    d = loaded.config.diffusion
    records_none = (d.sampler, d.time_spacing, d.sampling_steps) == ("ddpm", "uniform", 0)
    asked = args.sampler or (fallback if records_none else None)
    return d.sampling(asked, args.sampling_steps, args.time_spacing)


def run_classes(args: argparse.Namespace) -> int:
    from ddpm.figures.classes import draw, labelled_grid
    from ddpm.figures.common import save_figure

    loaded, rows, device = _conditional(args, args.guidance_scale)
    names = loaded.config.model.class_names
    scale = loaded.config.model.guidance_scale if args.guidance_scale is None else args.guidance_scale
    n = len(rows)
    # Image j of row r has seed SEED + j n + r: the images `ddpm sample --class` draws for these classes, in rows.
    seeds = [args.seed + j * n + r for r in range(n) for j in range(args.per_class)]
    labels = [rows[r] for r in range(n) for _ in range(args.per_class)]
    sampler, steps, spacing = _sampling(loaded, args, "ddim")
    images = draw(loaded.model, loaded.diffusion, seeds, labels, scale, sampler, steps, device, spacing=spacing)
    grid = [images[r * args.per_class:(r + 1) * args.per_class] for r in range(n)]
    title = f"{loaded.source.name} (step {loaded.step}): one row per class, guidance scale {scale:g}, {sampler}"
    width, height = save_figure(labelled_grid(grid, [names[k] for k in rows], None, title), args.output, args.dpi)
    print(f"{loaded.source} (step {loaded.step}, {loaded.weights} weights): {n} classes x {args.per_class} images at "
          f"guidance scale {scale:g}; wrote {args.output} ({width}x{height})")
    return 0


def run_guidance(args: argparse.Namespace) -> int:
    from ddpm.figures.classes import draw, labelled_grid
    from ddpm.figures.common import save_figure

    loaded, rows, device = _conditional(args, args.scales)
    names = loaded.config.model.class_names
    seeds = [args.seed + r for r in range(len(rows))]  # row r: one seed, the same x_T in every column
    sampler, steps, spacing = _sampling(loaded, args, "ddim")
    columns = [draw(loaded.model, loaded.diffusion, seeds, rows, s, sampler, steps, device, spacing=spacing)
               for s in args.scales]
    grid = [[column[r] for column in columns] for r in range(len(rows))]
    title = f"{loaded.source.name} (step {loaded.step}): one seed per row at guidance scale s ({sampler})"
    figure = labelled_grid(grid, [f"{names[k]} (seed {s})" for k, s in zip(rows, seeds)],
                           [f"s = {s:g}" for s in args.scales], title)
    width, height = save_figure(figure, args.output, args.dpi)
    print(f"{loaded.source} (step {loaded.step}, {loaded.weights} weights): {len(rows)} classes at guidance scales "
          f"{', '.join(f'{s:g}' for s in args.scales)}; wrote {args.output} ({width}x{height})")
    return 0


def _check_timesteps(timesteps: list[int], T: int) -> None:
    from ddpm.errors import ConfigError

    bad = [t for t in timesteps if not 0 <= t < T]
    if bad:
        raise ConfigError(f"--timesteps must lie in 0..{T - 1} (the model's T = {T}), got {' '.join(map(str, bad))}")


def _model_and_images(args: argparse.Namespace, count: int | None = None):
    """The model and ``--num-images`` (or ``count``) real images in [-1, 1] at the model's resolution."""
    from ddpm.datasets import load_images
    from ddpm.distributed import resolve_device
    from ddpm.model_io import load_model

    _check_output(args.output)
    device = resolve_device(args.device)
    loaded = load_model(args.checkpoint, device, args.weights)
    images, description = load_images(args.data_dir, count or args.num_images, loaded.config.model.resolution,
                                       args.split)
    return loaded, images.to(device).float() / 127.5 - 1, description, device


def run_rate_distortion(args: argparse.Namespace) -> int:
    import json

    from ddpm.errors import DataError
    from ddpm.figures.common import save_figure
    from ddpm.figures.paper import rate_distortion_figure

    _check_output(args.output)
    if args.source.endswith(".json"):
        try:
            record = json.loads(Path(args.source).read_text())
            record["terms_bpd"], record["rate_bpd"], record["rmse_255"]  # noqa: B018 - the keys the figure reads
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{args.source} is not the JSON of `ddpm nll --json` ({exc.__class__.__name__}: {exc})"
                            ) from None
    else:
        from ddpm.commands.nll import measure

        args.checkpoint, args.amp = args.source, False
        record = measure(args)
    width, height = save_figure(rate_distortion_figure(record), args.output, args.dpi)
    print(f"{record['bits_per_dim']:.4f} bits/dim over {record['num_images']} images; wrote {args.output} "
          f"({width}x{height})")
    return 0


def run_shared_xt(args: argparse.Namespace) -> int:
    from ddpm.editing import shared_xt
    from ddpm.figures.common import save_figure
    from ddpm.figures.paper import shared_xt_figure

    loaded, x0, description, _ = _model_and_images(args)
    _check_timesteps(args.timesteps, loaded.diffusion.timesteps)
    rows = []
    for k in range(len(x0)):
        results = shared_xt(loaded.model, loaded.diffusion, x0[k:k + 1], args.timesteps, args.samples,
                            args.seed + 1000 * k, args.sampling_steps)
        rows.append((x0[k:k + 1], results))
    width, height = save_figure(shared_xt_figure(rows, args.timesteps), args.output, args.dpi)
    print(f"{loaded.source} (step {loaded.step}), {description}, t = {' '.join(map(str, args.timesteps))}, "
          f"{args.samples} samples each, {args.sampling_steps or 'all'} steps: wrote {args.output} ({width}x{height})")
    return 0


def run_interpolation(args: argparse.Namespace) -> int:
    from ddpm.editing import interpolate
    from ddpm.errors import ConfigError, DataError
    from ddpm.figures.common import save_figure
    from ddpm.figures.paper import interpolation_figure

    if args.lambdas < 2:
        raise ConfigError(f"--lambdas must be at least 2 (0 and 1), got {args.lambdas}")
    if args.num_images < 2:
        raise ConfigError(f"--num-images must be at least 2 (the two ends), got {args.num_images}")
    loaded, x0, description, _ = _model_and_images(args)
    if len(x0) < 2:
        raise DataError(f"interpolation needs two images, {description} has {len(x0)}")
    _check_timesteps(args.timesteps, loaded.diffusion.timesteps)
    lambdas = [k / (args.lambdas - 1) for k in range(args.lambdas)]
    a, b = x0[:1], x0[-1:]
    rows = [interpolate(loaded.model, loaded.diffusion, a, b, t, lambdas, args.seed, args.sampling_steps)
            for t in args.timesteps]
    width, height = save_figure(interpolation_figure(a, b, rows, args.timesteps, lambdas), args.output, args.dpi)
    print(f"{loaded.source} (step {loaded.step}), first and last of {description}, t = "
          f"{' '.join(map(str, args.timesteps))}, {args.sampling_steps or 'all'} steps: wrote {args.output} "
          f"({width}x{height})")
    return 0


def run_inpainting(args: argparse.Namespace) -> int:
    import torch

    from ddpm.editing import inpaint, make_mask, repaint_schedule
    from ddpm.errors import ConfigError
    from ddpm.figures.common import save_figure
    from ddpm.figures.paper import inpainting_figure

    if not 0 <= args.mask_fraction <= 1:
        raise ConfigError(f"--mask-fraction must be in [0, 1], got {args.mask_fraction}")
    loaded, x0, description, device = _model_and_images(args)
    T = loaded.diffusion.timesteps
    steps = min(args.sampling_steps or T, T)
    size = loaded.config.model.resolution
    known, filled = [], []
    for m, mask in enumerate(args.masks):
        k = make_mask(mask, size, torch.Generator().manual_seed(args.seed), args.mask_fraction).to(device)
        generators = [torch.Generator(device).manual_seed(args.seed + 1000 * m + i) for i in range(len(x0))]
        known.append(k)
        filled.append(inpaint(loaded.model, loaded.diffusion, x0, k, steps, args.resample, args.jump_length,
                              generators))
    path = repaint_schedule(steps, args.jump_length, args.resample)
    calls = sum(1 for a, b in zip(path, path[1:]) if b < a)
    method = "replacement" if args.resample == 1 else f"RePaint, r = {args.resample}, j = {args.jump_length}"
    title = f"Inpainting ({method}, {steps} steps: {calls} network calls per image)"
    width, height = save_figure(inpainting_figure(x0, args.masks, known, filled, title), args.output, args.dpi)
    print(f"{loaded.source} (step {loaded.step}), {description}, {method}, {calls} network calls per image: "
          f"wrote {args.output} ({width}x{height})")
    return 0


FIGURES = {"forward": run_forward, "trajectory": run_trajectory, "loss-vs-t": run_loss_vs_t,
           "architecture": run_architecture, "loss-weights": run_loss_weights, "classes": run_classes,
           "guidance": run_guidance, "rate-distortion": run_rate_distortion, "shared-xt": run_shared_xt,
           "interpolation": run_interpolation, "inpainting": run_inpainting}


def run(args: argparse.Namespace) -> int:
    return FIGURES[args.figure](args)
