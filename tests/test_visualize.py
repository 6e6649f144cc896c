"""``ddpm visualize`` and ``ddpm plot`` through the real CLI on a tiny checkpoint: every figure is written with
the pixel size its layout promises; the numbers behind the figures are checked against closed forms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TinyRun, write_model_file, write_png_folder
from ddpm.cli import main
from ddpm.diffusion import GaussianDiffusion
from ddpm.figures.architecture import describe_unet
from ddpm.figures.curves import smooth
from ddpm.figures.forward import scaled_timesteps
from ddpm.figures.loss import loss_per_timestep, uniform_t_loss
from ddpm.figures.trajectory import every_k, record_trajectory
from ddpm.model_io import load_model
from ddpm.runlog import read_metrics
from ddpm.unet import count_parameters, create_model


@pytest.fixture
def run_dir(tiny_run: TinyRun) -> Path:
    """The session's 4-step tiny run (T = 100) with its metrics.jsonl; read-only."""
    return tiny_run.run


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


# --------------------------------------------------------------------------------------------------- forward
def test_forward_figure(cli, image_folder, tmp_path):
    out = tmp_path / "forward.png"
    code, stdout, err = cli("visualize", "forward", "--data-dir", image_folder, "--num-images", "3",
                            "--time-steps", "100", "--output", out)
    assert code == 0, err
    assert "t = 1 10 25 50 75 100 (the paper's count) of T = 100" in stdout
    assert _size(out) == (1200, 675)  # 12 in x (0.75 in per image row + 4.5 in), 100 dpi
    assert scaled_timesteps(1000) == [1, 100, 250, 500, 750, 1000]


def test_forward_refuses_missing_data_and_folders(cli, tmp_path):
    code, _, err = cli("visualize", "forward", "--data-dir", tmp_path / "nowhere", "--output", tmp_path / "f.png")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("visualize", "forward", "--output", tmp_path / "missing" / "f.png")
    assert code == 2 and "folder" in err and "does not exist" in err


# ------------------------------------------------------------------------------------------------ trajectory
def test_trajectory_strip_and_gif(cli, run_dir, tmp_path):
    out = tmp_path / "traj.png"
    code, stdout, err = cli("visualize", "trajectory", run_dir, "--seeds", "0", "1", "--sampler", "ddim",
                            "--sampling-steps", "6", "--every", "2", "--dpi", "50", "--output", out, "--device", "cpu")
    assert code == 0, err
    assert every_k(6, 2) == {0, 2, 4, 5}  # 4 strip columns, the last step always among them
    assert _size(out) == (225, 200)  # (0.75 in x 4 columns + 1.5 in) x (0.75 in x 4 rows + 1 in), 50 dpi
    gif = Image.open(tmp_path / "traj.gif")
    assert gif.n_frames == 6  # every step of 6 (--gif-frames 50 > 6)
    assert gif.size == (3 * (2 * 33 + 1), 3 * (2 * 33 + 1) + 16)  # 2 seeds x (x_t, x0), 1-px gaps, x3, caption


def test_trajectory_ends_in_the_image_ddpm_sample_draws(cli, run_dir, tmp_path):
    """The last predicted x0 of the trajectory is the sample itself, the same as `ddpm sample --seed`."""
    npz = tmp_path / "s.npz"
    code, _, err = cli("sample", "--load-model", run_dir, "--num-samples", "2", "--sampler", "ddpm", "--no-amp",
                       "--sampling-steps", "10", "--seed", "3", "--npz", npz, "--device", "cpu")
    assert code == 0, err
    loaded = load_model(run_dir)
    record = record_trajectory(loaded.model, loaded.diffusion, [3, 4], (3, 32, 32), None, "ddpm", 10)
    assert record.steps == list(range(10)) and record.timesteps[0] == 99 and record.timesteps[-1] == 0
    np.testing.assert_array_equal(record.x0_pred[-1], np.load(npz)["arr_0"])
    generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
    x_T = torch.stack([torch.randn(3, 32, 32, generator=g) for g in generators])
    np.testing.assert_array_equal(record.x_t[0], ((x_T.clamp(-1, 1) + 1) * 127.5).round().byte()
                                  .permute(0, 2, 3, 1).numpy())  # the first x_t is the seeds' noise x_T


