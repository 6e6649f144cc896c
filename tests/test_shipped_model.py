"""The model shipped in ``models/``: one small safetensors file that ``ddpm sample --load-model`` takes as it is, whose
weights predict the noise of a noised image far better than an untrained network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddpm.config import make_config, without_paths
from ddpm.model_io import load_model
from ddpm.unet import count_parameters

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "ddpm-cifar10-cpu.safetensors"


def test_the_shipped_file_is_small_and_rebuilds_the_cpu_preset_network():
    assert SHIPPED.stat().st_size <= 10 * 2**20
    loaded = load_model(SHIPPED)
    assert loaded.weights == "ema" and loaded.step > 0
    assert loaded.config.model == make_config("cpu").model and loaded.diffusion.timesteps == 1000
    assert count_parameters(loaded.model) == 1_397_667
    # No folder of the machine it was trained on (issue 17): the path fields hold their defaults.
    assert loaded.config.train == without_paths(loaded.config).train
    assert b"/root/" not in SHIPPED.read_bytes()[:100_000]


def test_the_shipped_model_samples_4_images_with_5_ddim_steps(cli, tmp_path):
    code, out, err = cli("sample", "--load-model", SHIPPED, "--num-samples", 4, "--sampler", "ddim",
                         "--sampling-steps", 5, "--device", "cpu", "--npz", tmp_path / "samples.npz")
    assert code == 0, err
    images = np.load(tmp_path / "samples.npz")["arr_0"]
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert all(image.std() > 10 for image in images)  # pictures, not flat colour


def test_the_shipped_weights_predict_the_noise():
    """Smooth images noised to t = 500 (alpha-bar = 0.08): the trained network's epsilon-loss is a fraction of the
    loss of predicting zero (1.0, what the zero-initialised output layer of a fresh network does)."""
    loaded = load_model(SHIPPED)
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(8, 3, 4, 4, generator=generator) * 2 - 1
    x0 = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.full((8,), 500)
    with torch.no_grad():
        prediction = loaded.model(loaded.diffusion.q_sample(x0, t, noise), t)
    assert torch.mean((prediction - noise) ** 2).item() < 0.1
