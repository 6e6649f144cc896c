"""The UNet of :mod:`ddpm.unet`: shapes, pinned parameter counts, where attention sits, block layouts, the timestep
embedding (against diffusers), time conditioning, batch independence and gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ddpm.unet as unet_module
from ddpm.unet import (AttentionBlock, Dropout, Downsample, ResBlock, UNet, Upsample, count_parameters, create_model,
                       timestep_embedding)

HO2020_PARAMETERS = 35_746_307


def perturb(model: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Move every weight off its initialisation (the zero-initialised output convolutions make a fresh UNet output
    zero and its residual blocks identities, which would hide most of what these tests look at)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def attention_sizes(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> list[tuple[int, int]]:
    """The spatial size every AttentionBlock sees during one forward pass, in call order."""
    sizes = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: sizes.append(tuple(args[0].shape[-2:])))
             for m in model.modules() if isinstance(m, AttentionBlock)]
    try:
        with torch.no_grad():
            model(x, t)
    finally:
        for h in hooks:
            h.remove()
    return sizes


def images(batch: int, seed: int = 0, res: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize("preset, batch", [("seed", 2), ("tiny", 3)])
def test_output_shape_and_zero_output_at_init(preset, batch):
    model = create_model(preset).eval()
    x = images(batch)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 999, 500][:batch]))
    assert out.shape == x.shape and out.dtype == x.dtype
    # The final convolution starts at zero (Ho et al.'s init_scale=0), so a fresh network predicts eps = 0.
    assert torch.count_nonzero(out) == 0
    with torch.no_grad():
        out = perturb(model)(x, torch.tensor([0, 999, 500][:batch]))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().mean() > 1e-3


def test_ho2020_parameter_count_shape_and_attention():
    model = create_model("ho2020").eval()
    assert count_parameters(model) == HO2020_PARAMETERS
    assert abs(count_parameters(model) - 35.7e6) / 35.7e6 < 3e-3  # Ho et al. (2020), appendix B: 35.7M
    x = images(1)
    sizes = attention_sizes(model, x, torch.tensor([123]))
    # Self-attention at 16x16 (2 encoder + 3 decoder blocks) and once in the middle (4x4).
    assert sorted(sizes) == [(4, 4)] + [(16, 16)] * 5
    with torch.no_grad():
        assert model(x, torch.tensor([123])).shape == x.shape
    assert all(isinstance(m.conv, nn.Conv2d) and m.conv.kernel_size == (3, 3) and m.conv.stride == (2, 2)
               for m in model.modules() if isinstance(m, Downsample))
    assert all(m.kind == "block" and m.conv.kernel_size == (3, 3) for m in model.modules() if isinstance(m, Upsample))


def test_ho2020_has_ho_et_al_tensorflow_details():
    """GroupNorm epsilon 1e-6 everywhere and 'SAME' padding of the down-sampling convolutions, as in their code."""
    model = create_model("ho2020")
    assert {m.eps for m in model.modules() if isinstance(m, nn.GroupNorm)} == {1e-6}
    assert all(m.same and m.conv.padding == (0, 0) for m in model.modules() if isinstance(m, Downsample))
    assert {m.eps for m in create_model("seed").modules() if isinstance(m, nn.GroupNorm)} == {1e-5}


def test_a_config_from_before_the_tensorflow_options_rebuilds_its_network():
    """Checkpoints written before norm_eps, downsample_padding, attention_head_dim and the embedding options
    existed lack those keys; the field defaults are the network they were trained as, even for ho2020."""
    from ddpm.config import RunConfig, make_config

    old = make_config("ho2020").to_dict()
    for key in ("norm_eps", "downsample_padding", "attention_head_dim", "time_cos_first", "time_freq_shift"):
        del old["model"][key]
    model = UNet(RunConfig.from_dict(old).model)
    assert {m.eps for m in model.modules() if isinstance(m, nn.GroupNorm)} == {1e-5}
    assert all(not m.same and m.conv.padding == (1, 1) for m in model.modules() if isinstance(m, Downsample))
    assert (model.time_embed.cos_first, model.time_embed.freq_shift) == (False, 1)
    assert {m.heads for m in model.modules() if isinstance(m, AttentionBlock)} == {1}


@pytest.mark.parametrize("size", [4, 8, 32])
def test_same_padding_is_tensorflows(size):
    """TensorFlow's 'SAME' for a k3 s2 convolution: out = ceil(n / 2), total padding max((out - 1) * 2 + 3 - n, 0),
    of which floor(total / 2) before and the rest after (tf.nn.convolution's documentation); for the even sizes
    a UNet sees, 0 before and 1 after."""
    torch.manual_seed(0)
    down = Downsample(4, "block", "same")
    x = torch.randn(1, 4, size, size)
    out = -(-size // 2)
    total = max((out - 1) * 2 + 3 - size, 0)
    before, after = total // 2, total - total // 2
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (before, after, before, after)),
                                          down.conv.weight, down.conv.bias, stride=2)
    assert (before, after) == (0, 1)
    torch.testing.assert_close(down(x), expected, rtol=0, atol=0)


def test_ho2020_parameter_count_matches_diffusers_ddpm_cifar10_architecture():
    """diffusers' UNet2DModel configured as google/ddpm-cifar10-32 (Ho et al.'s network) has the same count."""
    from diffusers import UNet2DModel

    ref = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        act_fn="silu", norm_num_groups=32, flip_sin_to_cos=False, freq_shift=1,
    )
    assert sum(p.numel() for p in ref.parameters()) == HO2020_PARAMETERS


def test_pinned_parameter_counts_of_small_presets():
    assert count_parameters(create_model("seed")) == 4_490_019
    assert count_parameters(create_model("tiny")) == 367_891


# ---------------------------------------------------------------- the seed network's layout


def test_seed_attention_only_at_8x8_and_4x4():
    model = create_model("seed").eval()
    sizes = attention_sizes(model, images(1), torch.tensor([10]))
    # encoder level at 8x8: 1, bottleneck (4x4): 2, decoder level at 8x8: 2.
    assert sorted(sizes) == [(4, 4)] * 2 + [(8, 8)] * 3
    assert sum(isinstance(m, AttentionBlock) for m in model.modules()) == 5


def test_tiny_attention_only_at_8x8_and_the_bottleneck():
    model = create_model("tiny").eval()
    assert sorted(attention_sizes(model, images(1), torch.tensor([10]))) == [(4, 4)] * 2 + [(8, 8)] * 3


def test_seed_resblocks_run_groupnorm_act_dropout_conv_in_that_order():
    model = create_model("seed").train()
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 6 + 2 + 6
    for block in blocks:
        assert [type(m) for m in block.in_layers] == [nn.GroupNorm, nn.ReLU, nn.Conv2d]
        assert [type(m) for m in block.out_layers] == [nn.GroupNorm, nn.ReLU, Dropout, nn.Conv2d]
        assert isinstance(block.out_layers[2], nn.Dropout)
        assert block.out_layers[2].p == pytest.approx(0.1)
        assert block.in_layers[0].num_groups == 32
    # The order the layers actually run in, for one block.
    block = blocks[1]
    calls = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: calls.append(type(mod).__name__))
             for m in block.modules() if not list(m.children()) and not isinstance(m, nn.Identity)]
    try:
        block(torch.randn(2, block.in_layers[0].num_channels, 8, 8), torch.randn(2, 512))
    finally:
        for h in hooks:
            h.remove()
    assert calls == ["GroupNorm", "ReLU", "Conv2d", "ReLU", "Linear", "GroupNorm", "ReLU", "Dropout", "Conv2d"]


def test_seed_resampling_layers():
    model = create_model("seed")
    downs = [m.conv for m in model.modules() if isinstance(m, Downsample)]
    ups = [m.conv for m in model.modules() if isinstance(m, Upsample)]
    assert len(downs) == len(ups) == 3
    for conv in downs:
        assert type(conv) is nn.Conv2d
        assert (conv.kernel_size, conv.stride, conv.padding) == ((4, 4), (2, 2), (1, 1))
    for conv in ups:
        assert type(conv) is nn.ConvTranspose2d
        assert (conv.kernel_size, conv.stride, conv.padding) == ((4, 4), (2, 2), (1, 1))
    for down, up in zip(downs, ups):
        assert down(torch.randn(1, down.in_channels, 8, 8)).shape == (1, down.out_channels, 4, 4)
        assert up(torch.randn(1, up.in_channels, 8, 8)).shape == (1, up.out_channels, 16, 16)


# ---------------------------------------------------------------- time conditioning


@pytest.mark.parametrize("dim", [16, 128, 64, 33])
@pytest.mark.parametrize("cos_first, shift", [(False, 1), (True, 0), (True, 1), (False, 0)])
def test_timestep_embedding_matches_diffusers(dim, cos_first, shift):
    """Ho et al.'s sinusoids (the default): frequencies 10000^(-i/(half-1)), sines then cosines = diffusers'
    get_timestep_embedding(flip_sin_to_cos=False, downscale_freq_shift=1); the other orders and shifts are
    diffusers' too."""
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 1, 2, 17, 500, 999])
    ours = timestep_embedding(t, dim, cos_first=cos_first, freq_shift=shift)
    ref = get_timestep_embedding(t, dim, flip_sin_to_cos=cos_first, downscale_freq_shift=shift)
    assert ours.shape == (6, dim)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    sines, cosines = (slice(dim // 2, 2 * (dim // 2)), slice(0, dim // 2)) if cos_first else (
        slice(0, dim // 2), slice(dim // 2, 2 * (dim // 2)))
    assert ours[0, sines].abs().max() == 0 and torch.all(ours[0, cosines] == 1)
    if (cos_first, shift) == (False, 1):
        assert torch.equal(ours, timestep_embedding(t, dim))


def test_output_depends_on_the_timestep():
    model = perturb(create_model("tiny")).eval()
    x = images(2).repeat(2, 1, 1, 1)  # images a, b, a, b
    with torch.no_grad():
        out = model(x, torch.tensor([10, 10, 900, 10]))
        neighbour = model(x[:1], torch.tensor([11]))
    torch.testing.assert_close(out[3], out[1], rtol=1e-5, atol=1e-5)  # same image, same t
    assert (out[0] - out[2]).abs().mean() > 1e-2  # same image, t = 10 vs t = 900
    assert (out[0] - neighbour[0]).abs().max() > 1e-5  # even neighbouring timesteps differ


def test_images_in_a_batch_do_not_interact():
    """GroupNorm and attention are per image, so image i's output is the same alone or in a batch."""
    model = perturb(create_model("tiny")).eval()
    x = images(4, seed=1)
    t = torch.tensor([3, 50, 97, 0])
    with torch.no_grad():
        batch = model(x, t)
        for i in range(4):
            torch.testing.assert_close(batch[i:i + 1], model(x[i:i + 1], t[i:i + 1]), rtol=1e-5, atol=1e-5)


def test_receptive_field_covers_the_whole_image():
    """Attention and the 4x4 bottleneck make every output pixel depend on every input pixel."""
    model = perturb(create_model("tiny")).eval()
    x = images(1, seed=2).requires_grad_(True)
    model(x, torch.tensor([40]))[0, :, 0, 0].sum().backward()
    grad = x.grad[0].abs().sum(0)
    assert grad[31, 31] > 0 and grad[0, 31] > 0 and grad[16, 16] > 0
    # The pixel's own neighbourhood matters far more than the opposite corner.
    assert grad[:2, :2].mean() > grad[-2:, -2:].mean()


# ---------------------------------------------------------------- gradient checkpointing


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    calls = []
    real_checkpoint = unet_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(unet_module, "checkpoint", counting_checkpoint)
    torch.manual_seed(0)
    plain = create_model("tiny")
    torch.manual_seed(0)
    ckpt = create_model("tiny", grad_checkpoint=True)
    for a, b in zip(plain.state_dict().values(), ckpt.state_dict().values()):
        assert torch.equal(a, b)
    perturb(plain, seed=3)
    perturb(ckpt, seed=3)
    x, t = images(2, seed=4), torch.tensor([7, 70])
    target = images(2, seed=5)
    losses = []
    for model in (plain, ckpt):
        model.train()
        loss = ((model(x, t) - target) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
    n_blocks = sum(isinstance(m, ResBlock) for m in ckpt.modules())
    assert len(calls) == n_blocks  # every residual block of the checkpointed model, none of the plain one
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
    # In eval mode or without grad the checkpoint is skipped.
    calls.clear()
    with torch.no_grad():
        ckpt(x, t)
    assert not calls


def test_gradient_checkpointing_replays_the_same_dropout_masks():
    """With dropout on, the recomputed forward pass must reuse the first pass's random masks."""
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = perturb(create_model("tiny", dropout=0.3, grad_checkpoint=flag), seed=6).train()
        torch.manual_seed(123)
        model(images(2, seed=7), torch.tensor([5, 60])).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- attention


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention_block_is_softmax_attention_over_pixels(heads):
    """x + proj(softmax(q k^T / sqrt(d)) v) per head, with q, k, v the three thirds of a 1x1 conv of GroupNorm(x)."""
    torch.manual_seed(0)
    block = perturb(AttentionBlock(32, heads, 8), seed=8, scale=0.2).eval()
    x = torch.randn(2, 32, 4, 5)
    with torch.no_grad():
        out = block(x)
        qkv = block.qkv(block.norm(x)).flatten(2)  # (B, 3C, HW)
        q, k, v = qkv.chunk(3, dim=1)
        d = 32 // heads
        heads_out = []
        for i in range(heads):
            qi, ki, vi = (m[:, i * d:(i + 1) * d] for m in (q, k, v))  # (B, d, HW)
            w = torch.softmax(torch.einsum("bcq,bck->bqk", qi, ki) / d**0.5, dim=-1)
            heads_out.append(torch.einsum("bqk,bck->bcq", w, vi))
        expected = x + block.proj(torch.cat(heads_out, 1).reshape(x.shape))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # At initialisation the output projection is zero, so the block is the identity.
    fresh = AttentionBlock(32, heads, 8)
    assert torch.equal(fresh(x), x)


def test_fresh_blocks_are_identities():
    """Ho et al.'s init_scale=0 (weights and biases) on the last layer of each residual and attention block."""
    torch.manual_seed(0)
    x, emb = torch.randn(2, 16, 8, 8), torch.randn(2, 64)
    same = ResBlock(16, 16, 64, 0.0, nn.SiLU, 8)
    assert torch.equal(same(x, emb), x)
    wider = ResBlock(16, 32, 64, 0.0, nn.SiLU, 8)
    assert torch.equal(wider(x, emb), wider.shortcut(x))
    assert torch.equal(AttentionBlock(16, 2, 8)(x), x)
    # ... and stop being identities once trained (here: perturbed).
    assert not torch.allclose(perturb(same)(x, emb), x, atol=1e-3)


def test_cpu_dropout_mask_drops_at_rate_p_and_keeps_the_expectation():
    """The 16-bit mask drops a fraction c / 2^16 of the elements, c = round(p 2^16), and scales the rest by 2^16 /
    (2^16 - c): over 4M elements the drop rate is p within 4 standard errors, and the mean is kept."""
    layer = Dropout(0.1).train()
    torch.manual_seed(0)
    x = torch.ones(4, 1024, 1024)
    y = layer(x)
    cut = round(0.1 * 65536)
    values = torch.unique(y).tolist()
    assert values[0] == 0.0 and values[1:] == [pytest.approx(65536 / (65536 - cut))]
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - cut / 65536) < 4 * (0.1 * 0.9 / x.numel()) ** 0.5
    assert y.double().mean().item() == pytest.approx(1.0, abs=1e-3)
    # Seeded like nn.Dropout: the same seed, the same mask; another seed, another mask.
    torch.manual_seed(0)
    assert torch.equal(layer(x), y)
    assert not torch.equal(layer(x), y)
    # The gradient is the mask times the scale, as nn.Dropout's.
    x.requires_grad_(True)
    torch.manual_seed(1)
    out = layer(x)
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())
    # Eval mode, p = 0 and p = 1 are nn.Dropout's.
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
