"""Figures that explain a DDPM: the forward process, the reverse trajectory, the loss per timestep, the network
and the training curves. ``ddpm visualize`` and ``ddpm plot`` are thin wrappers around these functions.

Every figure is a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global state, no GUI backend)
and sized in whole quarter-inches, so that at an integer dpi its pixel size is exact and predictable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from ddpm.diffusion import GaussianDiffusion, Model
from ddpm.errors import ConfigError, DataError
from ddpm.generate import to_uint8
from ddpm.samplers import randn
from ddpm.unet import AttentionBlock, Downsample, ResBlock, UNet, Upsample

# The timesteps of the forward-process figure, given for T = 1000 and scaled to other T.
FORWARD_TIMESTEPS = (0, 100, 250, 500, 750, 999)
SCHEDULE_COLORS = {"linear": "tab:blue", "cosine": "tab:orange"}


def save_figure(fig: Figure, path: str | Path, dpi: int) -> tuple[int, int]:
    """Write ``fig`` as a PNG at ``dpi`` and return its (width, height) in pixels."""
    fig.savefig(path, dpi=dpi)
    return round(fig.get_figwidth() * dpi), round(fig.get_figheight() * dpi)


def _quarter_inches(inches: float) -> float:
    """Round a figure dimension up to whole quarter-inches, exact in binary, so pixel sizes are exact."""
    return math.ceil(inches * 4) / 4


def _tile(rows: Sequence[Sequence[np.ndarray]], pad: int = 1, fill: int = 255) -> np.ndarray:
    """A grid of equally sized uint8 (H, W, C) images separated by ``pad`` pixels of ``fill``."""
    h, w, c = rows[0][0].shape
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, c), fill, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = image
    return out


# ------------------------------------------------------------------------------------------------ forward process
def scaled_timesteps(timesteps: int, at_1000: Sequence[int] = FORWARD_TIMESTEPS) -> list[int]:
    """Timesteps given for T = 1000 mapped to the same fraction t/1000 of a process of ``timesteps`` = T steps."""
    return sorted({min(round(t * timesteps / 1000), timesteps - 1) for t in at_1000})


def snr(diffusion: GaussianDiffusion) -> torch.Tensor:
    """Signal-to-noise ratio of x_t: SNR(t) = alpha-bar_t / (1 - alpha-bar_t) (Kingma et al. 2021, eq. 2)."""
    return diffusion.alphas_cumprod / (1 - diffusion.alphas_cumprod)


def forward_figure(images: torch.Tensor, timesteps: int = 1000, beta_start: float | None = None,
                   beta_end: float | None = None, seed: int = 0) -> Figure:
    """q(x_t | x_0) of ``images`` (uint8) at :data:`FORWARD_TIMESTEPS` for the linear and cosine schedules, with
    alpha-bar_t and SNR(t) of both below.

    Each x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps (Ho et al. 2020, eq. 4) uses the same eps in
    every panel, so the columns differ only by alpha-bar_t and the two grids only by the schedule.
    """
    schedules = {name: GaussianDiffusion(timesteps, beta_start, beta_end, name) for name in SCHEDULE_COLORS}
    ts = scaled_timesteps(timesteps)
    x0 = images.float() / 127.5 - 1
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    n = len(images)
    fig = Figure(figsize=(12, _quarter_inches(0.75 * n + 4.5)), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[0.75 * n + 0.5, 3.25])
    for col, (name, diffusion) in enumerate(schedules.items()):
        noisy = [to_uint8(diffusion.q_sample(x0, torch.full((n,), t), eps).clamp(-1, 1)).numpy() for t in ts]
        rows = [[x_t[i] for x_t in noisy] for i in range(n)]
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(_tile(rows), interpolation="nearest")
        size = images.shape[-1] + 1
        ax.set_xticks([1 + size * (j + 0.5) for j in range(len(ts))], [f"t={t}" for t in ts])
        ax.set_yticks([])
        ax.tick_params(length=0)
        ax.set_title(f"{name} schedule: x_t ~ q(x_t | x_0)", color=SCHEDULE_COLORS[name])
    t_axis = np.arange(timesteps)
    abar = fig.add_subplot(grid[1, 0])
    ratio = fig.add_subplot(grid[1, 1])
    for name, diffusion in schedules.items():
        abar.plot(t_axis, diffusion.alphas_cumprod.numpy(), label=name, color=SCHEDULE_COLORS[name])
        ratio.semilogy(t_axis, snr(diffusion).numpy(), label=name, color=SCHEDULE_COLORS[name])
    for ax, title in ((abar, "ᾱ_t: fraction of the signal's variance left"), (ratio, "SNR(t) = ᾱ_t / (1 − ᾱ_t)")):
        for t in ts:
            ax.axvline(t, color="0.85", lw=0.8, zorder=0)
        ax.set_xlabel("timestep t")
        ax.set_title(title)
        ax.legend()
        ax.set_xlim(0, timesteps - 1)
    fig.suptitle(f"The forward process, T = {timesteps} (the same noise ε in every panel)")
    return fig


# --------------------------------------------------------------------------------------------- reverse trajectory
@dataclass
class Trajectory:
    """Snapshots of a reverse process: at step i (timestep t) the input x_t and the x_0 predicted from it."""

    steps: list[int]
    timesteps: list[int]
    x_t: list[np.ndarray]   # each (N, H, W, C) uint8
    x0_pred: list[np.ndarray]
    seeds: list[int]
    sampler: str


@torch.no_grad()
def record_trajectory(model: Model, diffusion: GaussianDiffusion, seeds: Sequence[int], shape: tuple[int, int, int],
                      keep: set[int] | None = None, sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0,
                      clip_denoised: bool = True, device: torch.device | str = "cpu") -> Trajectory:
    """Run ``sampler`` from the noise of ``seeds`` and keep (x_t, predicted x_0) at the step indices in ``keep``
    (all steps if None).

    The noise comes from one generator per seed, as in ``ddpm sample --seed``, so the last x_0 is the image that
    command draws for that seed. The samplers' ``callback(i, t, x, x0_pred)`` hands over the state *after*
    step i; the x_t that step i denoised is the state after step i - 1 (x_T for i = 0).
    """
    generators = [torch.Generator(device).manual_seed(s) for s in seeds]
    x_T = randn((len(seeds), *shape), generators, device)
    x_t = x_T
    record = Trajectory([], [], [], [], list(seeds), sampler)

    def callback(i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        nonlocal x_t
        if keep is None or i in keep:
            record.steps.append(i)
            record.timesteps.append(t)
            record.x_t.append(to_uint8(x_t.clamp(-1, 1)).numpy())
            record.x0_pred.append(to_uint8(x0.clamp(-1, 1)).numpy())
        x_t = x

    diffusion.sample(model, (len(seeds), *shape), sampler=sampler, steps=steps, eta=eta,
                     clip_denoised=clip_denoised, generator=generators, device=device, callback=callback, x_T=x_T)
    return record


def number_of_steps(diffusion: GaussianDiffusion, sampler: str, steps: int | None) -> int:
    """The network evaluations ``sampler`` makes with ``steps`` (None: its default, see :func:`ddpm.samplers.sample`)."""
    if steps is not None:
        return steps
    if sampler == "ddpm":
        return diffusion.timesteps
    return min(50, diffusion.timesteps if sampler == "ddim" else max(diffusion.timesteps - 1, 1))


def every_k(total: int, every: int) -> set[int]:
    """Step indices 0, k, 2k, ... and always the last one, whose predicted x_0 is the sample."""
    return set(range(0, total, every)) | {total - 1}


def trajectory_figure(record: Trajectory, keep: set[int]) -> Figure:
    """A strip: for each seed a row of x_t and a row of the x_0 predicted from it, one column per kept step."""
    columns = [k for k, i in enumerate(record.steps) if i in keep]
    rows, labels = [], []
    for n, seed in enumerate(record.seeds):
        rows.append([record.x_t[k][n] for k in columns])
        rows.append([record.x0_pred[k][n] for k in columns])
        labels += [f"seed {seed}: x_t", "predicted x̂₀"]
    fig = Figure(figsize=(_quarter_inches(0.75 * len(columns) + 1.5), _quarter_inches(0.75 * len(rows) + 1)),
                 layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(_tile(rows), interpolation="nearest")
    size = record.x_t[0].shape[1] + 1
    ax.set_xticks([1 + size * (j + 0.5) for j in range(len(columns))],
                  [f"t={record.timesteps[k]}" for k in columns], fontsize=8)
    ax.set_yticks([1 + size * (j + 0.5) for j in range(len(rows))], labels, fontsize=8)
    ax.tick_params(length=0)
    ax.set_title(f"Reverse process ({record.sampler}): x_t and the x̂₀ predicted from it; the last x̂₀ is the sample")
    return fig


def trajectory_gif(record: Trajectory, path: str | Path, scale: int = 3, frame_ms: int = 100) -> tuple[int, int]:
    """An animated GIF of every recorded step: x_t above, predicted x_0 below, one column per seed, the timestep
    in a caption; upscaled ``scale`` times (nearest neighbour) and the last frame held for a second.
    Returns the frame size (width, height) in pixels."""
    frames = []
    caption = 16
    for k, t in enumerate(record.timesteps):
        tile = _tile([list(record.x_t[k]), list(record.x0_pred[k])], pad=1)
        image = Image.fromarray(tile).resize((tile.shape[1] * scale, tile.shape[0] * scale), Image.NEAREST)
        frame = Image.new("RGB", (image.width, image.height + caption), "white")
        frame.paste(image, (0, 0))
        ImageDraw.Draw(frame).text((4, image.height + 2), f"{record.sampler}  t={t}", fill="black")
        frames.append(frame)
    durations = [frame_ms] * (len(frames) - 1) + [1000]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True)
    return frames[0].size


# ---------------------------------------------------------------------------------------------- loss per timestep
@dataclass
class BucketLoss:
    """L_simple averaged over the images of one timestep range [start, stop)."""

    start: int
    stop: int
    mean: float
    stderr: float
    count: int


@torch.no_grad()
def loss_per_timestep(model: Model, diffusion: GaussianDiffusion, images: torch.Tensor, buckets: int = 10,
                      batch_size: int = 128, seed: int = 0, device: torch.device | str = "cpu") -> list[BucketLoss]:
    """The training loss ||eps - eps_theta(x_t, t)||^2 (Ho et al. 2020, eq. 14) per timestep bucket.

    Every image is noised once per bucket at a t drawn uniformly inside it, with noise and t from a generator
    seeded with ``seed``, so two checkpoints are compared on the same (x_0, t, eps). The mean over buckets
    weighted by their width is the uniform-t loss that training minimises.
    """
    T = diffusion.timesteps
    if not 1 <= buckets <= T:
        raise ConfigError(f"--buckets must be between 1 and T = {T}, got {buckets}")
    edges = [round(b * T / buckets) for b in range(buckets + 1)]
    generator = torch.Generator().manual_seed(seed)
    x0_all = images.float() / 127.5 - 1
    results = []
    for start, stop in zip(edges[:-1], edges[1:]):
        losses = []
        for i in range(0, len(x0_all), batch_size):
            x0 = x0_all[i:i + batch_size]
            t = torch.randint(start, stop, (len(x0),), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            x0, t, noise = x0.to(device), t.to(device), noise.to(device)
            prediction = model(diffusion.q_sample(x0, t, noise), t).float()
            losses.append((prediction - noise).pow(2).mean(dim=(1, 2, 3)).cpu())
        per_image = torch.cat(losses).double()
        stderr = per_image.std().item() / math.sqrt(len(per_image)) if len(per_image) > 1 else 0.0
        results.append(BucketLoss(start, stop, per_image.mean().item(), stderr, len(per_image)))
    return results


def uniform_t_loss(rows: Sequence[BucketLoss]) -> float:
    """The buckets' losses weighted by their widths: the loss under t ~ Uniform{0..T-1}."""
    return sum(r.mean * (r.stop - r.start) for r in rows) / sum(r.stop - r.start for r in rows)


