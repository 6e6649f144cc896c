"""Training through the real CLI on tiny fixtures: data formats, checkpoints, resume, sampling, export.

Tests that need a trained run rather than a training run of their own read the session's ``tiny_run`` (or resume
their own copy of it, ``run_copy``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, TinyRun
from ddpm.checkpoint import list_checkpoints, load_checkpoint
from ddpm.config import without_paths
from ddpm.model_io import load_model
from ddpm.train import lr_factor


def _tensors(state: dict, key: str) -> dict[str, torch.Tensor]:
    return state[key] if key != "ema" else state["ema"]["model"]


def test_train_on_cifar_pickles_then_sample(cli, tiny_run: TinyRun, tmp_path):
    """``ddpm train TINY`` on the CIFAR-10 pickles is the session's tiny run; ``out`` is what it printed."""
    run, out = tiny_run.run, tiny_run.out
    assert "CIFAR-10 train" in out and "40 images" in out
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000002.pt", "ckpt-00000004.pt"]
    assert (run / "latest").read_text().strip() == "ckpt-00000004.pt"
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "tiny" and config["train"]["total_steps"] == 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert all(np.isfinite(r["loss"]) and r["images_per_sec"] > 0 for r in records)
    assert list((run / "tensorboard").iterdir())

    grid = tmp_path / "grid.png"
    code, out, err = cli("sample", "--load-model", run, "--num-samples", "6", "--sampler", "ddim",
                         "--sampling-steps", "3", "--output", grid, "--output-dir", tmp_path / "pngs",
                         "--npz", tmp_path / "s.npz", "--device", "cpu")
    assert code == 0, err
    assert Image.open(grid).size == (3 * 34 + 2, 2 * 34 + 2)  # ceil(sqrt(6)) = 3 columns, 2-pixel padding
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == [f"{i:06d}.png" for i in range(6)]
    images = np.load(tmp_path / "s.npz")["arr_0"]
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert images.std() > 0


@pytest.mark.slow
def test_compiled_sampling_draws_the_same_images(cli, tiny_run: TinyRun, tmp_path):
    """``ddpm sample --compile`` (torch.compile, inductor on the CPU) changes the speed, not the images."""
    run = tiny_run.run
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        code, _, err = cli("sample", "--load-model", run, "--num-samples", 2, "--sampler", "ddim", "--sampling-steps", 2,
                           "--npz", tmp_path / f"{name}.npz", "--device", "cpu", *extra)
        assert code == 0, err
    eager, compiled = (np.load(tmp_path / f"{n}.npz")["arr_0"].astype(int) for n in ("eager", "compiled"))
    assert np.abs(eager - compiled).max() <= 1 and eager.std() > 0


def test_train_on_cifar_archive(cli, cifar_archive, tmp_path):
    code, out, err = cli("train", *TINY, "--data-dir", cifar_archive, "--save-model", tmp_path / "run")
    assert code == 0, err
    assert "40 images" in out


def test_train_on_image_folder_and_archive(cli, image_folder, tmp_path):
    code, out, err = cli("train", *TINY, "--data-dir", image_folder, "--save-model", tmp_path / "run")
    assert code == 0, err
    assert "(12 images)" in out
    import tarfile

    archive = tmp_path / "imgs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_folder, arcname="imgs")
    code, out, err = cli("train", *TINY, "--data-dir", archive, "--save-model", tmp_path / "run2")
    assert code == 0, err
    assert "(12 images)" in out


