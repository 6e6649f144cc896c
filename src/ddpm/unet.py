"""The denoising network eps_theta(x_t, t) (or x0/v, see ``--prediction``): a UNet with timestep-conditioned
residual blocks.

One class, configured by :class:`ddpm.config.ModelConfig`, builds both networks of the project:

* ``skip="level"`` (the original network, preset ``seed``): each encoder level is
  ResBlock -> Attention -> ResBlock -> Down (Conv2d k4 s2 p1) and hands one skip connection to its decoder
  level; the bottleneck is ResBlock -> Attention -> ResBlock -> Attention; each decoder level is
  Up (ConvTranspose2d k4 s2 p1) -> [concat skip] ResBlock -> Attention -> ResBlock -> Attention.
* ``skip="block"`` (Ho et al. 2020, appendix B, preset ``ho2020``): every block of the encoder feeds a skip
  connection, the decoder has ``num_res_blocks + 1`` blocks per level that each consume one, down-sampling is a
  stride-2 3x3 convolution and up-sampling nearest-neighbour + 3x3 convolution, the middle is
  ResBlock -> Attention -> ResBlock.

In both, attention follows residual blocks only at ``attn_resolutions`` (and always in the bottleneck), and a
sinusoidal timestep embedding (Vaswani et al. 2017, as in Ho et al.) is projected into every residual block. A
class-conditional network (``class_cond``) adds a learned class embedding to it, as guided-diffusion and diffusers'
``num_class_embeds`` do, with one extra row for "no class" (classifier-free guidance, Ho & Salimans 2021).
The ``ho2020`` preset is Ho et al.'s function down to their TensorFlow details (GroupNorm epsilon 1e-6, 'SAME'
padding of the down-sampling convolutions), so the weights they released load into it
(:mod:`ddpm.diffusers_format`).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ddpm.config import ModelConfig

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0, cos_first: bool = False,
                       freq_shift: int = 1) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, shape (B,) -> (B, dim) (Vaswani et al. 2017, sec. 3.5).

    Frequencies are ``max_period ** (-i / (half - freq_shift))`` for ``i < half``; Ho et al.'s code has
    ``freq_shift = 1`` and sines then cosines. ``cos_first`` and ``freq_shift`` are diffusers' ``flip_sin_to_cos``
    and ``freq_shift``, which other published models use.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32)
    args = t.float()[:, None] * torch.exp(exponent / (half - freq_shift))[None]
    waves = [torch.cos(args), torch.sin(args)] if cos_first else [torch.sin(args), torch.cos(args)]
    emb = torch.cat(waves, dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    """t -> sinusoid(nf) -> Linear -> act -> Linear: the conditioning vector shared by all residual blocks."""

    def __init__(self, sinusoid_dim: int, dim: int, act: type[nn.Module], cos_first: bool = False,
                 freq_shift: int = 1):
        super().__init__()
        self.sinusoid_dim, self.cos_first, self.freq_shift = sinusoid_dim, cos_first, freq_shift
        self.mlp = nn.Sequential(nn.Linear(sinusoid_dim, dim), act(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.sinusoid_dim, cos_first=self.cos_first, freq_shift=self.freq_shift))


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is cheaper on the CPU, where drawing it took a seventh of a training step.

    PyTorch's CPU ``bernoulli_`` draws 32 random bits per element from the one-threaded Mersenne Twister; here each
    element takes 16 of the 64 bits of one draw, a quarter of the generator's work. An element is dropped when its
    bits, read as a uniform integer u in [0, 2^16), fall below c = round(p 2^16), so the drop rate is c / 2^16 (within
    2^-17 of p), and kept elements are scaled by 2^16 / (2^16 - c), which keeps E[output] = input exactly. The bits
    come from the default generator, like ``bernoulli_``'s, so seeding and gradient checkpointing's replay work as
    before. Other devices keep PyTorch's fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0 < self.p < 1 or x.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(x)
        cut = round(self.p * 65536)
        draws = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-2**63, None)  # 64 uniform bits each
        keep = (draws.view(torch.int16)[:x.numel()] >= cut - 32768).view(x.shape)  # int16 = u - 2^15
        return torch.where(keep, x * (65536 / (65536 - cut)), 0)


class ResBlock(nn.Module):
    """GroupNorm -> act -> Conv, plus the projected timestep embedding, then GroupNorm -> act -> Dropout -> Conv.

    The second convolution starts at zero, weight and bias (Ho et al.'s ``init_scale=0``; their biases start at zero),
    so every block starts as the identity (a 1x1 convolution when the channel count changes).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, act: type[nn.Module], groups: int,
                 grad_checkpoint: bool = False, eps: float = 1e-5):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, in_ch, eps), act(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_proj = nn.Sequential(act(), nn.Linear(emb_dim, out_ch))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, out_ch, eps), act(), Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.shortcut = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)
        self.grad_checkpoint = grad_checkpoint

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_proj(emb)[:, :, None, None].to(h.dtype)
        return self.shortcut(x) + self.out_layers(h)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels, with a residual connection (Ho et al., appendix B).

    The output projection starts at zero, weight and bias, so the block starts as the identity.
    """

    def __init__(self, ch: int, heads: int, groups: int, eps: float = 1e-5):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch, eps)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Halve the resolution: Conv2d k4 s2 p1 (``level``) or Conv2d k3 s2 (``block``, Ho et al.).

    The k3 convolution pads one pixel on every side (``padding="symmetric"``) or, like TensorFlow's 'SAME' padding
    in Ho et al.'s code, one pixel on the right and bottom only (``padding="same"``): the output pixel (i, j) then
    sees input pixels 2i..2i+2 instead of 2i-1..2i+1.
    """

    def __init__(self, ch: int, kind: str, padding: str = "symmetric"):
        super().__init__()
        self.same = kind == "block" and padding == "same"
        self.conv = nn.Conv2d(ch, ch, 4, 2, 1) if kind == "level" else nn.Conv2d(ch, ch, 3, 2, 0 if self.same else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.same else x)