def loss_figure(rows: Sequence[BucketLoss], title: str) -> Figure:
    """The loss per timestep bucket on a log scale, the uniform-t mean as a line.

    Each bucket is a point at its mean with a horizontal bar over its timesteps and whiskers of one standard error;
    not a bar chart, whose bar heights on a log axis would depend on where the axis happens to start.
    """
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    half = [(r.stop - r.start) / 2 for r in rows]
    ax.errorbar([r.start + h for r, h in zip(rows, half)], [r.mean for r in rows], xerr=half,
                yerr=[r.stderr for r in rows], fmt="o", color="tab:blue", ecolor="tab:blue", capsize=2, ms=4)
    mean = uniform_t_loss(rows)
    ax.axhline(mean, color="tab:red", ls="--", lw=1, label=f"mean over t ~ U{{0..T-1}}: {mean:.4f}")
    ax.set_yscale("log")
    ax.set_xlim(rows[0].start, rows[-1].stop)
    ax.set_xlabel("timestep t (bucket)")
    ax.set_ylabel("‖ε − ε_θ(x_t, t)‖² per pixel")
    ax.legend()
    ax.set_title(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------------- architecture
@dataclass
class StageInfo:
    """One stage of the UNet as the forward pass sees it."""

    part: str                 # "encoder", "middle", "decoder" or "out"
    index: int
    layers: list[str]
    kind: str                 # "conv", "res", "attn", "down", "up" or "middle": the box's colour
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    parameters: int
    pushes: bool = False
    pops: int | None = None   # the index of the encoder stage whose output this stage concatenates


def _layer_label(layer: torch.nn.Module) -> str:
    if isinstance(layer, ResBlock):
        return f"Res {layer.in_layers[0].num_channels}→{layer.out_layers[-1].out_channels}"
    if isinstance(layer, AttentionBlock):
        return "Attn" + (f"×{layer.heads}" if layer.heads > 1 else "")
    if isinstance(layer, Downsample):
        k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
        return f"Down conv{k}/s{s}"
    if isinstance(layer, Upsample):
        return "Up nearest+conv3" if layer.kind == "block" else "Up convT4/s2"
    if isinstance(layer, torch.nn.Conv2d):
        return f"Conv{layer.kernel_size[0]} {layer.in_channels}→{layer.out_channels}"
    if isinstance(layer, torch.nn.GroupNorm):
        return "GroupNorm"
    return type(layer).__name__


def _stage_kind(layers: Sequence[torch.nn.Module]) -> str:
    if any(isinstance(m, AttentionBlock) for m in layers):
        return "attn"
    if any(isinstance(m, Downsample) for m in layers):
        return "down"
    if any(isinstance(m, Upsample) for m in layers):
        return "up"
    return "res" if any(isinstance(m, ResBlock) for m in layers) else "conv"


@torch.no_grad()
def describe_unet(model: UNet) -> list[StageInfo]:
    """Walk ``model`` as its forward pass does: every stage of ``encoder``, ``middle``, ``decoder`` and ``out``,
    with the shapes a forward hook records on one input and the skip connections paired as ``push``/``pop``
    use them, so the description is of the network itself and never out of date."""
    c = model.config
    stages = [("encoder", i, s) for i, s in enumerate(model.encoder)] + [("middle", 0, model.middle)]
    stages += [("decoder", i, s) for i, s in enumerate(model.decoder)] + [("out", 0, model.out)]
    shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = [module.register_forward_hook(
        lambda mod, args, out, key=k: shapes.__setitem__(key, (tuple(args[0].shape[1:]), tuple(out.shape[1:]))))
        for k, (_, _, module) in enumerate(stages)]
    try:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        model(torch.zeros(1, c.in_channels, c.resolution, c.resolution, device=device), torch.zeros(1, device=device,
                                                                                                    dtype=torch.long))
        model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    infos, stack = [], []
    for k, (part, index, module) in enumerate(stages):
        layers = list(module)
        info = StageInfo(part, index, [_layer_label(m) for m in layers], _stage_kind(layers), *shapes[k],
                         sum(p.numel() for p in module.parameters()))
        if part == "middle":
            info.kind = "middle"
        if part == "encoder" and model.push[index]:
            info.pushes = True
            stack.append(len(infos))
        if part == "decoder" and model.pop[index]:
            info.pops = stack.pop()
            skip = infos[info.pops].out_shape[0]
            res = next(i for i, m in enumerate(layers) if isinstance(m, ResBlock))
            info.layers[res] = f"Res {info.in_shape[0] - skip}+{skip}→{layers[res].out_layers[-1].out_channels}"
        infos.append(info)
    return infos


STAGE_COLORS = {"conv": "0.88", "res": "#cfe2f3", "attn": "#fde5c4", "down": "#f4cccc", "up": "#d9ead3",
                "middle": "#e1d5e7"}


def _stage_rows(infos: list[StageInfo]) -> list[float]:
    """Vertical positions: encoder stages one row each going down, the middle below, decoder stages going up with
    every stage that pops a skip on the row of the stage that pushed it (so skips are horizontal), the others
    half-way between their neighbours, and ``out`` one row above the last decoder stage."""
    rows: list[float] = [0.0] * len(infos)
    y = 0.0
    for k, info in enumerate(infos):
        if info.part in ("encoder", "middle"):
            rows[k] = y
            y -= 1
    decoder = [k for k, info in enumerate(infos) if info.part == "decoder"]
    below = rows[next(k for k, info in enumerate(infos) if info.part == "middle")]
    pending: list[int] = []
    for k in decoder:
        if infos[k].pops is None:
            pending.append(k)
            continue
        target = rows[infos[k].pops]
        for j, p in enumerate(pending):
            rows[p] = below + (target - below) * (j + 1) / (len(pending) + 1)
        pending = []
        rows[k] = below = target
    for j, p in enumerate(pending):
        rows[p] = below + 0.5 * (j + 1)
        below = rows[p]
    rows[-1] = max(rows[k] for k in decoder) + 1
    return rows


def architecture_figure(model: UNet, title: str) -> Figure:
    """A diagram of ``model`` drawn from :func:`describe_unet`: encoder down the left, middle at the bottom,
    decoder up the right, one box per stage (resolution, layers, output channels, parameters), dashed arrows for
    the skip connections concatenated in the decoder."""
    infos = describe_unet(model)
    rows = _stage_rows(infos)
    top, bottom = max(rows) + 1, min(rows) - 0.6
    width, box_w, box_h, indent = 11.0, 4.0, 0.4, 0.3
    fig = Figure(figsize=(width, _quarter_inches(0.5 * (top - bottom) + 1.25)), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(0, width)
    ax.set_ylim(bottom, top)
    ax.axis("off")
    resolution = model.config.resolution
    boxes: dict[int, tuple[float, float, float]] = {}  # stage -> (left, right, y)
    for k, (info, y) in enumerate(zip(infos, rows)):
        depth = int(round(math.log2(resolution / info.out_shape[-1])))
        if info.part == "encoder":
            left = 0.1 + depth * indent
        elif info.part == "middle":
            left = (width - box_w) / 2
        else:
            left = width - 0.1 - box_w - depth * indent
        boxes[k] = (left, left + box_w, y)
        c, h, w = info.out_shape
        text = f"{h}×{w}  " + " · ".join(info.layers) + f"  → {c}ch"
        ax.add_patch(_box(left, y - box_h / 2, box_w, box_h, STAGE_COLORS[info.kind]))
        ax.text(left + 0.08, y, text, va="center", ha="left", fontsize=7, family="monospace")
        ax.text(left + box_w - 0.06, y, _millions(info.parameters), va="center", ha="right", fontsize=6, color="0.4")
    arrow = dict(arrowstyle="-|>", color="0.25", lw=0.8, shrinkA=0, shrinkB=0)
    for k in range(1, len(infos)):  # the main path: down the encoder, through the middle, up the decoder
        (l0, r0, y0), (l1, r1, y1) = boxes[k - 1], boxes[k]
        if infos[k].part == "middle":
            start, end = ((l0 + r0) / 2, y0 - box_h / 2), (l1, y1)
        elif infos[k - 1].part == "middle":
            start, end = (r0, y0), ((l1 + r1) / 2, y1 - box_h / 2)
        else:
            side = box_h / 2 if y1 > y0 else -box_h / 2
            start, end = ((l0 + r0) / 2, y0 + side), ((l1 + r1) / 2, y1 - side)
        ax.annotate("", end, start, arrowprops=arrow)
    for k, info in enumerate(infos):  # skip connections, from the pushing stage's right edge to the popping one
        if info.pops is not None:
            ax.annotate("", (boxes[k][0], rows[k]), (boxes[info.pops][1], rows[info.pops]),
                        arrowprops={**arrow, "color": "tab:gray", "ls": "--"})
    c = model.config
    shape = f"({c.in_channels}×{c.resolution}×{c.resolution})"
    for (left, right, y), text, above in ((boxes[0], f"x_t {shape}, t", True),
                                          (boxes[len(infos) - 1], f"ε_θ(x_t, t) {shape}", False)):
        x = (left + right) / 2
        ends = [(x, y + box_h / 2), (x, y + 0.45)]
        ax.annotate("", *(ends if above else ends[::-1]), arrowprops=arrow)
        ax.text(x, y + 0.58, text, ha="center", va="center", fontsize=8)
    from matplotlib.lines import Line2D

    handles = [_box(0, 0, 1, 1, STAGE_COLORS[k]) for k in ("conv", "res", "attn", "down", "up", "middle")]
    handles.append(Line2D([], [], ls="--", color="tab:gray", lw=0.8))
    fig.legend(handles, ["convolution", "residual blocks", "with self-attention", "down-sample", "up-sample",
                         "middle", "skip connection (concatenated)"], loc="outside lower center", ncol=7, fontsize=7,
               frameon=False)
    fig.suptitle(title, fontsize=10)
    emb = model.time_embed
    ax.set_title(f"every Res block also adds the timestep embedding: t → sinusoid({emb.sinusoid_dim}) → Linear → "
                 f"{c.activation} → Linear ({c.time_emb_dim})", fontsize=7.5, color="0.3")
    return fig


def _box(x: float, y: float, w: float, h: float, color: str):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.06", facecolor=color,
                          edgecolor="0.35", lw=0.6)


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 1e5 else f"{count / 1e3:.1f}k"


# ------------------------------------------------------------------------------------------------ training curves
def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (``path`` is the file or its run directory), one per logged step.

    Lines of the same step are merged (``--fid-every`` writes its metrics on a line of their own). A resumed run
    may log a step twice (when it resumed from a checkpoint older than its last log line); the later values win,
    so the curve is the one the final weights followed. A line cut short by a crash is skipped.
    """
    path = Path(path)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"no metrics.jsonl at {path}; pass a run directory of `ddpm train` (its --save-model) or "
                        "the metrics.jsonl file itself")
    records: dict[int, dict] = {}
    for line in file.read_text().splitlines():
        try:
            record = json.loads(line)
            records.setdefault(int(record["step"]), {}).update(record)
        except (ValueError, KeyError, TypeError):
            continue
    if not records:
        raise DataError(f"{file} holds no metrics yet; training writes one line every --logging-steps steps")
    return [records[s] for s in sorted(records)]


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction, as TensorBoard's smoothing slider (0: none)."""
    out, average = [], 0.0
    for n, v in enumerate(values, start=1):
        average = weight * average + (1 - weight) * v
        out.append(average / (1 - weight**n) if weight else v)
    return out


def metrics_figure(records: Sequence[dict], title: str, smoothing: float = 0.6) -> Figure:
    """Loss (raw and smoothed, log scale), learning rate, gradient norm and, with ``--fid-every``, FID against
    the training step."""
    evaluations = [r for r in records if r.get("fid") is not None]
    records = [r for r in records if "loss" in r]
    steps = [r["step"] for r in records]
    panels = 4 if evaluations else 3
    fig = Figure(figsize=(8, 7 + 1.8 * (panels - 3)), layout="constrained")
    axes = fig.subplots(panels, 1, sharex=True, height_ratios=[2.2, 1, 1, 1.4][:panels])
    loss_ax, lr_ax, grad_ax = axes[:3]
    loss = [r["loss"] for r in records]
    loss_ax.semilogy(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="logged (mean over the window)")
    loss_ax.semilogy(steps, smooth(loss, smoothing), color="tab:blue", lw=1.5, label=f"smoothed ({smoothing})")
    loss_ax.set_ylabel("loss ‖ε − ε_θ‖²")
    loss_ax.legend()
    loss_ax.set_title(title, fontsize=10)
    lr_ax.plot(steps, [r["lr"] for r in records], color="tab:green")
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    lr_ax.set_ylim(bottom=0)
    grad_ax.semilogy(steps, [r.get("grad_norm", float("nan")) for r in records], color="tab:red", lw=0.8)
    grad_ax.set_ylabel("gradient norm")
    if evaluations:
        axes[3].plot([r["step"] for r in evaluations], [r["fid"] for r in evaluations], marker="o", color="tab:purple")
        axes[3].set_ylabel("FID (EMA)")
    axes[-1].set_xlabel("training step")
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig
