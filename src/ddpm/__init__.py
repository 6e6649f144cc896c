"""ddpm: Denoising Diffusion Probabilistic Models (Ho et al., 2020) from scratch in PyTorch.

Each module has one job, said in its opening docstring. Layers, bottom up (a module imports only from its own
layer or below, wherever the import stands; tests/test_layers.py checks it, and that there is no cycle):

    errors, durations, presets                   # one-line errors and warnings; '2h' as seconds; the presets
    schedules, files, runlog                     # beta_t and its coefficients; bytes on disk; the run's JSON logs
    spacing, samplers                            # where the steps go; the sampling loops and their registry
    config                                       # the dataclasses: flags, defaults, constraints, presets
    unet, ema, distributed, guidance             # the network; EMA; devices and ranks; CFG
    diffusion, likelihood, ddpm                  # forward process, loss and sampling; the bound in bits/dim; names
    datasets, data, checkpoint, diffusers_format # read images/data sets; the training stream; checkpoints; diffusers
    model_io, generate, editing, metrics, probe  # load/export models; images from noise, from images; FID; probe
    policies, evaluate, train, bench             # the loop's policies; score a model; training; speed benchmark
    distill                                      # progressive distillation into a few-step student
    figures, demo                                # the figures; the web demo
    commands, cli, __main__                      # the command line
"""

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
