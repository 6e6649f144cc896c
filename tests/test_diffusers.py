"""diffusers folders in and out (:mod:`ddpm.diffusers_format`), with diffusers itself as the oracle.

Random-weight ``UNet2DModel``s are saved with diffusers' own ``save_pretrained`` in the two layouts found in the
wild and must compute the same function once loaded as our UNet; DDIM through our sampler must give diffusers'
images; an exported run must load in ``DDPMPipeline`` and come back bit-identical; every refusal is one line,
exit code 2. The networks are narrow versions of the published ones (every structural option kept, widths divided)
so that the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from ddpm.checkpoint import save_checkpoint
from ddpm.config import make_config
from ddpm.diffusers_format import model_config, unet_config
from ddpm.model_io import export_diffusers, load_model
from ddpm.samplers import ddim_sample
from ddpm.unet import UNet

# google/ddpm-cifar10-32's config.json (Ho et al.'s CIFAR-10 network) with block_out_channels (128, 256, 256, 256)
# divided by 8 and 8 GroupNorm groups instead of 32; everything else as published, attention at 16x16 included.
GOOGLE_CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(16, 32, 32, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), act_fn="silu", attention_head_dim=None,
    norm_num_groups=8, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    center_input_sample=False, mid_block_scale_factor=1, time_embedding_type="positional",
)
# diffusers' examples/unconditional_image_generation/train_unconditional.py at --resolution 32: six levels, attention
# at the fifth, and UNet2DModel's defaults for the rest (flip_sin_to_cos=True, freq_shift=0, attention_head_dim=8,
# downsample_padding=1, norm_eps=1e-5); block_out_channels (128, 128, 256, 256, 512, 512) divided by 8.
TRAIN_UNCONDITIONAL = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(16, 16, 32, 32, 64, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)
# Cosines first, no frequency shift, attention at two resolutions in 16-channel heads (4 per block), one block per
# level, grey images, a wider timestep embedding and dropout (inactive in eval mode).
TWO_ATTENTION_LEVELS = dict(
    sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), flip_sin_to_cos=True, freq_shift=0,
    attention_head_dim=16, norm_num_groups=16, time_embedding_dim=96, dropout=0.1,
)
CONFIGS = {"google-cifar10": GOOGLE_CIFAR10, "train-unconditional": TRAIN_UNCONDITIONAL,
           "two-attention-levels": TWO_ATTENTION_LEVELS}


def random_unet(config: dict, seed: int = 0) -> UNet2DModel:
    """A UNet2DModel with every weight random (diffusers zero-initialises nothing, but small random offsets on the
    norms too make every parameter matter)."""
    torch.manual_seed(seed)
    net = UNet2DModel(**config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def save(net: UNet2DModel, folder: Path, layout: str, scheduler: DDPMScheduler | None = None) -> Path:
    """``layout="pipeline"``: DDPMPipeline.save_pretrained (model_index.json, unet/, scheduler/);
    ``layout="flat"``: google/ddpm-cifar10-32's files, all in one folder."""
    scheduler = scheduler or DDPMScheduler(variance_type="fixed_large")
    if layout == "pipeline":
        DDPMPipeline(unet=net, scheduler=scheduler).save_pretrained(folder)
    else:
        net.save_pretrained(folder)
        scheduler.save_pretrained(folder)
        (folder / "model_index.json").write_text(json.dumps(
            {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
             "unet": ["diffusers", "UNet2DModel"]}))
    return folder


