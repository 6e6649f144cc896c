"""The GPU paths: bf16 autocast, fused AdamW, torch.compile, channels_last, NCCL under torchrun, bf16 sampling,
data kept on the GPU, a training step that never waits for the GPU, and compiled training steps (equal to eager,
resumed exactly). Every test carries the ``cuda`` marker (``pytest -m cuda`` runs just these, as
``benchmarks/gpu_check.py`` does on a GPU machine) and skips with a reason where there is no CUDA GPU.

Float32 comparisons switch TF32 off: with it, cuDNN convolutions round their inputs to 10-bit mantissas and two
correct implementations differ by ~1e-3.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from conftest import TINY, training_state
from ddpm.checkpoint import load_latest
from ddpm.config import make_config
from ddpm.data import StepBatches, TrainingData, iterate_batches, open_training_data
from ddpm.diffusion import GaussianDiffusion
from ddpm.distributed import DistInfo
from ddpm.model_io import load_model
from ddpm.policies import LossWindow
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


@contextmanager
def reproducible():
    """Float32 without TF32, and attention by the math backend: the memory-efficient kernel's backward adds with
    atomics unless torch.use_deterministic_algorithms(True) is strict, which would refuse cuBLAS without
    CUBLAS_WORKSPACE_CONFIG; the suite's warn_only mode (conftest) already keeps cuDNN deterministic. Two runs of the
    same steps then agree bit for bit."""
    with no_tf32(), sdpa_kernel(SDPBackend.MATH):
        yield


def trainer(tmp_path: Path, state: dict | None = None, **train) -> Trainer:
    config = make_config("tiny", {"model": BLOCK_MODEL, "train": {"save_model": str(tmp_path), "device": "cuda",
                                                                  "batch_size": 32, **train}})
    return Trainer(config, DistInfo(0, 0, 1, CUDA), state, log=lambda *a, **k: None)


def images(n: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator).to(CUDA)


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



def test_training_steps_between_sync_points_never_wait_for_the_gpu(tmp_path):
    """The fast recipe (bf16, channels_last, fused AdamW) with the data on the GPU. After two warm-up steps (the first
    creates the optimiser state and copies the schedule's tables to the GPU), four steps run under
    ``set_sync_debug_mode("error")``, which raises at any wait for the GPU: the next batch, the step, the loss
    window's sums. The fourth has a NaN loss (a forward hook) and is skipped on the GPU, leaving weights, optimiser
    state and EMA exactly as they were; the window's read at the sync point after it sees which step that was."""
    t = trainer(tmp_path, amp=True, channels_last=True)
    assert t.optimizer.defaults["fused"] and t.amp_dtype == torch.bfloat16
    data = TrainingData("random images", images=images(64).cpu())
    stream = iterate_batches(data, StepBatches(64, 32, seed=0), 0, 6, CUDA)
    window = LossWindow()
    for batch in itertools.islice(stream, 2):
        window.add(*t.train_step(batch))
    assert window.read() == [True, True]
    poisoned = []
    t.model.register_forward_hook(lambda module, inputs, output: output * math.nan if poisoned else None)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in itertools.islice(stream, 3):
            window.add(*t.train_step(batch))
        before = training_state(t)
        poisoned.append(True)
        window.add(*t.train_step(next(stream)))
        after = training_state(t)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert window.read() == [True, True, True, False] and t.step == 6
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert t.ema.num_updates == 6


def test_compiled_training_steps_match_eager(tmp_path):
    """Same weights, batches, timesteps and noise: the compiled step's loss and gradient norm within 1e-4 of eager's
    at each of four steps (at the first only the zero-initialised output layer has gradients, then all layers)."""
    torch._dynamo.reset()  # compiled here, under reproducible(), whatever an earlier test compiled
    with reproducible():
        eager, compiled = trainer(tmp_path / "eager"), trainer(tmp_path / "compiled", compile=True)
        assert compiled.train_model is not compiled.model
        for seed in range(4):
            batch = images(seed=seed)
            (loss_e, norm_e), (loss_c, norm_c) = eager.train_step(batch), compiled.train_step(batch)
            torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(norm_c, norm_e, rtol=1e-4, atol=1e-6)


def test_a_compiled_run_resumes_exactly(tmp_path):
    """Four compiled steps in one go, against two, a checkpoint, and two more in a new compiled trainer resumed from
    it: weights, EMA, optimiser state, LR schedule and step agree bit for bit, and the checkpoint names the network's
    weights, not the compiled wrapper's (``_orig_mod.``)."""
    batches = [images(seed=seed) for seed in range(4)]
    (tmp_path / "resumed").mkdir()
    with reproducible():
        whole = trainer(tmp_path / "whole", compile=True)
        for batch in batches:
            whole.train_step(batch)
        first = trainer(tmp_path / "resumed", compile=True)
        for batch in batches[:2]:
            first.train_step(batch)
        first.save()
        path, state = load_latest(tmp_path / "resumed")
        assert path.name == "ckpt-00000002.pt" and not any("_orig_mod" in name for name in state["model"])
        resumed = trainer(tmp_path / "resumed", state, compile=True)
        for batch in batches[2:]:
            resumed.train_step(batch)
    a, b = whole.state_dict(), resumed.state_dict()
    assert (a["step"], a["skipped_steps"], a["scheduler"]) == (b["step"], b["skipped_steps"], b["scheduler"])
    assert a["ema"]["num_updates"] == b["ema"]["num_updates"] == 4
    for key in ("model", "ema"):
        tensors = (a[key], b[key]) if key == "model" else (a[key]["model"], b[key]["model"])
        assert tensors[0].keys() == tensors[1].keys()
        assert all(torch.equal(tensors[0][name], tensors[1][name]) for name in tensors[0]), key
    for index, values in a["optimizer"]["state"].items():
        assert all(torch.equal(value, b["optimizer"]["state"][index][name]) for name, value in values.items())
