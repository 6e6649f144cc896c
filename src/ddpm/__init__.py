"""ddpm: Denoising Diffusion Probabilistic Models (Ho et al., 2020) from scratch in PyTorch."""

from ddpm.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig, make_config
from ddpm.diffusion import GaussianDiffusion
from ddpm.unet import UNet, count_parameters, create_model

__all__ = [
    "DiffusionConfig",
    "GaussianDiffusion",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "UNet",
    "count_parameters",
    "create_model",
    "make_config",
]
__version__ = "0.1.0"
