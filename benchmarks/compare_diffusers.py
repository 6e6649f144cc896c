"""Is our Ho et al. (2020) CIFAR-10 UNet as fast as diffusers' implementation of the same network?

Builds ``diffusers.UNet2DModel`` configured like google/ddpm-cifar10-32 (Ho et al.'s network: block_out_channels
(128, 256, 256, 256), two residual blocks per level, attention at 16x16) and our ``ho2020`` UNet in the same process,
checks that both have 35,746,307 parameters, then times both on the same batch and dtype:

* a training step: L_simple through :meth:`ddpm.diffusion.GaussianDiffusion.loss` (the loss of our training step),
  backward, and the AdamW step of :func:`ddpm.train.make_optimizer` (dropout 0.1 in both, as in Ho et al.);
* a forward pass without gradients (one network evaluation of a sampler), in eval mode.

The two networks take turns, round after round, so that a change of machine load hits both alike; each round's
images/s is recorded and the median over rounds is reported, with ours / diffusers.

    nice -n 19 python benchmarks/compare_diffusers.py [--batch-size 16] [--rounds 3] [--device cpu] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import UNet2DModel

from ddpm.config import DEVICES, make_config
from ddpm.diffusion import GaussianDiffusion
from ddpm.distributed import resolve_device
from ddpm.train import make_optimizer
from ddpm.unet import UNet, count_parameters

HO2020_PARAMETERS = 35_746_307
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def diffusers_ho2020(dropout: float) -> UNet2DModel:
    """``UNet2DModel`` with the configuration of google/ddpm-cifar10-32."""
    return UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        act_fn="silu", norm_num_groups=32, flip_sin_to_cos=False, freq_shift=1, dropout=dropout,
    )


class DiffusersEps(torch.nn.Module):
    """diffusers' network as a plain ``model(x_t, t) -> eps``, the interface our diffusion code calls."""

    def __init__(self, net: UNet2DModel):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t).sample


class Contender:
    """One network with its optimiser, timed on the shared batch."""

    def __init__(self, name: str, model: torch.nn.Module, diffusion: GaussianDiffusion, device: torch.device,
                 dtype: torch.dtype):
        self.name, self.model, self.diffusion, self.dtype = name, model.to(device), diffusion, dtype
        self.optimizer = make_optimizer(self.model.parameters(), make_config("ho2020"), device)
        self.train_rates: list[float] = []
        self.forward_rates: list[float] = []

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def train_steps(self, x0: torch.Tensor, steps: int, generator: torch.Generator) -> float:
        """images/s of ``steps`` training steps."""
        self.model.train()
        start = time.perf_counter()
        for _ in range(steps):
            with self._autocast(x0.device):
                loss = self.diffusion.loss(self.model, x0, generator=generator)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        loss.item()  # waits for the device
        return steps * x0.shape[0] / (time.perf_counter() - start)

    @torch.no_grad()
    def forward_passes(self, x: torch.Tensor, t: torch.Tensor, passes: int) -> float:
        """images/s of ``passes`` forward passes (network evaluations of a sampler)."""
        self.model.eval()
        start = time.perf_counter()
        for _ in range(passes):
            with self._autocast(x.device):
                out = self.model(x, t)
        out.sum().item()
        return passes * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default: 16)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per network; the median is reported")
    parser.add_argument("--train-steps", type=int, default=2, help="training steps per round (default: 2)")
    parser.add_argument("--forward-passes", type=int, default=4, help="forward passes per round (default: 4)")
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="device (default: cpu)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                        help="fp32, or bf16 autocast as `ddpm train --amp` uses (default: fp32)")
    args = parser.parse_args()
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]

    config = make_config("ho2020")
    diffusion = GaussianDiffusion.from_config(config.diffusion)
    torch.manual_seed(0)
    contenders = [
        Contender("ours", UNet(config.model), diffusion, device, dtype),
        Contender("diffusers", DiffusersEps(diffusers_ho2020(config.model.dropout)), diffusion, device, dtype),
    ]
    for c in contenders:
        count = count_parameters(c.model)
        if count != HO2020_PARAMETERS:
            raise SystemExit(f"{c.name}: {count:,} parameters, expected {HO2020_PARAMETERS:,}")

    g = torch.Generator(device).manual_seed(0)
    x0 = torch.rand(args.batch_size, 3, 32, 32, generator=g, device=device) * 2 - 1
    t = diffusion.sample_timesteps(args.batch_size, device, g)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, {args.dtype}, "
          f"batch {args.batch_size}, {HO2020_PARAMETERS:,} parameters each")
    for c in contenders:  # warm-up: allocator, kernels, optimiser state
        c.train_steps(x0, 1, g)
        c.forward_passes(x0, t, 1)
    for r in range(args.rounds):
        for c in contenders:
            c.train_rates.append(c.train_steps(x0, args.train_steps, g))
            c.forward_rates.append(c.forward_passes(x0, t, args.forward_passes))
        print(f"round {r + 1}: " + "; ".join(
            f"{c.name} train {c.train_rates[-1]:.2f} img/s, forward {c.forward_rates[-1]:.2f} img/s"
            for c in contenders), flush=True)

    ours, theirs = contenders
    rows = [("training step", statistics.median(ours.train_rates), statistics.median(theirs.train_rates)),
            ("forward, no grad", statistics.median(ours.forward_rates), statistics.median(theirs.forward_rates))]
    print(f"\n| median of {args.rounds} rounds, img/s | ours | diffusers | ours / diffusers |")
    print("| --- | --- | --- | --- |")
    for name, a, b in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