def inputs(net: UNet2DModel, batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c, size = net.config.in_channels, net.config.sample_size
    return torch.randn(batch, c, size, size, generator=g), torch.tensor([0, 417, 999][:batch])


def max_relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def tiny_block_run(root: Path, diffusion: dict | None = None, **model) -> Path:
    """A run directory with one checkpoint of a tiny ``skip="block"`` network in Ho et al.'s TensorFlow details,
    raw and EMA weights different, as training leaves them."""
    overrides = {"skip": "block", "norm_eps": 1e-6, "downsample_padding": "same", "activation": "silu", **model}
    config = make_config("tiny", {"model": overrides, "diffusion": diffusion or {}})
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = UNet(config.model)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        states.append(net.state_dict())
    run = root / "run"
    run.mkdir()
    save_checkpoint(run, 7, {"model": states[0], "ema": {"model": states[1]}, "config": config.to_dict(),
                             "step": 7}, keep=1)
    return run


# ---------------------------------------------------------------- import


@pytest.mark.parametrize("layout", ["flat", "pipeline"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet2dmodel_loads_as_the_same_function(tmp_path, name, layout):
    net = random_unet(CONFIGS[name])
    loaded = load_model(save(net, tmp_path / "model", layout))
    assert loaded.config.model.skip == "block" and loaded.config.preset == "ho2020"
    assert sum(p.numel() for p in loaded.model.parameters()) == sum(p.numel() for p in net.parameters())
    x, t = inputs(net)
    with torch.no_grad():
        theirs, ours = net(x, t).sample, loaded.model(x, t)
    assert max_relative_error(ours, theirs) <= 1e-5


def test_google_config_is_the_ho2020_preset():
    """Full width, google/ddpm-cifar10-32's config.json is exactly our ho2020 network (dropout aside: the released
    config leaves it at 0, Ho et al. trained CIFAR-10 with 0.1)."""
    published = {**GOOGLE_CIFAR10, "block_out_channels": [128, 256, 256, 256], "norm_num_groups": 32}
    ho2020 = make_config("ho2020").model
    assert model_config(published) == dataclasses.replace(ho2020, dropout=0.0)
    assert unet_config(ho2020)["downsample_padding"] == 0 and unet_config(ho2020)["norm_eps"] == 1e-6


def test_bin_weights_with_pre_0_15_attention_names(tmp_path):
    """google's folder holds diffusion_pytorch_model.bin, whose attention layers were called query/key/value/
    proj_attn before diffusers 0.15; both load (the .bin with weights_only=True)."""
    net = random_unet(GOOGLE_CIFAR10)
    folder = save(net, tmp_path / "model", "flat")
    state = {}
    for name, tensor in net.state_dict().items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            name = name.replace(f".{new}.", f".{old}.")
        state[name] = tensor
    assert any(".proj_attn." in name for name in state)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    x, t = inputs(net)
    with torch.no_grad():
        assert max_relative_error(load_model(folder).model(x, t), net(x, t).sample) <= 1e-5


def test_scheduler_config_becomes_our_diffusion(tmp_path):
    net = random_unet(TWO_ATTENTION_LEVELS)
    scheduler = DDPMScheduler(num_train_timesteps=400, beta_start=2e-4, beta_end=0.04, variance_type="fixed_small")
    d = load_model(save(net, tmp_path / "linear", "pipeline", scheduler)).diffusion
    assert (d.timesteps, d.schedule, d.variance) == (400, "linear", "fixed_small")
    torch.testing.assert_close(d.betas.float(), scheduler.betas, rtol=1e-6, atol=0)
    cosine = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", variance_type="fixed_large")
    d = load_model(save(net, tmp_path / "cosine", "flat", cosine)).diffusion
    assert (d.timesteps, d.schedule, d.variance) == (100, "cosine", "fixed_large")
    torch.testing.assert_close(d.betas.float(), cosine.betas, rtol=1e-5, atol=0)


@pytest.mark.parametrize("prediction_type, ours", [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v")])
def test_ddim_10_steps_gives_diffusers_images(tmp_path, prediction_type, ours):
    """Our DDIM on our loaded network vs diffusers' DDIMScheduler loop on theirs (its default 'leading' timesteps
    900, 800, ..., 0, passed to our sampler as they are), from the same x_T, for each meaning of the output."""
    net = random_unet(GOOGLE_CIFAR10)
    folder = save(net, tmp_path / "model", "pipeline", DDPMScheduler(prediction_type=prediction_type))
    loaded = load_model(folder)
    assert loaded.diffusion.prediction == ours
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps.tolist()
    assert timesteps == list(range(900, -1, -100))
    x_T = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ours = ddim_sample(loaded.model, loaded.diffusion, x_T, timesteps, eta=0.0)
    x = x_T
    with torch.no_grad():
        for t in timesteps:
            x = scheduler.step(net(x, t).sample, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    assert (ours - x).abs().max() <= 1e-4


def test_every_command_reads_a_diffusers_folder(tmp_path, cli):
    folder = save(random_unet(TWO_ATTENTION_LEVELS), tmp_path / "model", "pipeline")
    code, out, err = cli("sample", "--load-model", folder, "--num-samples", "2", "--sampler", "ddim",
                         "--sampling-steps", "2", "--device", "cpu", "--output", tmp_path / "grid.png")
    assert code == 0 and (tmp_path / "grid.png").is_file() and "published weights" in out, err
    code, out, err = cli("import", folder, "--output", tmp_path / "model.safetensors")
    assert code == 0, err
    imported, direct = load_model(tmp_path / "model.safetensors"), load_model(folder)
    assert imported.config == direct.config
    for name, tensor in direct.model.state_dict().items():
        assert torch.equal(imported.model.state_dict()[name], tensor), name


# ---------------------------------------------------------------- export


def test_export_loads_in_ddpm_pipeline_with_our_output(tmp_path, cli):
    run = tiny_block_run(tmp_path)
    code, out, err = cli("export", run, "--format", "diffusers", "--output", tmp_path / "pipe")
    assert code == 0, err
    assert {p.relative_to(tmp_path / "pipe").as_posix() for p in (tmp_path / "pipe").rglob("*") if p.is_file()} == {
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json"}
    pipe = DDPMPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True)
    ema = load_model(run)  # EMA by default, on both sides
    assert ema.weights == "ema"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([5, 60])
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t).sample, ema.model(x, t), rtol=1e-5, atol=1e-6)
    assert pipe.scheduler.config.num_train_timesteps == ema.config.diffusion.timesteps == 100
    assert pipe.scheduler.config.variance_type == "fixed_large"
    images = pipe(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (1, 32, 32, 3) and ((0 <= images) & (images <= 1)).all()


@pytest.mark.parametrize("prediction, theirs", [("eps", "epsilon"), ("x0", "sample"), ("v", "v_prediction")])
def test_each_prediction_type_goes_out_and_comes_back(tmp_path, prediction, theirs):
    run = tiny_block_run(tmp_path, diffusion={"prediction": prediction})
    folder = export_diffusers(run, tmp_path / "pipe")
    assert DDPMScheduler.from_pretrained(folder, subfolder="scheduler").config.prediction_type == theirs
    assert load_model(folder).diffusion.prediction == prediction


@pytest.mark.parametrize("model", [{}, {"attention_heads": 2, "time_cos_first": True, "time_freq_shift": 0,
                                         "downsample_padding": "symmetric", "norm_eps": 1e-5}])
def test_ours_to_diffusers_to_ours_is_bit_identical(tmp_path, model):
    run = tiny_block_run(tmp_path, **model)
    original = load_model(run)
    back = load_model(export_diffusers(run, tmp_path / "pipe"))
    # An unset beta range (scaled by 1000/T) comes back as the numbers it resolves to: the same schedule.
    assert torch.equal(back.diffusion.betas, original.diffusion.betas)
    assert dataclasses.replace(back.config.diffusion, beta_start=None, beta_end=None) == original.config.diffusion
    # Two heads in the 32-channel attention blocks are diffusers' (and then our) 16-channel heads.
    expected = dataclasses.replace(original.config.model, attention_heads=1, attention_head_dim=16)
    assert back.config.model == (expected if model else original.config.model)
    ours, theirs = original.model.state_dict(), back.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 99])
    with torch.no_grad():
        assert torch.equal(original.model(x, t), back.model(x, t))


def test_a_class_conditional_model_goes_out_with_num_class_embeds_and_comes_back_bit_identical(tmp_path, cli):
    """num_class_embeds = classes + 1, so the "no class" row survives; UNet2DModel(x, t, class_labels) is our
    network within 1e-5; the class names and the recommended guidance scale come back too."""
    run = tiny_block_run(tmp_path, class_cond=True, class_names=("cat", "dog", "ship"))
    code, out, err = cli("export", run, "--format", "diffusers", "--output", tmp_path / "pipe",
                         "--guidance-scale", "2.5")
    assert code == 0, err
    config = json.loads((tmp_path / "pipe" / "unet" / "config.json").read_text())
    assert config["num_class_embeds"] == 4 and config["class_embed_type"] is None
    original, back = load_model(run), load_model(tmp_path / "pipe")
    assert back.config.model == dataclasses.replace(original.config.model, guidance_scale=2.5)
    ours, theirs = original.model.state_dict(), back.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    unet = UNet2DModel.from_pretrained(tmp_path / "pipe", subfolder="unet", local_files_only=True).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    t, labels = torch.tensor([5, 60, 99, 0]), torch.tensor([0, 1, 2, 3])  # 3: no class
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, class_labels=labels).sample, original.model(x, t, labels),
                                   rtol=1e-5, atol=1e-5)
        assert torch.equal(back.model(x, t, labels), original.model(x, t, labels))


def test_the_usage_lines_that_sample_a_conditional_export_with_diffusers_run(tmp_path, monkeypatch):
    """docs/usage.md's guidance loop over UNet2DModel and DDIMScheduler, as printed, on an exported tiny model."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text()
    code = next(block for block in readme.split("```python")[1:] if "my-cond-ddpm" in block).split("```")[0]
    from ddpm.datasets import CIFAR10_CLASSES

    run = tiny_block_run(tmp_path, class_cond=True, class_names=CIFAR10_CLASSES)
    export_diffusers(run, tmp_path / "my-cond-ddpm")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(code, namespace)
    images = namespace["images"]
    assert images.shape == (2, 3, 32, 32) and ((0 <= images) & (images <= 1)).all()


def test_a_foreign_class_conditional_unet_without_its_no_class_row_is_refused(tmp_path, cli):
    folder = tmp_path / "foreign"
    random_unet({**GOOGLE_CIFAR10, "num_class_embeds": 10}).save_pretrained(folder)
    DDPMScheduler().save_pretrained(folder)
    code, out, err = cli("sample", "--load-model", folder, "--num-samples", 1, "--device", "cpu",
                         "--output", tmp_path / "g.png")
    assert code == 2
    [line] = err.strip().splitlines()
    assert "num_class_embeds=10 is not supported" in line and "_ddpm_class_names" in line


# ---------------------------------------------------------------- refusals


def edited(folder: Path, file: str, **changes) -> Path:
    path = folder / file
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return folder


REFUSED_UNETS = {
    "resnet_time_scale_shift": dict(resnet_time_scale_shift="scale_shift"),
    "class_embed_type": dict(class_embed_type="timestep"),
    "num_class_embeds": dict(num_class_embeds=10),
    "act_fn": dict(act_fn="relu"),
    "down_block_types": dict(down_block_types=["DownBlock2D", "SkipDownBlock2D", "DownBlock2D"]),
    "up_block_types": dict(up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]),
    "block_out_channels": dict(block_out_channels=[32, 48, 64]),
    "downsample_type": dict(downsample_type="resnet"),
    "center_input_sample": dict(center_input_sample=True),
    "mid_block_scale_factor": dict(mid_block_scale_factor=1.414),
    "out_channels": dict(out_channels=2),
    "some_future_option": dict(some_future_option=True),
}
REFUSED_SCHEDULERS = {
    "prediction_type": dict(prediction_type="flow_prediction"),
    "beta_schedule": dict(beta_schedule="scaled_linear"),
    "variance_type": dict(variance_type="learned_range"),
    "trained_betas": dict(trained_betas=[0.1, 0.2]),
    "_class_name": dict(_class_name="EulerDiscreteScheduler"),
}


@pytest.fixture(scope="module")
def folder_template(tmp_path_factory) -> Path:
    return save(random_unet(TWO_ATTENTION_LEVELS), tmp_path_factory.mktemp("template") / "model", "pipeline")


def copy_of(template: Path, root: Path) -> Path:
    return Path(shutil.copytree(template, root / "copy"))


@pytest.mark.parametrize("field", list(REFUSED_UNETS) + list(REFUSED_SCHEDULERS))
def test_refusals_are_one_line_naming_the_field(tmp_path, cli, folder_template, field):
    folder = copy_of(folder_template, tmp_path)
    if field in REFUSED_UNETS:
        edited(folder, "unet/config.json", **REFUSED_UNETS[field])
    else:
        edited(folder, "scheduler/scheduler_config.json", **REFUSED_SCHEDULERS[field])
    code, out, err = cli("import", folder, "--output", tmp_path / "x.safetensors")
    assert code == 2 and err.count("\n") == 1 and f"{field}=" in err, err
    assert not (tmp_path / "x.safetensors").exists()


def test_other_refusals_are_one_line(tmp_path, cli, folder_template):
    folder = copy_of(folder_template, tmp_path)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    seed_run = tmp_path / "seed"
    seed_run.mkdir()
    config = make_config("tiny")
    save_checkpoint(seed_run, 1, {"model": UNet(config.model).state_dict(), "config": config.to_dict(), "step": 1},
                    keep=1)
    relu_run = tiny_block_run(tmp_path, activation="relu")
    cases = [
        (("import", folder, "--output", tmp_path / "x.safetensors"), "scheduler_config.json is missing"),
        (("import", tmp_path, "--output", tmp_path / "x.safetensors"), "is not a diffusers folder"),
        (("sample", "--load-model", folder_template, "--weights", "raw"), "holds one set of weights"),
        (("export", seed_run, "--format", "diffusers", "--output", tmp_path / "p"), "seed network"),
        (("export", relu_run, "--format", "diffusers", "--output", tmp_path / "p"), "--activation relu"),
        (("export", folder_template, "--format", "diffusers", "--output", tmp_path / "no" / "p"),
         "is not an existing folder"),
    ]
    for args, message in cases:
        code, out, err = cli(*args)
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)
    assert not (tmp_path / "p").exists()
