"""The architecture diagram: the UNet described by walking the network itself, then drawn stage by stage."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from matplotlib.figure import Figure

from ddpm.figures.common import quarter_inches
from ddpm.unet import AttentionBlock, Downsample, ResBlock, UNet, Upsample


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
    fig = Figure(figsize=(width, quarter_inches(0.5 * (top - bottom) + 1.25)), layout="constrained")
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