@pytest.mark.parametrize("extra", [[], ["--class-cond", "--p-uncond", "0.5"]], ids=["unconditional", "class-cond"])
def test_resume_is_bit_identical(cli, cifar_dir, tmp_path, extra):
    """N steps straight == N/2 steps, then --resume for the rest: model, EMA and optimiser tensors all equal (a
    class-conditional run too: its label dropout is a function of the seed and the step)."""
    common = [*TINY, "--data-dir", cifar_dir, "--total-steps", "6", "--checkpoint", "3", "--dropout", "0.1", *extra]
    assert cli("train", *common, "--save-model", tmp_path / "straight")[0] == 0
    assert cli("train", *common, "--total-steps", "3", "--save-model", tmp_path / "split")[0] == 0
    code, out, err = cli("train", *common, "--resume", "--save-model", tmp_path / "split")
    assert code == 0, err
    assert "resuming from" in out and "step 3" in out
    a = load_checkpoint(tmp_path / "straight" / "ckpt-00000006.pt")
    b = load_checkpoint(tmp_path / "split" / "ckpt-00000006.pt")
    for key in ("model", "ema"):
        for name, tensor in _tensors(a, key).items():
            assert torch.equal(tensor, _tensors(b, key)[name]), f"{key}.{name} differs"
    for (ka, sa), (kb, sb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        for name in sa:
            assert torch.equal(torch.as_tensor(sa[name]), torch.as_tensor(sb[name])), f"optimizer {ka}.{name}"
    # A different seed gives different weights, so the equality above is not vacuous.
    assert cli("train", *common, "--seed", "1", "--save-model", tmp_path / "other")[0] == 0
    c = load_checkpoint(tmp_path / "other" / "ckpt-00000006.pt")
    assert not all(torch.equal(t, c["model"][n]) for n, t in a["model"].items())


def test_resume_refuses_changed_hyperparameters(cli, tiny_run: TinyRun, run_copy):
    run, data = run_copy, tiny_run.data
    code, _, err = cli("train", *TINY, "--data-dir", data, "--save-model", run, "--resume", "--lr", "0.5")
    assert code == 2
    assert "--lr" in err and "cannot resume" in err
    code, out, err = cli("train", *TINY, "--data-dir", data, "--save-model", run, "--resume", "--total-steps", "6")
    assert code == 0, err
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == 6


def test_existing_run_needs_resume(cli, tiny_run: TinyRun, run_copy):
    code, _, err = cli("train", *TINY, "--data-dir", tiny_run.data, "--save-model", run_copy)
    assert code == 2 and "--resume" in err


def test_export_safetensors_round_trip(cli, tiny_run: TinyRun, tmp_path):
    run = tiny_run.run
    exported = tmp_path / "model.safetensors"
    code, _, err = cli("export", run, "--output", exported)
    assert code == 0, err
    from_ckpt, from_file = load_model(run), load_model(exported)
    # The file keeps what rebuilds the model, not the folders of the machine it was trained on.
    assert from_file.config == without_paths(from_ckpt.config) and from_file.step == 4
    assert from_ckpt.config.train.save_model == str(run) and from_ckpt.config.train.data_dir == str(tiny_run.data)
    metadata = exported.read_bytes()[:100_000]
    assert str(run).encode() not in metadata and str(tiny_run.data).encode() not in metadata
    for name, tensor in from_ckpt.model.state_dict().items():
        assert torch.equal(tensor, from_file.model.state_dict()[name])
    code, _, err = cli("sample", "--load-model", exported, "--num-samples", "2", "--sampler", "ddim",
                       "--sampling-steps", "2", "--output", tmp_path / "g.png", "--device", "cpu")
    assert code == 0, err


def test_ema_weights_differ_from_raw_and_are_the_default(tiny_run: TinyRun):
    run = tiny_run.run
    ema, raw = load_model(run), load_model(run, weights="raw")
    assert ema.weights == "ema" and raw.weights == "raw"
    assert any(not torch.equal(p, q) for p, q in zip(ema.model.parameters(), raw.model.parameters()))


@pytest.mark.parametrize(
    "schedule, step, expected",
    [("constant", 0, 0.1), ("constant", 9, 1.0), ("constant", 500, 1.0), ("step", 25, 0.5), ("step", 45, 0.125),
     ("cosine", 10, 1.0), ("cosine", 55, 0.5), ("cosine", 100, 0.0)],
)
def test_lr_schedule(schedule, step, expected):
    factor = lr_factor(step, total_steps=100, warmup_steps=10, schedule=schedule, steplr_steps=15, steplr_factor=0.5)
    assert factor == pytest.approx(expected, abs=1e-12)


def test_sample_grid_during_training(cli, cifar_dir, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("train", *TINY, "--data-dir", cifar_dir, "--save-model", run, "--sample-every", "4",
                       "--sample-steps", "2")
    assert code == 0, err
    assert Image.open(run / "samples" / "step-00000004.png").size == (8 * 34 + 2, 8 * 34 + 2)
