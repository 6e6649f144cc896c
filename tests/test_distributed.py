"""Several processes under ``torchrun`` on the CPU (gloo): training through the real CLI keeps the ranks' weights
identical, DistributedDataParallel's averaged gradient is the gradient of the whole batch, a checkpoint resumes with
another number of ranks, and distributed sampling writes the images one process would.

The ranks run this file as a script (see the bottom), so that the checks and the code the ranks run sit side by side.
The tests that start torchrun are end-to-end runs, marked ``slow``.
``python -m torch.distributed.run`` is ``torchrun`` for the interpreter running the tests; with more than one process
per node it sets ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, write_cifar10
from ddpm.checkpoint import list_checkpoints, load_checkpoint
from ddpm.cli import main
from ddpm.config import make_config
from ddpm.data import StepBatches
from ddpm.diffusion import GaussianDiffusion
from ddpm.unet import UNet

HERE = Path(__file__)
TIMEOUT = 180


def torchrun(nproc: int, *args, cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node NPROC ARGS``, output captured; fails the test with it on error."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               *map(str, args)]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> tuple[Path, Path, Path, str]:
    """One torchrun job of 2 ranks serves the tests below (starting processes is most of their cost): each rank
    saves the DDP gradient of a fixed batch, then trains 4 steps of the tiny preset through ``ddpm train`` (which
    joins the process group already set up) and saves its final weights.

    Returns (CIFAR folder, run directory, folder of what the ranks saved, torchrun's stdout).
    """
    root = tmp_path_factory.mktemp("two_ranks")
    write_cifar10(root / "cifar")
    run, saved = root / "run", root / "saved"
    saved.mkdir()
    done = torchrun(2, HERE, saved, "train", *TINY, "--data-dir", root / "cifar", "--save-model", run, cwd=root)
    return root / "cifar", run, saved, done.stdout


@pytest.mark.slow
def test_two_ranks_train_through_the_cli_and_end_with_identical_weights(two_rank_run):
    _, run, saved, stdout = two_rank_run
    assert "rank 0 of world size 2" in stdout
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000002.pt", "ckpt-00000004.pt"]
    rank0, rank1 = (torch.load(saved / f"rank{r}.pt") for r in (0, 1))
    for key in ("model", "ema"):
        assert rank0[key].keys() == rank1[key].keys()
        assert all(torch.equal(rank0[key][name], rank1[key][name]) for name in rank0[key]), key
    checkpoint = load_checkpoint(list_checkpoints(run)[-1])
    assert checkpoint["step"] == 4 and checkpoint["world_size"] == 2
    assert all(torch.equal(checkpoint["model"][name], rank0["model"][name]) for name in rank0["model"])
    config = make_config("tiny")
    torch.manual_seed(config.train.seed)  # the initial weights, as Trainer builds them
    initial = UNet(config.model).state_dict()
    change = max((rank0["model"][name] - initial[name]).abs().max().item() for name in initial)
    assert 0 < change < 0.01  # 4 small AdamW steps away from the initial weights


@pytest.mark.slow
def test_averaged_gradient_of_two_ranks_is_the_gradient_of_the_whole_batch(two_rank_run):
    saved = two_rank_run[2]
    config, x0, t, noise = _gradient_problem()
    torch.manual_seed(config.train.seed)  # what Trainer does before building the model
    model = UNet(config.model)
    GaussianDiffusion.from_config(config.diffusion).loss(model, x0, t, noise).backward()
    grads = [torch.load(saved / f"grad{r}.pt") for r in (0, 1)]
    for name, p in model.named_parameters():
        assert torch.equal(grads[0][name], grads[1][name]), name
        torch.testing.assert_close(grads[0][name], p.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_a_step_trains_on_the_same_images_whatever_the_number_of_ranks():
    one = StepBatches(40, 8, seed=3)
    for world in (2, 4, 8):
        ranks = [StepBatches(40, 8, seed=3, rank=r, world_size=world) for r in range(world)]
        for step in (0, 4, 5, 13):  # within the first epoch, at its end and in later ones
            assert torch.equal(torch.cat([r.indices(step) for r in ranks]), one.indices(step))


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_on_one_rank(two_rank_run, tmp_path, cli):
    cifar, run, _, _ = two_rank_run
    resumed = tmp_path / "run"
    shutil.copytree(run, resumed)
    code, out, err = cli("train", *TINY, "--total-steps", "6", "--data-dir", cifar, "--save-model", resumed, "--resume")
    assert code == 0, err
    assert "(step 4)" in out and "rank 0 of world size 1" in out
    saved = load_checkpoint(list_checkpoints(resumed)[-1])
    assert saved["step"] == 6 and saved["world_size"] == 1


@pytest.mark.slow
def test_two_ranks_sample_the_images_one_process_samples(two_rank_run, tmp_path, cli):
    _, run, _, _ = two_rank_run
    # One image per batch and one thread (as torchrun's ranks have) make both runs do the same arithmetic.
    flags = ["--load-model", run, "--num-samples", "4", "--sampler", "ddim", "--sampling-steps", "3",
             "--batch-size", "1", "--device", "cpu"]
    torchrun(2, "-m", "ddpm", "sample", *flags, "--output-dir", tmp_path / "two", cwd=tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, _, err = cli("sample", *flags, "--output-dir", tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == [f"{i:06d}.png" for i in range(4)] == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in names:
        one, two = (np.asarray(Image.open(tmp_path / d / name)) for d in ("one", "two"))
        assert np.array_equal(one, two), name
    assert len({(tmp_path / "one" / n).read_bytes() for n in names}) == 4  # four different images


# ------------------------------------------------------------------------------------ code run by each rank
def _gradient_problem():
    """The tiny preset without dropout and a fixed batch of 4 (x_0, t, eps), the same in every process."""
    config = make_config("tiny", {"model": {"dropout": 0.0}, "train": {"device": "cpu", "batch_size": 4}})
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    t = torch.randint(0, config.diffusion.timesteps, (4,), generator=g)
    return config, x0, t, torch.randn(x0.shape, generator=g)


def _save_ddp_gradients(out: Path) -> None:
    """Each rank computes the loss of its half of the batch through the Trainer's DDP model and saves the gradient.

    The process group stays up for the training that follows.
    """
    from ddpm.distributed import init_distributed
    from ddpm.train import Trainer

    config, x0, t, noise = _gradient_problem()
    dist = init_distributed("cpu")
    trainer = Trainer(config, dist, log=lambda *a, **k: None)
    half = slice(2 * dist.rank, 2 * dist.rank + 2)
    trainer.diffusion.loss(trainer.train_model, x0[half], t[half], noise[half]).backward()
    torch.save({n: p.grad for n, p in trainer.model.named_parameters()}, out / f"grad{dist.rank}.pt")


def _train_and_save_weights(out: Path, argv: list[str]) -> int:
    """``ddpm ARGV``, with each rank saving its model and EMA weights to OUT/rank<r>.pt when training ends."""
    from ddpm import train

    run = train.Trainer.run

    def run_then_save(self, data, started=None):
        stopped = run(self, data, started)
        torch.save({"model": self.model.state_dict(), "ema": self.ema.state_dict()["model"]},
                   out / f"rank{self.dist.rank}.pt")
        return stopped

    train.Trainer.run = run_then_save
    return main(argv)


if __name__ == "__main__":  # torchrun tests/test_distributed.py OUT ddpm-arguments...
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    _save_ddp_gradients(out)
    sys.exit(_train_and_save_weights(out, argv))
