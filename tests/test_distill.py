"""Progressive distillation (:mod:`ddpm.distill`): the student against the closed-form teacher on Gaussian data, and
``ddpm distill`` end to end on the tiny network: stages, the student file, sampling it, exact resume, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import write_model_file
from ddpm.checkpoint import load_checkpoint
from ddpm.diffusion import GaussianDiffusion
from ddpm.distill import ddim_step, distillation_loss, distillation_target
from ddpm.model_io import load_model
from ddpm.spacing import time_grid

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MU, STD = torch.tensor([0.3, -0.2, 0.0]), torch.tensor([0.5, 0.2, 0.8])


def gaussian_teacher(diffusion: GaussianDiffusion):
    """The ideal v-prediction for data N(MU, diag(STD^2)): x0-hat = E[x_0 | z_t] = MU + alpha STD^2 / (alpha^2 STD^2
    + sigma^2) (z_t - alpha MU), and v = (alpha z_t - x0-hat) / sigma."""
    abar = diffusion.alphas_cumprod.double()

    def teacher(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = abar[t].sqrt().float()[:, None], (1 - abar[t]).sqrt().float()[:, None]
        x0 = MU + alpha * STD**2 / (alpha**2 * STD**2 + sigma**2) * (z - alpha * MU)
        return (alpha * z - x0) / sigma

    return teacher


class LinearStudent(nn.Module):
    """v = a_t z + b_t per dimension and timestep: it can represent the ideal teacher's two-step map exactly."""

    def __init__(self, timesteps: int, dim: int):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(timesteps, dim))
        self.b = nn.Parameter(torch.zeros(timesteps, dim))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.a[t] * z + self.b[t]


def affine_maps(step, grid: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) per step of ``grid`` with z_s = A z_t + B per dimension, read off ``step(z, t, s)`` at z = 0 and 1."""
    maps = []
    for k, t in enumerate(grid):
        s = grid[k + 1] if k + 1 < len(grid) else -1
        at = lambda v: torch.full((3,), v)  # noqa: E731  (one row per dimension)
        offset = step(torch.zeros(3, 3), at(t), at(s)).diagonal()
        maps.append((step(torch.eye(3), at(t), at(s)).diagonal() - offset, offset))
    return maps


def compose(maps) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the samples of affine steps from z_T ~ N(0, I): x_0 = A z_T + B."""
    a, b = torch.ones(3), torch.zeros(3)
    for step_a, step_b in maps:
        a, b = step_a * a, step_a * b + step_b
    return b, a.abs()


@torch.no_grad()
def test_target_is_the_teachers_two_steps_in_one():
    """One DDIM step with x~ from z_t lands exactly where the teacher's two steps land, also on the step to x_0."""
    d = GaussianDiffusion(1000, prediction="v")
    teacher = gaussian_teacher(d)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    for t, mid, s in [(999, 874, 749), (249, 124, -1)]:
        t, mid, s = (torch.full((4,), v) for v in (t, mid, s))
        x_target = distillation_target(teacher, d, z, t, mid, s, clip=False)
        alpha, sigma = d.alphas_cumprod[t].double().sqrt()[:, None], (1 - d.alphas_cumprod[t].double()).sqrt()[:, None]
        one = lambda z_, t_: ((alpha * z_ - x_target) / sigma).float()  # noqa: E731  (v of x~)
        two_steps = ddim_step(teacher, d, ddim_step(teacher, d, z, t, mid, False), mid, s, False)
        torch.testing.assert_close(ddim_step(one, d, z, t, s, False), two_steps, atol=1e-5, rtol=1e-5)


