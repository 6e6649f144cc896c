"""The GPU paths: bf16 autocast, fused AdamW, torch.compile, channels_last, NCCL under torchrun, bf16 sampling and
data kept on the GPU. Every test carries the ``cuda`` marker (``pytest -m cuda`` runs just these, as
``benchmarks/gpu_check.py`` does on a GPU machine) and skips with a reason where there is no CUDA GPU.

Float32 comparisons switch TF32 off: with it, cuDNN convolutions round their inputs to 10-bit mantissas and two
correct implementations differ by ~1e-3.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from conftest import TINY
from ddpm.config import make_config
from ddpm.data import StepBatches, iterate_batches, open_training_data
from ddpm.diffusion import GaussianDiffusion
from ddpm.distributed import DistInfo
from ddpm.model_io import load_model
from ddpm.train import Trainer
from ddpm.unet import UNet

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with pytest -m cuda)")]

CUDA = torch.device("cuda", 0)
# A small network of Ho et al.'s family ('block' skips, SiLU, attention at 16x16) and the tiny preset's recipe.
BLOCK_MODEL = dict(nf=32, ch_mult=(1, 2), attn_resolutions=(16,), norm_groups=8, time_emb_dim=64, skip="block",
                   activation="silu", dropout=0.0)


@contextmanager
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def trainer(tmp_path: Path, **train) -> Trainer:
    config = make_config("tiny", {"model": BLOCK_MODEL, "train": {"save_model": str(tmp_path), "device": "cuda",
                                                                  "batch_size": 32, **train}})
    return Trainer(config, DistInfo(0, 0, 1, CUDA), log=lambda *a, **k: None)


def images(n: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(CUDA)


def test_bf16_training_step_is_finite_and_close_to_float32(tmp_path):
    """Same weights, batch, timesteps and noise: the bf16 loss is within 2% of float32's, and both steps are taken."""
    batch = images()
    with no_tf32():
        fp32 = trainer(tmp_path / "fp32")
        bf16 = trainer(tmp_path / "bf16", amp=True)
        assert bf16.amp_dtype == torch.bfloat16 and not bf16.scaler.is_enabled()  # bf16 needs no loss scaling
        (loss32, norm32), (loss16, norm16) = fp32.train_step(batch), bf16.train_step(batch)
    assert torch.isfinite(loss16) and norm16 == norm16
    assert abs(loss16.item() - loss32.item()) <= 0.02 * loss32.item()
    assert abs(norm16 - norm32) <= 0.05 * norm32
    assert bf16.step == 1 and bf16.skipped == 0


def test_fused_adamw_is_used_and_steps_like_the_foreach_implementation(tmp_path):
    t = trainer(tmp_path)
    assert t.optimizer.defaults["fused"] is True
    params = [torch.randn(64, 33, device=CUDA, generator=torch.Generator(CUDA).manual_seed(i)) for i in range(3)]
    copies = {name: [p.clone().requires_grad_() for p in params] for name in ("fused", "foreach")}
    optimizers = {"fused": torch.optim.AdamW(copies["fused"], lr=1e-3, weight_decay=0.1, fused=True),
                  "foreach": torch.optim.AdamW(copies["foreach"], lr=1e-3, weight_decay=0.1, foreach=True)}
    for step in range(3):
        for name, optimizer in optimizers.items():
            for i, p in enumerate(copies[name]):
                p.grad = torch.randn(p.shape, device=CUDA, generator=torch.Generator(CUDA).manual_seed(10 * step + i))
            optimizer.step()
    for a, b in zip(copies["fused"], copies["foreach"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_compiled_network_matches_eager_and_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = UNet(make_config("tiny", {"model": BLOCK_MODEL}).model).to(CUDA).eval()
    x = torch.randn(8, 3, 32, 32, device=CUDA)
    t = torch.randint(0, 100, (8,), device=CUDA)
    with torch.no_grad(), no_tf32():
        eager = model(x, t)
        torch.testing.assert_close(torch.compile(model)(x, t), eager, rtol=1e-4, atol=1e-4)
        last = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(last(x.contiguous(memory_format=torch.channels_last), t), eager, rtol=1e-4, atol=1e-4)


def test_compiled_bf16_channels_last_training_through_the_cli(cli, image_folder, tmp_path):
    """The GPU recipe of ``ddpm train`` end to end: bf16, compile, channels_last, data on the GPU, checkpoint, grid."""
    run = tmp_path / "run"
    code, out, err = cli("train", *TINY[:-2], "--device", "cuda", "--amp", "--compile", "--channels-last",
                         "--sample-every", "4", "--data-dir", image_folder, "--save-model", run)
    assert code == 0, err
    assert "on cuda:0" in out and (run / "samples" / "step-00000004.png").is_file()
    loaded = load_model(run, CUDA)
    assert loaded.step == 4 and all(torch.isfinite(p).all() for p in loaded.model.parameters())


def test_one_rank_nccl_ddp_step_under_torchrun(image_folder, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "ddpm",
               "train", *TINY[:-2], "--device", "cuda", "--data-dir", str(image_folder), "--save-model", str(run)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rank 0 of world size 1 on cuda:0 (nccl DistributedDataParallel)" in done.stdout
    assert load_model(run).step == 4


def test_bf16_ddim_sampling_is_close_to_float32():
    """DDIM-10 of one network from the same x_T: bf16 autocast images within 0.05 (6/255 of the [-1, 1] range) of
    float32's at every pixel, 0.01 on average. The sampler's arithmetic stays float32 in both."""
    config = make_config("tiny", {"model": BLOCK_MODEL})
    torch.manual_seed(0)
    model = UNet(config.model).to(CUDA).eval()
    diffusion = GaussianDiffusion.from_config(config.diffusion)
    x_T = torch.randn(16, 3, 32, 32, device=CUDA, generator=torch.Generator(CUDA).manual_seed(1))
    with torch.no_grad(), no_tf32():
        fp32 = diffusion.sample(model, x_T.shape, sampler="ddim", steps=10, x_T=x_T)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = diffusion.sample(model, x_T.shape, sampler="ddim", steps=10, x_T=x_T)
    assert bf16.dtype == torch.float32
    diff = (bf16 - fp32).abs()
    assert diff.max() <= 0.05 and diff.mean() <= 0.01, (diff.max().item(), diff.mean().item())


def test_training_data_lives_on_the_gpu_and_batches_match_the_cpu_ones(image_folder):
    data = open_training_data(str(image_folder), 32)
    batches = StepBatches(len(data), 4, seed=0)
    on_gpu = list(iterate_batches(data, batches, 0, 3, CUDA))
    on_cpu = list(iterate_batches(data, batches, 0, 3, torch.device("cpu")))
    assert all(b.device == CUDA and b.dtype == torch.uint8 for b in on_gpu)
    for g, c in zip(on_gpu, on_cpu):
        assert torch.equal(g.cpu(), c)