class Upsample(nn.Module):
    """Double the resolution: ConvTranspose2d k4 s2 p1 (``level``) or nearest + Conv2d k3 (Ho et al.)."""

    def __init__(self, ch: int, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = nn.ConvTranspose2d(ch, ch, 4, 2, 1) if kind == "level" else nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "block":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class Stage(nn.Sequential):
    """A run of layers; residual blocks also receive the timestep embedding."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


class UNet(nn.Module):
    """eps_theta(x_t, t): predicts the noise in ``x_t`` (B, C, H, W) at integer timesteps ``t`` (B,).

    A class-conditional network (``config.class_cond``) is eps_theta(x_t, t, labels), ``labels`` int64 (B,) in
    0 .. K where the value :attr:`num_classes` = K means "no class"; ``labels=None`` is "no class" for every image.
    ``num_classes`` is None for an unconditional network.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.num_classes: int | None = len(c.class_names) if c.class_cond else None
        act = ACTIVATIONS[c.activation]

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, c.time_emb_dim, c.dropout, act, c.norm_groups, c.grad_checkpoint, c.norm_eps)

        def attn(ch: int) -> AttentionBlock:
            heads = ch // c.attention_head_dim if c.attention_head_dim else c.attention_heads
            return AttentionBlock(ch, heads, c.norm_groups, c.norm_eps)

        self.time_embed = TimestepEmbedding(c.nf, c.time_emb_dim, act, c.time_cos_first, c.time_freq_shift)
        # Encoder and decoder are lists of stages; an encoder stage may push its output onto the skip stack and
        # a decoder stage may pop one and concatenate it to its input. `skip_ch` tracks the stack's channels.
        encoder: list[tuple[Stage, bool]] = [(Stage(nn.Conv2d(c.in_channels, c.nf, 3, padding=1)), c.skip == "block")]
        decoder: list[tuple[Stage, bool]] = []
        skip_ch = [c.nf] if c.skip == "block" else []
        ch, res_now, last = c.nf, c.resolution, len(c.ch_mult) - 1

        for level, mult in enumerate(c.ch_mult):
            out = c.nf * mult
            if c.skip == "block":
                for _ in range(c.num_res_blocks):
                    layers = [res(ch, out)] + ([attn(out)] if res_now in c.attn_resolutions else [])
                    encoder.append((Stage(*layers), True))
                    skip_ch.append(out)
                    ch = out
                if level != last:
                    encoder.append((Stage(Downsample(ch, "block", c.downsample_padding)), True))
                    skip_ch.append(ch)
                    res_now //= 2
            else:
                layers = []
                for j in range(c.num_res_blocks):
                    layers.append(res(ch, out))
                    ch = out
                    if j < c.num_res_blocks - 1 and res_now in c.attn_resolutions:
                        layers.append(attn(out))
                encoder.append((Stage(*layers), True))
                skip_ch.append(ch)
                encoder.append((Stage(Downsample(ch, "level")), False))
                res_now //= 2

        middle = [res(ch, ch), attn(ch), res(ch, ch)] + ([attn(ch)] if c.skip == "level" else [])
        self.middle = Stage(*middle)

        for level, mult in reversed(list(enumerate(c.ch_mult))):
            out = c.nf * mult
            with_attn = res_now * (2 if c.skip == "level" else 1) in c.attn_resolutions
            if c.skip == "block":
                for _ in range(c.num_res_blocks + 1):
                    layers = [res(ch + skip_ch.pop(), out)] + ([attn(out)] if with_attn else [])
                    decoder.append((Stage(*layers), True))
                    ch = out
                if level != 0:
                    decoder.append((Stage(Upsample(ch, "block")), False))
                    res_now *= 2
            else:
                decoder.append((Stage(Upsample(ch, "level")), False))
                res_now *= 2
                layers = []
                for j in range(c.num_res_blocks):
                    layers.append(res(ch + (skip_ch.pop() if j == 0 else 0), out))
                    ch = out
                    if with_attn:
                        layers.append(attn(out))
                decoder.append((Stage(*layers), True))

        assert not skip_ch, "every skip connection is consumed"
        self.encoder = nn.ModuleList(stage for stage, _ in encoder)
        self.push = tuple(flag for _, flag in encoder)
        self.decoder = nn.ModuleList(stage for stage, _ in decoder)
        self.pop = tuple(flag for _, flag in decoder)
        self.out = nn.Sequential(nn.GroupNorm(c.norm_groups, ch, c.norm_eps), act(),
                                 nn.Conv2d(ch, c.in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        # Built last, so that the other layers draw the same initial weights as in an unconditional network.
        self.class_embed = nn.Embedding(self.num_classes + 1, c.time_emb_dim) if c.class_cond else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(t)
        if self.class_embed is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_embed(labels)
        elif labels is not None:
            raise ValueError("this network is not class-conditional: call it without labels")
        h, skips = x, []
        for stage, push in zip(self.encoder, self.push):
            h = stage(h, emb)
            if push:
                skips.append(h)
        h = self.middle(h, emb)
        for stage, pop in zip(self.decoder, self.pop):
            if pop:
                h = torch.cat([h, skips.pop()], dim=1)
            h = stage(h, emb)
        return self.out(h)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def create_model(preset: str | ModelConfig = "seed", **overrides) -> UNet:
    """The UNet of a preset (``"seed"``, ``"ho2020"``, ``"tiny"``) or of an explicit :class:`ModelConfig`.

    Keyword arguments override single fields, e.g. ``create_model("ho2020", dropout=0.0)``.
    """
    from ddpm.config import make_config  # local: config does not import the network

    if isinstance(preset, ModelConfig):
        config = dataclasses.replace(preset, **overrides)
    else:
        config = make_config(preset, {"model": overrides}).model
    return UNet(config)