def test_student_of_the_ideal_gaussian_teacher_is_its_two_step_map():
    """A student distilled for 400 steps from the closed-form teacher of Gaussian data takes the teacher's two DDIM
    steps in one, and so draws what the teacher draws with twice the steps.

    Why the tolerance can be tight: for Gaussian data the ideal teacher's two DDIM steps are an affine map of z_t, so
    the target x~ is an affine function of z_t, which the linear student represents exactly. The distillation loss
    is then a least-squares problem whose minimum is 0, and at that minimum every per-sample gradient is 0 as well:
    no gradient noise is left, and Adam converges to the teacher's map up to float32 rounding, not up to a
    sampling error of order 1/sqrt(batch). 1e-4 of the data's scale leaves room for rounding over 64 steps.
    """
    torch.manual_seed(0)
    d = GaussianDiffusion(1000, prediction="v")
    teacher, student = gaussian_teacher(d), LinearStudent(1000, 3)
    n = 64
    teacher_grid = time_grid("trailing", d, 2 * n)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    steps = 400
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / steps)  # as each stage does
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x0 = MU + STD * torch.randn(256, 3, generator=generator)
        loss = distillation_loss(student, teacher, d, x0, teacher_grid, generator, clip=False)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        taught = affine_maps(lambda z, t, s: ddim_step(student, d, z, t, s, False), teacher_grid[::2])

        def two_steps(z, t, s):
            mid = torch.tensor([teacher_grid[teacher_grid.index(int(t[0])) + 1]] * 3)
            return ddim_step(teacher, d, ddim_step(teacher, d, z, t, mid, False), mid, s, False)

        target = affine_maps(two_steps, teacher_grid[::2])
    for (a, b), (ta, tb) in zip(taught, target):
        torch.testing.assert_close(a, ta, atol=1e-4, rtol=0)
        torch.testing.assert_close(b, tb, atol=1e-4, rtol=0)
    mean, std = compose(taught)
    with torch.no_grad():
        teacher_mean, teacher_std = compose(affine_maps(lambda z, t, s: ddim_step(teacher, d, z, t, s, False),
                                                        teacher_grid))
    torch.testing.assert_close(mean, teacher_mean, atol=1e-3, rtol=0)
    torch.testing.assert_close(std, teacher_std, atol=1e-3, rtol=0)
    # The teacher's 128 DDIM steps are within 6% of the data (fewer steps shrink the std; 8 steps: 30-60%).
    torch.testing.assert_close(mean, MU, atol=3e-3, rtol=0)
    torch.testing.assert_close(std, STD, atol=0, rtol=0.06)


# ------------------------------------------------------------------------------------------------ end to end
DISTILL = ["--batch-size", "4", "--stage-steps", "2", "--logging-steps", "1", "--checkpoint", "1", "--sample-every",
           "0", "--num-workers", "0", "--device", "cpu", "--seed", "3"]


@pytest.fixture
def teacher(tmp_path):
    """A class-conditional v-prediction model file of the mini network on 8x8 images, 20 steps."""
    return write_model_file(tmp_path / "teacher.safetensors",
                            diffusion={"timesteps": 20, "schedule": "cosine", "prediction": "v"},
                            model={"class_cond": True, "class_names": CLASSES, "guidance_scale": 2.0})