# ----------------------------------------------------------------------------------------------- loss vs t
def test_loss_vs_t(cli, run_dir, cifar_dir, tmp_path):
    out = tmp_path / "loss.png"
    code, stdout, err = cli("visualize", "loss-vs-t", run_dir, "--data-dir", cifar_dir, "--num-images", "8",
                            "--buckets", "4", "--batch-size", "3", "--output", out, "--device", "cpu")
    assert code == 0, err
    assert "CIFAR-10 test" in stdout
    table = [line.split() for line in stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [(int(a), int(b)) for a, b, *_ in table] == [(1, 25), (26, 50), (51, 75), (76, 100)]  # the paper's t
    assert all(float(row[2]) > 0 and 0 < float(row[4]) < 1 for row in table)  # loss, and the no-network guess's
    assert _size(out) == (800, 700)


def _tables(stdout: str) -> list[list[list[str]]]:
    """The bucket rows of each model's table in the output of loss-vs-t."""
    tables = []
    for line in stdout.splitlines():
        if line.lstrip().startswith("t from"):
            tables.append([])
        elif tables and line.split() and line.split()[0].isdigit():
            tables[-1].append(line.split())
    return tables


def test_loss_vs_t_compares_models_on_the_same_draws(cli, tmp_path):
    """Two models (eps and v) in one figure are scored on the same (x_0, t, eps): the no-network column is the same
    for both, and each model's rows are those it gets alone."""
    images = write_png_folder(tmp_path / "png", count=6)
    eps = write_model_file(tmp_path / "eps.safetensors", {"timesteps": 10, "schedule": "cosine"})
    v = write_model_file(tmp_path / "v.safetensors", {"timesteps": 10, "schedule": "cosine", "prediction": "v"},
                         seed=1)
    common = ["--data-dir", images, "--buckets", "2", "--device", "cpu"]
    code, both, err = cli("visualize", "loss-vs-t", eps, v, *common, "--output", tmp_path / "both.png")
    assert code == 0, err
    assert "predicts eps" in both and "predicts v" in both
    first, second = _tables(both)
    assert [row[4] for row in first] == [row[4] for row in second]  # the same x_0, t and eps
    assert first != second
    for path, rows in ((eps, first), (v, second)):
        code, alone, err = cli("visualize", "loss-vs-t", path, *common, "--output", tmp_path / "one.png")
        assert code == 0, err
        assert _tables(alone) == [rows]
    assert _size(tmp_path / "both.png") == (800, 700)


def test_loss_vs_t_refuses_models_of_different_schedules(cli, tmp_path):
    images = write_png_folder(tmp_path / "png", count=2)
    a = write_model_file(tmp_path / "a.safetensors", {"timesteps": 10, "schedule": "cosine"})
    b = write_model_file(tmp_path / "b.safetensors", {"timesteps": 12, "schedule": "cosine"})
    code, _, err = cli("visualize", "loss-vs-t", a, b, "--data-dir", images, "--device", "cpu",
                       "--output", tmp_path / "l.png")
    assert code == 2 and "noise schedule" in err and len(err.strip().splitlines()) == 1


def test_loss_per_timestep_of_a_zero_predictor_is_the_noise_variance():
    """eps_theta = 0 makes the loss E[eps^2] = 1 in every bucket, whatever x_0 and t."""
    diffusion = GaussianDiffusion(50)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    rows = loss_per_timestep(lambda x, t: torch.zeros_like(x), diffusion, images, buckets=5, batch_size=6)
    assert [(r.start, r.stop, r.count) for r in rows] == [(0, 10, 16), (10, 20, 16), (20, 30, 16), (30, 40, 16),
                                                          (40, 50, 16)]
    for r in rows:
        assert abs(r.mean - 1) < 4 * np.sqrt(2 / (16 * 3 * 16 * 16)), r  # var(eps^2) = 2
    assert uniform_t_loss(rows) == pytest.approx(np.mean([r.mean for r in rows]))


def test_loss_per_timestep_trivial_guess_matches_its_closed_form():
    """eps_hat = sqrt(1 - alpha-bar_t) x_t misses by alpha-bar_t eps - sqrt(alpha-bar_t (1 - alpha-bar_t)) x_0, of mean
    square alpha-bar_t (alpha-bar_t + (1 - alpha-bar_t) E[x_0^2]) (docs/guide.md, "the floor at large t"); one t per
    bucket, 12,288 pixels each: within 6%, about 4 standard errors."""
    diffusion = GaussianDiffusion(40)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    rows = loss_per_timestep(lambda x, t: torch.zeros_like(x), diffusion, images, buckets=40, batch_size=16)
    second_moment = (images.double() / 127.5 - 1).square().mean().item()
    for r in rows:
        abar = diffusion.alphas_cumprod[r.start].item()
        assert r.trivial == pytest.approx(abar * (abar + (1 - abar) * second_moment), rel=0.06), r


def test_loss_per_timestep_is_seeded():
    diffusion = GaussianDiffusion(25)  # the default beta range needs T > 20 (0.02 x 1000/T < 1)
    model = create_model("tiny", resolution=8, ch_mult=(1, 2), attn_resolutions=(4,)).eval()
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    a = loss_per_timestep(model, diffusion, images, buckets=2, seed=1)
    assert a == loss_per_timestep(model, diffusion, images, buckets=2, seed=1)
    assert a != loss_per_timestep(model, diffusion, images, buckets=2, seed=2)


# ---------------------------------------------------------------------------------------------- architecture
def test_architecture_from_preset_and_checkpoint(cli, run_dir, tmp_path):
    code, stdout, err = cli("visualize", "architecture", "tiny", "--output", tmp_path / "a.png")
    assert code == 0, err
    assert "0.37M parameters" in stdout and "skip=level" in stdout
    # tiny: 7 encoder rows + middle, out above the first row: (8.6 rows x 0.5 in + 1.25 in) -> 5.75 in
    assert _size(tmp_path / "a.png") == (1100, 575)
    code, stdout, err = cli("visualize", "architecture", run_dir, "--output", tmp_path / "b.png")
    assert code == 0, err
    assert "preset tiny" in stdout and _size(tmp_path / "b.png") == (1100, 575)
    code, _, err = cli("visualize", "architecture", tmp_path / "no-such-run", "--output", tmp_path / "c.png")
    assert code == 2 and "no-such-run" in err


@pytest.mark.parametrize("preset, skips", [("seed", 3), ("ho2020", 12), ("tiny", 3)])
def test_describe_unet_walks_the_network(preset, skips):
    model = create_model(preset)
    infos = describe_unet(model)
    assert [i.part for i in infos].count("middle") == 1 and infos[-1].part == "out"
    pops = [i for i in infos if i.pops is not None]
    assert len(pops) == skips == sum(i.pushes for i in infos)
    assert sorted(i.pops for i in pops) == [k for k, i in enumerate(infos) if i.pushes]  # each skip used once
    for stage in pops:  # a popping stage's input is its own path concatenated with the pushed output
        pushed = infos[stage.pops].out_shape
        assert stage.in_shape[1:] == pushed[1:] and stage.in_shape[0] > pushed[0]
    assert infos[0].in_shape == infos[-1].out_shape == (3, 32, 32)
    c = model.config
    middle = next(i for i in infos if i.part == "middle")
    assert middle.out_shape == (c.nf * c.ch_mult[-1], 4, 4)
    embedding = sum(p.numel() for p in model.time_embed.parameters())
    assert sum(i.parameters for i in infos) + embedding == count_parameters(model)


# ------------------------------------------------------------------------------------------------------ plot
def test_plot(cli, run_copy, tmp_path):
    code, stdout, err = cli("plot", run_copy)
    assert code == 0, err
    assert "2 records, steps 2..4" in stdout
    assert _size(run_copy / "training_curves.png") == (800, 700)
    code, _, err = cli("plot", run_copy / "metrics.jsonl", "--output", tmp_path / "c.png", "--dpi", "50")
    assert code == 0, err
    assert _size(tmp_path / "c.png") == (400, 350)
    code, _, err = cli("plot", tmp_path)
    assert code == 2 and "no metrics.jsonl" in err


def test_read_metrics_keeps_the_last_record_per_step_and_skips_a_torn_line(tmp_path):
    lines = [{"step": 10, "loss": 1.0, "lr": 1e-4}, {"step": 20, "loss": 0.5, "lr": 1e-4},
             {"step": 10, "loss": 0.9, "lr": 1e-4}]  # resumed from step 0 after logging step 20
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 30, "lo')
    records = read_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in records] == [(10, 0.9), (20, 0.5)]


def test_smooth_is_tensorboards_debiased_average():
    assert smooth([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])
    assert smooth([0.0, 2.0], 0.5) == pytest.approx([0.0, (0.5 * 0.0 + 0.5 * 2.0) / (1 - 0.5**2)])
    assert smooth([3.0, 1.0], 0.0) == [3.0, 1.0]


def test_visualize_help_lists_every_figure(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["visualize", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("forward", "trajectory", "loss-vs-t", "architecture"))
