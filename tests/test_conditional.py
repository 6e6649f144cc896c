"""Class-conditional training and classifier-free guidance (issue 19): labels from every data source, label dropout,
guidance in every sampler (exact at s = 0 and s = 1, one batched forward pass), per-image seeds with labels, the
commands and their one-line errors, the diffusers round trip, and a tiny model that learns to draw what it is asked.

One tiny conditional run serves most tests (``cond_run``): 200 steps on a synthetic two-class folder of flat dark and
flat bright 8x8 images, about 10 s on an idle 2-core CPU.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.config import make_config
from ddpm.data import open_training_data
from ddpm.datasets import CIFAR10_CLASSES, classes_of, load_labelled_images, read_cifar10_labelled, read_labelled_images
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError, DataError
from ddpm.generate import generate
from ddpm.guidance import guided_model
from ddpm.model_io import load_model
from ddpm.probe import LinearProbe, fit
from ddpm.schedules import split_prediction
from ddpm.train import drop_labels
from ddpm.unet import UNet

LEVELS = {"bright": 220, "dark": 35}


def write_two_classes(root: Path, per_class: int = 16, size: int = 8, channels: int = 3, seed: int = 0) -> Path:
    """``root/bright/*.png`` and ``root/dark/*.png``: flat images at pixel level 220 and 35, with a little noise."""
    rng = np.random.default_rng(seed)
    for name, level in LEVELS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(level + rng.normal(0, 12, (size, size, channels)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(root / name / f"{i:03d}.png")
    return root


# Flags of the tiny conditional run: 8x8 images, two levels, T = 50, a high learning rate and a short EMA.
COND = ["--preset", "tiny", "--class-cond", "--resolution", "8", "--ch-mult", "1", "2", "--attn-resolutions", "4",
        "--time-steps", "50", "--batch-size", "16", "--lr", "2e-3", "--ema-decay", "0.9", "--logging-steps", "50",
        "--sample-every", "0", "--num-workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory) -> Path:
    """The tiny conditional run, trained once for this module (read it, never write into it)."""
    from conftest import deterministic_torch
    from ddpm.cli import main

    root = tmp_path_factory.mktemp("cond")
    data = write_two_classes(root / "data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with deterministic_torch():
            code = main(["train", *COND, "--total-steps", "200", "--checkpoint", "200", "--data-dir", str(data),
                         "--save-model", str(root / "run")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return root / "run"


def tiny_conditional(prediction: str = "eps", seed: int = 0) -> tuple[UNet, GaussianDiffusion]:
    """An untrained conditional tiny network with random (not zero) output weights, so that classes matter."""
    config = make_config("tiny", {"model": dict(class_cond=True, class_names=("a", "b", "c"), resolution=8,
                                                ch_mult=(1, 2), attn_resolutions=(4,)),
                                  "diffusion": dict(prediction=prediction)})
    torch.manual_seed(seed)
    model = UNet(config.model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model, GaussianDiffusion.from_config(config.diffusion)


# ------------------------------------------------------------------------------------------------- labels
def test_cifar_pickles_carry_labels_and_class_names(cifar_dir, cifar_archive):
    for source in (cifar_dir, cifar_archive):
        images, labels, names = read_cifar10_labelled(source, "train")
        assert names == CIFAR10_CLASSES and labels.dtype == torch.int64 and labels.shape == (40,)
        assert 0 <= labels.min() and labels.max() <= 9 and len(images) == 40
    data = open_training_data(str(cifar_dir), 32, labelled=True)
    assert data.class_names == CIFAR10_CLASSES and torch.equal(data.labels, read_cifar10_labelled(cifar_dir)[1])
    assert open_training_data(str(cifar_dir), 32).labels is None  # unconditional runs read no labels


def _pack(folder: Path, archive: Path) -> Path:
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for f in sorted(folder.rglob("*.png"), reverse=True):
                zf.write(f, f.relative_to(folder))
    else:
        with tarfile.open(archive, "w:gz") as tar:
            for f in sorted(folder.rglob("*.png"), reverse=True):
                tar.add(f, str(f.relative_to(folder)))
    return archive


def test_folders_and_archives_give_labels_by_sorted_folder_name(tmp_path):
    folder = write_two_classes(tmp_path / "data", per_class=3)
    (folder / "cat").mkdir()  # a third class, named between the others only in sorted order
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "cat" / "x.png")
    for source in (folder, _pack(folder, tmp_path / "d.zip"), _pack(folder, tmp_path / "d.tar.gz")):
        images, labels, names = read_labelled_images(source, 8)
        assert names == ("bright", "cat", "dark")
        assert labels.tolist() == [0, 0, 0, 1, 2, 2, 2]
        assert images[labels == 0].float().mean() > 150 > 50 > images[labels == 2].float().mean()


def test_train_and_test_folders_of_the_same_class_are_one_class(tmp_path):
    write_two_classes(tmp_path / "d" / "train", per_class=2)
    write_two_classes(tmp_path / "d" / "test", per_class=1, seed=1)
    assert classes_of(["train/dark/1.png", "test/dark/2.png", "train/bright/3.png"], "d") == (
        ("bright", "dark"), [1, 1, 0])
    images, labels, names, description = load_labelled_images(tmp_path / "d", 1, 8, split="test")
    assert names == ("bright", "dark") and labels.tolist() == [0, 1] and "below test/" in description


def test_a_folder_without_class_sub_folders_is_unconditional_only(image_folder, tmp_path):
    assert len(open_training_data(str(image_folder), 8).images) == 12  # trains unconditionally as before
    with pytest.raises(DataError, match="images outside class sub-folders"):
        classes_of(["a.png", "cat/b.png"], "x")
    with pytest.raises(DataError, match="at least 2 classes"):
        classes_of(["cat/a.png", "cat/b.png"], "x")


def test_class_cond_on_data_without_classes_is_a_one_line_error(cli, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(flat / f"{i}.png")
    code, out, err = cli("train", *COND, "--total-steps", "2", "--batch-size", "2", "--data-dir", flat,
                         "--save-model", tmp_path / "run")
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("ddpm train: error: --class-cond needs class labels") and "sub-folder" in line


# ------------------------------------------------------------------------------------------------- training
def test_label_dropout_rate():
    labels = torch.randint(0, 10, (200_000,))
    generator = torch.Generator().manual_seed(0)
    dropped = drop_labels(labels, 0.1, 10, generator)
    rate = (dropped == 10).double().mean().item()
    assert abs(rate - 0.1) < 0.003  # 0.1 +- 4.5 standard errors
    assert torch.equal(dropped[dropped != 10], labels[dropped != 10])
    assert torch.equal(drop_labels(labels, 0.0, 10, generator), labels)
    assert (drop_labels(labels, 1.0, 10, generator) == 10).all()


def test_unconditional_networks_take_no_labels_and_are_unchanged():
    config = make_config("tiny")
    torch.manual_seed(0)
    plain = UNet(config.model)
    assert plain.num_classes is None and plain.class_embed is None
    assert not any("class" in name for name in plain.state_dict())
    with pytest.raises(ValueError, match="not class-conditional"):
        plain(torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    # The conditional network draws the same initial weights for every layer it shares with the unconditional one.
    torch.manual_seed(0)
    conditional = UNet(make_config("tiny", {"model": dict(class_cond=True, class_names=("a", "b"))}).model)
    shared = plain.state_dict()
    assert all(torch.equal(t, shared[n]) for n, t in conditional.state_dict().items() if n in shared)
    assert conditional.class_embed.weight.shape == (3, config.model.time_emb_dim)


# ------------------------------------------------------------------------------------------------- guidance
def _inputs(batch: int = 4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, 8, 8, generator=g), torch.tensor([5, 20, 40, 99][:batch]), torch.tensor([0, 1, 2, 1])


@torch.no_grad()
def test_scale_one_is_the_conditional_prediction_and_zero_the_unconditional_one_exactly():
    model, _ = tiny_conditional()
    x, t, labels = _inputs()
    null = torch.full_like(labels, 3)
    assert torch.equal(guided_model(model, labels, 1.0)(x, t), model(x, t, labels))
    assert torch.equal(guided_model(model, labels, 0.0)(x, t), model(x, t, null))
    assert torch.equal(guided_model(model, None, 4.0)(x, t), model(x, t, null))  # no labels: no class
    assert torch.equal(model(x, t), model(x, t, null))
    cond, uncond = model(x, t, labels), model(x, t, null)
    torch.testing.assert_close(guided_model(model, labels, 3.0)(x, t), uncond + 3.0 * (cond - uncond),
                               rtol=1e-5, atol=1e-5)


class CountingNetwork(torch.nn.Module):
    """A conditional network that counts its forward passes and the batch sizes they see."""

    def __init__(self, model: UNet):
        super().__init__()
        self.model, self.num_classes, self.batches = model, model.num_classes, []

    def forward(self, x, t, labels=None):
        self.batches.append(len(x))
        return self.model(x, t, labels)


@pytest.mark.parametrize("sampler, steps", [("ddpm", 5), ("ddim", 5), ("dpm++2m", 5)])
def test_guidance_makes_one_batched_forward_pass_per_step(sampler, steps):
    model, diffusion = tiny_conditional()
    counting = CountingNetwork(model)
    labels = torch.tensor([0, 1, 2])
    diffusion.sample(counting, (3, 3, 8, 8), sampler=sampler, steps=steps, labels=labels, guidance_scale=2.0,
                     generator=torch.Generator().manual_seed(0))
    assert counting.batches == [6] * steps
    counting.batches.clear()
    diffusion.sample(counting, (3, 3, 8, 8), sampler=sampler, steps=steps, labels=labels, guidance_scale=1.0,
                     generator=torch.Generator().manual_seed(0))
    assert counting.batches == [3] * steps


@pytest.mark.parametrize("prediction", ["x0", "v"])
@torch.no_grad()
def test_guiding_the_raw_output_of_x0_and_v_networks_is_guiding_eps(prediction):
    model, diffusion = tiny_conditional(prediction)
    x, t, labels = _inputs()
    abar = diffusion.alphas_cumprod[t].float()[:, None, None, None]
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()

    def eps(output):
        return split_prediction(output, x, alpha, sigma, prediction)[0]

    cond, uncond = eps(model(x, t, labels)), eps(model(x, t, torch.full_like(labels, 3)))
    torch.testing.assert_close(eps(guided_model(model, labels, 2.5)(x, t)), uncond + 2.5 * (cond - uncond),
                               rtol=1e-4, atol=1e-4)


def test_per_image_seeds_hold_with_labels():
    model, diffusion = tiny_conditional()
    kept = {}
    for batch in (1, 4):
        images = {}
        generate(model, diffusion, [7, 8, 9, 10], batch, lambda s, x: images.update(zip(s, x)), "ddim", 3,
                 labels=[2, 0, 1, 2], guidance_scale=2.0, progress=False)
        kept[batch] = images
    assert all(torch.equal(kept[1][s], kept[4][s]) for s in (7, 8, 9, 10))
    # The same seed with another class is another image.
    other = {}
    generate(model, diffusion, [7], 1, lambda s, x: other.update(zip(s, x)), "ddim", 3, labels=[0],
             guidance_scale=2.0, progress=False)
    assert not torch.equal(other[7], kept[1][7])


def test_bad_guidance_arguments_are_refused():
    model, _ = tiny_conditional()
    with pytest.raises(ConfigError, match="must be a finite number >= 0"):
        guided_model(model, None, -1.0)
    with pytest.raises(ConfigError, match=r"class labels must be in 0 .. 3"):
        guided_model(model, torch.tensor([4]), 1.0)
    plain = UNet(make_config("tiny").model)
    with pytest.raises(ConfigError, match="not class-conditional"):
        guided_model(plain, torch.tensor([0]), 1.0)


# ------------------------------------------------------------------------------------------------- the trained run
def _brightness(images: torch.Tensor) -> torch.Tensor:
    return images.float().mean(dim=(1, 2, 3))


def test_a_tiny_conditional_model_draws_dark_or_bright_as_asked(cond_run):
    loaded = load_model(cond_run)
    assert loaded.config.model.class_names == ("bright", "dark")
    seeds = list(range(8))
    means = {}
    for scale in (0.0, 1.0, 3.0):
        for label in (0, 1):
            images = {}
            generate(loaded.model, loaded.diffusion, seeds, 8, lambda s, x: images.update(zip(s, x)), "ddim", 10,
                     labels=[label] * 8, guidance_scale=scale, progress=False)
            means[scale, label] = _brightness(torch.stack([images[s] for s in seeds]))
    assert torch.equal(means[0.0, 0], means[0.0, 1])  # unconditional: the class is ignored
    gap = {s: (means[s, 0] - means[s, 1]).mean().item() for s in (1.0, 3.0)}
    assert (means[1.0, 0] > means[1.0, 1]).all() and gap[1.0] > 40, gap  # levels 220 and 35: a gap of 185 at best
    assert gap[3.0] > gap[1.0] + 10, gap  # a larger scale separates them further


def test_a_resumed_run_must_have_the_classes_of_its_checkpoint():
    """(Bit-exact resume of a conditional run: tests/test_train.py::test_resume_is_bit_identical.)"""
    from ddpm.data import TrainingData
    from ddpm.train import with_classes

    config = make_config("tiny", {"model": dict(class_cond=True)})
    named = with_classes(config, TrainingData("d", class_names=("bright", "dark")))
    assert named.model.class_names == ("bright", "dark")
    assert with_classes(named, TrainingData("d", class_names=("bright", "dark"))) == named
    with pytest.raises(ConfigError, match="are not those this run was trained on"):
        with_classes(named, TrainingData("d", class_names=("black", "bright")))
    assert with_classes(make_config("tiny"), TrainingData("d", class_names=("a", "b"))) == make_config("tiny")


def test_grayscale_pixels_of_cifar_pickles_are_those_of_pil():
    from ddpm.datasets import to_channels

    rgb = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pil = [np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).convert("L")) for image in rgb]
    assert torch.equal(to_channels(rgb, 1)[:, 0], torch.from_numpy(np.stack(pil)))
    assert to_channels(rgb, 3) is rgb
    with pytest.raises(DataError, match="--in-channels 4"):
        to_channels(rgb, 4)


def test_grayscale_data_trains_and_samples(cli, tmp_path):
    data = write_two_classes(tmp_path / "gray", per_class=4, channels=1)
    code, out, err = cli("train", *COND, "--in-channels", "1", "--data-dir", data, "--total-steps", "2",
                         "--batch-size", "4", "--checkpoint", "2", "--sample-every", "2", "--sample-steps", "2",
                         "--save-model", tmp_path / "run")
    assert code == 0, err
    assert Image.open(tmp_path / "run" / "samples" / "step-00000002.png").size[0] == 2 + 2 * 10  # a column per class
    code, out, err = cli("sample", "--load-model", tmp_path / "run", "--num-samples", 2, "--sampler", "ddim",
                         "--sampling-steps", 2, "--class", "dark", "--device", "cpu", "--npz", tmp_path / "s.npz",
                         "--output", tmp_path / "s.png")
    assert code == 0, err
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (2, 8, 8, 1)


def test_sample_by_name_and_index_cycles_through_the_classes(cli, cond_run, tmp_path):
    """Image i gets the (i mod 2)-th class of --class; the same seeds with the list swapped swap dark and bright.
    The .npz carries the labels as ``arr_1`` beside the images (as guided-diffusion's sampler writes them)."""
    brightness = {}
    for name, classes, labels in (("a", "dark,0", [1, 0, 1, 0]), ("b", "0,dark", [0, 1, 0, 1])):
        code, out, err = cli("sample", "--load-model", cond_run, "--num-samples", 4, "--sampler", "ddim",
                             "--sampling-steps", 10, "--class", classes, "--guidance-scale", 2, "--device", "cpu",
                             "--output-dir", tmp_path / name, "--npz", tmp_path / f"{name}.npz")
        assert code == 0, err
        brightness[name] = [np.asarray(Image.open(tmp_path / name / f"{s:06d}.png")).mean() for s in range(4)]
        npz = np.load(tmp_path / f"{name}.npz")
        assert npz["arr_1"].dtype == np.int64 and npz["arr_1"].tolist() == labels
        assert [image.mean() for image in npz["arr_0"]] == pytest.approx(brightness[name])
    assert "classes bright, dark, guidance scale 2" in out
    a, b = brightness["a"], brightness["b"]
    assert a[0] < b[0] and a[1] > b[1] and a[2] < b[2] and a[3] > b[3], brightness


CLASS_ERRORS = {
    "unknown class": (["--class", "horse"], ["unknown class 'horse'", "bright, dark"]),
    "class index out of range": (["--class", "2"], ["unknown class '2'", "index 0 to 1"]),
    "negative scale": (["--guidance-scale", "-1"], ["--guidance-scale", "must be a finite number >= 0"]),
}


@pytest.mark.parametrize("case", list(CLASS_ERRORS))
def test_bad_class_and_scale_are_one_line_errors(case, cli, cond_run, tmp_path):
    extra, expected = CLASS_ERRORS[case]
    try:
        code, out, err = cli("sample", "--load-model", cond_run, "--num-samples", 1, "--device", "cpu",
                             "--output", tmp_path / "g.png", *extra)
    except SystemExit as exc:  # argparse's own one-line usage error
        code, err = exc.code, ""
    assert code == 2
    if err:
        [line] = [line for line in err.splitlines() if "error:" in line]
        assert all(text in line for text in expected), line


@pytest.mark.parametrize("command", ["sample", "export", "eval"])
def test_a_class_or_scale_on_an_unconditional_model_is_a_one_line_error(command, cli, tiny_run, tmp_path):
    args = {"sample": ["sample", "--load-model", tiny_run.run, "--class", "cat", "--device", "cpu",
                       "--output", tmp_path / "g.png"],
            "export": ["export", tiny_run.run, "--output", tmp_path / "m.safetensors", "--guidance-scale", "2"],
            "eval": ["eval", tiny_run.run, "--sampling-steps", "2", "--guidance-scale", "0,1", "--device", "cpu"]}
    code, out, err = cli(*args[command])
    assert code == 2
    [line] = err.strip().splitlines()
    assert "is not class-conditional" in line and "--class-cond" in line


def test_export_stores_the_recommended_scale_that_sampling_then_uses(cli, cond_run, tmp_path):
    code, out, err = cli("export", cond_run, "--output", tmp_path / "m.safetensors", "--guidance-scale", "3")
    assert code == 0, err
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.config.model.guidance_scale == 3.0 and loaded.config.model.class_names == ("bright", "dark")
    images = {}
    for scale in (None, 3.0):
        got = {}
        generate(loaded.model, loaded.diffusion, [0, 1], 2, lambda s, x: got.update(zip(s, x)), "ddim", 4,
                 guidance_scale=scale, progress=False)
        images[scale] = got
    assert all(torch.equal(images[None][s], images[3.0][s]) for s in (0, 1))
    code, out, err = cli("sample", "--load-model", tmp_path / "m.safetensors", "--num-samples", 2, "--device", "cpu",
                         "--sampler", "ddim", "--sampling-steps", 2, "--output", tmp_path / "g.png")
    assert code == 0 and "classes bright, dark, guidance scale 3" in out, err


def test_visualize_classes_and_guidance(cli, cond_run, tmp_path):
    code, out, err = cli("visualize", "classes", cond_run, "--per-class", 3, "--sampling-steps", 4, "--device", "cpu",
                         "--output", tmp_path / "classes.png")
    assert code == 0, err
    assert "2 classes x 3 images" in out and Image.open(tmp_path / "classes.png").size[0] > 100
    code, out, err = cli("visualize", "guidance", cond_run, "--scales", "0,1,4", "--class", "dark",
                         "--sampling-steps", 4, "--device", "cpu", "--output", tmp_path / "guidance.png")
    assert code == 0, err
    assert "1 classes at guidance scales 0, 1, 4" in out
    code, out, err = cli("visualize", "trajectory", cond_run, "--sampler", "ddim", "--sampling-steps", 3, "--seeds", 0,
                         1, "--class", "dark", "--guidance-scale", 2, "--device", "cpu", "--output", tmp_path / "t.png")
    assert code == 0, err


# ------------------------------------------------------------------------------------------------- the probe
def test_the_probe_fits_separable_features_and_matches_classes_by_name():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 2048))
    labels = np.repeat(np.arange(3), 20)
    features = centres[labels] + rng.normal(0, 2, (60, 2048))
    weight, bias, mean, scale = fit(features, labels, 3)
    probe = LinearProbe(weight, bias, mean, scale, ("a", "b", "c"), 0.9, 60, 0, "synthetic")
    test = np.repeat(np.arange(3), 10)
    test_features = centres[test] + rng.normal(0, 2, (30, 2048))
    assert probe.accuracy(test_features, test.tolist(), ("a", "b", "c")) > 0.9
    # A model whose classes are the probe's in another order: matched by name.
    assert probe.accuracy(test_features, (2 - test).tolist(), ("c", "b", "a")) > 0.9
    with pytest.raises(DataError, match="not d"):
        probe.accuracy(test_features, test.tolist(), ("a", "b", "d"))


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_eval_sweeps_the_guidance_scale_with_the_probe(cli, cond_run, tmp_path, monkeypatch):
    """Two scales of 4 samples each against 8 images of the run's own data, and a probe on 2 + 1 images per class:
    one JSON line per scale, the probe's two accuracies, and the sweep's plot."""
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path / "cache"))
    run = Path(shutil.copytree(cond_run, tmp_path / "run"))
    probe = tmp_path / "probe"
    write_two_classes(probe / "train", per_class=2, seed=1)
    write_two_classes(probe / "test", per_class=1, seed=2)
    reference = write_two_classes(tmp_path / "reference", per_class=4, seed=3)
    code, out, err = cli("eval", run, "--num-samples", 4, "--sampler", "ddim", "--sampling-steps", 5,
                         "--guidance-scale", "0,2", "--reference", reference, "--probe", probe, "--probe-images",
                         "2,1", "--device", "cpu")
    assert code == 0, err
    records = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [r["guidance_scale"] for r in records] == [0.0, 2.0]
    for r in records:
        assert 0 <= r["probe_accuracy"] <= 1 and r["probe_test_accuracy"] == 1.0
        assert (r["probe_train_images"], r["probe_test_images"]) == (4, 2)
    # (How often the probe recognises 4 samples of a 200-step model is chance; that the classes are drawn is
    # test_a_tiny_conditional_model_draws_dark_or_bright_as_asked's.)
    assert len(out.splitlines()) == 3 and "guidance 2 |" in out and "(real test images 1.0000)" in out
    assert (run / "fid_vs_guidance.png").is_file()
    assert list((tmp_path / "cache" / "probe").glob("probe-*.npz"))  # the probe's features, cached
    code, out, err = cli("plot", run, "--guidance", "--output", tmp_path / "sweep.png")
    assert code == 0, err
    assert out.splitlines()[0].startswith("s = 0: FID ") and (tmp_path / "sweep.png").is_file()
