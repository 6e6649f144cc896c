"""The model shipped in ``models/``: one small safetensors file that ``ddpm sample --load-model`` takes as it is, a
class-conditional network of the ``cpu`` preset (issue 19) that takes a CIFAR-10 class by name, and whose weights
predict the noise of a noised image far better than an untrained network, with a class and without."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.config import make_config, without_paths
from ddpm.model_io import load_model
from ddpm.unet import count_parameters

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "ddpm-cifar10-cpu.safetensors"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module")
def shipped():
    return load_model(SHIPPED)


def test_the_shipped_file_is_small_and_rebuilds_the_cpu_preset_network(shipped):
    assert SHIPPED.stat().st_size <= 10 * 2**20
    assert shipped.weights == "ema" and shipped.step > 0
    # The cpu preset's network and process (v-prediction), made class-conditional on CIFAR-10's ten classes.
    cpu = make_config("cpu")
    recommended = dataclasses.replace(cpu.diffusion, sampler="dpm++2m", time_spacing="quadratic", sampling_steps=8)
    assert shipped.config.diffusion == recommended and shipped.diffusion.timesteps == 1000  # docs/samplers.md
    scale = shipped.config.model.guidance_scale
    assert shipped.config.model == dataclasses.replace(cpu.model, class_cond=True, class_names=CIFAR10_CLASSES,
                                                       guidance_scale=scale)
    assert scale > 1  # the sweep's choice, carried by the file
    assert count_parameters(shipped.model) == 1_398_371  # the unconditional network's 1,397,667 + 11 rows of 64
    # No folder of the machine it was trained on (issue 17): the path fields hold their defaults.
    assert shipped.config.train == without_paths(shipped.config).train
    assert b"/root/" not in SHIPPED.read_bytes()[:100_000]


def test_the_shipped_model_samples_a_named_class_with_5_ddim_steps(cli, tmp_path):
    code, out, err = cli("sample", "--load-model", SHIPPED, "--num-samples", 4, "--class", "horse,ship",
                         "--sampler", "ddim", "--sampling-steps", 5, "--device", "cpu", "--npz", tmp_path / "s.npz")
    assert code == 0, err
    samples = np.load(tmp_path / "s.npz")
    images = samples["arr_0"]
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert samples["arr_1"].tolist() == [7, 8, 7, 8]  # the labels asked for, horse and ship in turn
    assert all(image.std() > 10 for image in images)  # pictures, not flat colour


@pytest.mark.parametrize("label", [None, 7])
def test_the_shipped_weights_predict_the_noise(shipped, label):
    """Smooth images noised to t = 500 (alpha-bar = 0.08): the eps implied by the trained network's output (v) is
    a fraction of the error of an untrained network's (about 1), without a class and with one."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(8, 3, 4, 4, generator=generator) * 2 - 1
    x0 = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.full((8,), 500)
    labels = torch.full((8,), shipped.model.num_classes if label is None else label)
    x_t = shipped.diffusion.q_sample(x0, t, noise)
    with torch.no_grad():
        eps, _ = shipped.diffusion.eps_and_x0(shipped.model(x_t, t, labels), x_t, t)
    assert torch.mean((eps - noise) ** 2).item() < 0.1