@pytest.mark.parametrize("resume_at", [2, 3], ids=["stage-end", "mid-stage"])
def test_distil_sample_and_resume(cli, cifar_dir, teacher, tmp_path, resume_at):
    """8 -> 2 steps in two stages; each stage's student is a model file that samples with its own steps, guidance
    built in, in one network call per step and no flags; resuming ends bit for bit where the uninterrupted run does,
    from the first stage's last checkpoint (the step that resumes starts the second stage) or from the middle of the
    second (whose teacher comes from the checkpoint)."""
    common = [teacher, "--data-dir", cifar_dir, "--teacher-steps", "8", "--student-steps", "2", *DISTILL]
    code, out, err = cli("distill", *common, "--save-model", tmp_path / "straight")
    assert code == 0, err
    assert "guidance scale 2.0 built in" in out and "stage 2 of 2: 4 -> 2 steps" in out
    for steps in (4, 2):
        student = load_model(tmp_path / "straight" / f"student-{steps}.safetensors")
        d = student.config.diffusion
        assert (d.sampler, d.time_spacing, d.sampling_steps, d.distilled) == ("ddim", "trailing", steps, True)
        assert student.config.model.guidance_scale == 1.0
    student = tmp_path / "straight" / "student-2.safetensors"
    code, _, err = cli("export", student, "--format", "diffusers", "--output", tmp_path / "hf")
    assert code == 2 and "distilled student" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = cli("sample", "--load-model", student, "--class", "horse", "--num-samples", "2",
                         "--output", tmp_path / "horse.png", "--no-amp")
    assert code == 0, err
    assert (tmp_path / "horse.png").exists()
    loaded, calls = load_model(student), []
    loaded.model.register_forward_hook(lambda *args: calls.append(args[1][0].shape[0]))
    sampler, steps, spacing = loaded.config.diffusion.sampling(None, None, None)
    loaded.diffusion.sample(loaded.model, (3, 3, 8, 8), sampler, steps, spacing=spacing,
                            labels=torch.tensor([7, 7, 7]), guidance_scale=loaded.config.model.guidance_scale)
    assert calls == [3, 3]  # two calls on the batch itself: no second, unconditional pass

    split = tmp_path / "split"
    split.mkdir()
    name = f"ckpt-{resume_at:08d}.pt"
    first = load_checkpoint(tmp_path / "straight" / name)
    assert first["teacher_stage"] == resume_at // 3 and first["config"]["diffusion"]["sampling_steps"] == 4 // (
        1 + resume_at // 3)
    (split / name).write_bytes((tmp_path / "straight" / name).read_bytes())
    code, out, err = cli("distill", *common, "--save-model", split, "--resume")
    assert code == 0, err
    assert "resuming from" in out and ("stage 2 of 2" in out) == (resume_at == 2)
    a, b = (load_checkpoint(run / "ckpt-00000004.pt") for run in (tmp_path / "straight", split))
    assert a["teacher_stage"] == b["teacher_stage"] == 1
    for key in ("model", "teacher"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
    assert not all(torch.equal(a["model"][n], first["model"][n]) for n in a["model"])  # it did learn something


@pytest.mark.parametrize("change, message", [
    ({"prediction": "eps"}, "predicts eps"),
    ({}, "--teacher-steps must be a power of two"),
    ({"unconditional": True}, "not class-conditional, so --guidance-scale"),
])
def test_bad_teachers_and_steps_get_one_line(cli, cifar_dir, tmp_path, change, message):
    model = {} if change.get("unconditional") else {"class_cond": True, "class_names": CLASSES}
    teacher = write_model_file(tmp_path / "t.safetensors", model=model,
                               diffusion={"timesteps": 20, "schedule": "cosine",
                                          "prediction": change.get("prediction", "v")})
    extra = ["--guidance-scale", "3"] if change.get("unconditional") else []
    steps = "6" if not change else "8"
    code, out, err = cli("distill", teacher, "--data-dir", cifar_dir, "--teacher-steps", steps, *extra, *DISTILL,
                         "--save-model", tmp_path / "run")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_not_a_model_and_steps_that_do_not_halve(cli, cifar_dir, teacher, tmp_path):
    not_a_model = tmp_path / "notes.safetensors"
    not_a_model.write_text("hello")
    code, _, err = cli("distill", not_a_model, "--data-dir", cifar_dir, "--save-model", tmp_path / "a")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    code, _, err = cli("distill", teacher, "--teacher-steps", "4", "--student-steps", "4", "--save-model",
                       tmp_path / "b")
    assert code == 2 and "fewer than the teacher's steps" in err
    code, _, err = cli("distill", teacher, "--teacher-steps", "32", "--save-model", tmp_path / "c")
    assert code == 2 and "between 1 and T = 20" in err
    code, _, err = cli("distill", "--save-model", tmp_path / "d")
    assert code == 2 and "name the teacher" in err


def test_the_shipped_student(cli, tmp_path):
    """models/ddpm-cifar10-cpu-distilled.safetensors: two network calls per image with no flags, guidance built in;
    the repository ships at most three model files, 20 MB in all."""
    models = Path(__file__).resolve().parents[1] / "models"
    files = sorted(models.glob("*.safetensors"))
    assert len(files) <= 3 and sum(f.stat().st_size for f in files) <= 20_000_000
    student = load_model(models / "ddpm-cifar10-cpu-distilled.safetensors")
    d = student.config.diffusion
    assert (d.sampler, d.time_spacing, d.sampling_steps, d.distilled, student.config.model.guidance_scale) == (
        "ddim", "trailing", 2, True, 1.0)
    calls = []
    student.model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    code, out, err = cli("sample", "--load-model", models / "ddpm-cifar10-cpu-distilled.safetensors", "--class",
                         "horse", "--num-samples", "4", "--output", tmp_path / "horses.png")
    assert code == 0, err
    assert "ddim" in out and (tmp_path / "horses.png").exists()
    student.diffusion.sample(student.model, (4, 3, 32, 32), *d.sampling(None, None, None)[:2],
                             spacing="trailing", labels=torch.full((4,), 7), guidance_scale=1.0)
    assert calls == [4, 4]
