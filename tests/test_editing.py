"""Inpainting, interpolation and shared x_t (ddpm.editing) and their ``ddpm visualize`` figures, on a mini network."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from conftest import MINI_MODEL, write_model_file, write_png_folder
from ddpm.config import ModelConfig
from ddpm.diffusion import GaussianDiffusion
from ddpm.editing import (decode, encode, generators, inpaint, interpolate, make_mask, reconstruct, repaint_schedule,
                          shared_xt, timesteps_from)
from ddpm.unet import UNet


@pytest.fixture(scope="module")
def mini():
    torch.manual_seed(0)
    model = UNet(ModelConfig(**MINI_MODEL)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, GaussianDiffusion(12, schedule="cosine")


def images(n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g).float() / 127.5 - 1


def test_timesteps_from_keeps_both_ends():
    assert timesteps_from(5, None) == [5, 4, 3, 2, 1, 0]
    assert timesteps_from(999, 4) == [999, 666, 333, 0]
    assert timesteps_from(3, 10) == [3, 2, 1, 0]
    assert timesteps_from(0, 5) == [0]


@pytest.mark.parametrize("kind", ["centre", "half", "random"])
@pytest.mark.parametrize("resample", [1, 3])
def test_inpainting_keeps_the_known_pixels_exactly(mini, kind, resample):
    model, diffusion = mini
    x0 = images()
    known = make_mask(kind, 8, torch.Generator().manual_seed(0))
    assert 0 < known.sum() < 64
    out = inpaint(model, diffusion, x0, known, steps=6, resample=resample, jump_length=2,
                  generator=generators([0, 1], "cpu"))
    k = known.expand_as(x0)
    assert torch.equal(out[k], x0[k])
    assert not torch.equal(out[~k], x0[~k]) and out.abs().max() <= 1


def test_masks():
    assert make_mask("centre", 8)[0, 0].sum() == 64 - 16
    half = make_mask("half", 8)[0, 0]
    assert half[:, :4].all() and not half[:, 4:].any()
    random = make_mask("random", 32, torch.Generator().manual_seed(0), 0.25)
    assert 0.6 < random.float().mean() < 0.9


def test_repaint_schedule():
    assert repaint_schedule(4) == [4, 3, 2, 1, 0]
    path = repaint_schedule(6, jump_length=2, resample=3)
    assert path[0] == 6 and path[-1] == 0 and all(abs(a - b) == 1 for a, b in zip(path, path[1:]))
    # every level below 6 - 2 + 1 that is 1 mod 2 is jumped back from twice: 6 down-steps plus 2 x 2 x 2 more
    assert sum(b < a for a, b in zip(path, path[1:])) == 6 + 2 * 2 * 2


def test_interpolation_ends_are_the_reconstructions(mini):
    model, diffusion = mini
    x0 = images()
    a, b = x0[:1], x0[1:]
    for t, steps in [(11, None), (7, 4)]:
        rows = interpolate(model, diffusion, a, b, t, [0.0, 0.5, 1.0], seed=3, steps=steps)
        torch.testing.assert_close(rows[0:1], reconstruct(model, diffusion, a, t, 3, 5, steps), rtol=0, atol=1e-5)
        torch.testing.assert_close(rows[2:3], reconstruct(model, diffusion, b, t, 4, 5, steps), rtol=0, atol=1e-5)
        assert not torch.allclose(rows[1], rows[0])


def test_shared_xt_samples_differ_but_share_x_t(mini):
    model, diffusion = mini
    x0 = images(1)
    results = shared_xt(model, diffusion, x0, [3, 7], samples=3, seed=0, steps=5)
    x_t, samples = results[0]
    torch.testing.assert_close(x_t, encode(diffusion, x0, 3, generators([0], "cpu")))
    assert samples.shape == (3, 3, 8, 8) and not torch.allclose(samples[0], samples[1])
    torch.testing.assert_close(samples[1:2], decode(model, diffusion, x_t, 3, generators([2], "cpu"), 5),
                               rtol=0, atol=1e-5)
    x_t, samples = results[1]  # the second t: seeds 4, 5, 6 (at t = 11, 1/sqrt(alpha-bar) ~ 40 amplifies rounding)
    torch.testing.assert_close(samples[0:1], decode(model, diffusion, x_t, 7, generators([4], "cpu"), 5),
                               rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("editing")
    return (write_model_file(root / "mini.safetensors", {"timesteps": 6, "schedule": "cosine"}),
            write_png_folder(root / "images", count=4))


@pytest.mark.parametrize("figure,flags", [
    ("shared-xt", ["--timesteps", "2", "5", "--samples", "2", "--sampling-steps", "3"]),
    ("interpolation", ["--timesteps", "3", "--lambdas", "3", "--num-images", "2"]),
    ("inpainting", ["--num-images", "2", "--resample", "2", "--jump-length", "2"]),
])
def test_visualize_editing_figures(cli, files, tmp_path, figure, flags):
    model, data = files
    out = tmp_path / f"{figure}.png"
    code, stdout, err = cli("visualize", figure, model, "--data-dir", data, "--device", "cpu", "--output", out, *flags)
    assert code == 0, err
    assert "wrote" in stdout and Image.open(out).size[0] > 100


def test_visualize_rate_distortion_from_a_model_and_from_nll_json(cli, files, tmp_path):
    model, data = files
    code, stdout, err = cli("nll", model, "--data-dir", data, "--device", "cpu", "--json")
    assert code == 0, err
    record = json.loads(stdout)
    (tmp_path / "nll.json").write_text(stdout)
    code, from_json, err = cli("visualize", "rate-distortion", tmp_path / "nll.json", "--output", tmp_path / "a.png")
    assert code == 0, err
    code, from_model, err = cli("visualize", "rate-distortion", model, "--data-dir", data, "--device", "cpu",
                                "--num-images", "4", "--output", tmp_path / "b.png")
    assert code == 0, err
    assert f"{record['bits_per_dim']:.4f} bits/dim over 4 images" in from_json
    assert f"{record['bits_per_dim']:.4f} bits/dim over 4 images" in from_model


def test_visualize_editing_bad_inputs(cli, files, tmp_path):
    model, data = files
    (tmp_path / "bad.json").write_text('{"bits_per_dim": 3}')
    cases = [
        (["shared-xt", model, "--data-dir", data, "--timesteps", "6"], "--timesteps must lie in 0..5"),
        (["interpolation", model, "--data-dir", data, "--lambdas", "1"], "--lambdas must be at least 2"),
        (["inpainting", model, "--data-dir", data, "--mask-fraction", "2"], "--mask-fraction must be in [0, 1]"),
        (["rate-distortion", model, "--data-dir", write_png_folder(tmp_path / "small", size=4)], "are 4x4"),
        (["rate-distortion", tmp_path / "bad.json"], "is not the JSON of `ddpm nll --json`"),
        (["shared-xt", model, "--data-dir", tmp_path / "none"], "does not exist"),
    ]
    for args, message in cases:
        code, out, err = cli("visualize", *args, "--output", tmp_path / "x.png")
        assert code != 0 and err.count("\n") == 1 and message in err, err
