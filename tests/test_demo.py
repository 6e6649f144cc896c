"""``ddpm demo`` (:mod:`ddpm.demo`): its functions on a small model in the default set; the page itself, served by
the real console script, driven in Debian's headless Chromium through Playwright, and its ``/generate`` endpoint
through ``gradio_client``, in the slow set (CI installs chromium, gradio and playwright; see .ci/run)."""

from __future__ import annotations

import importlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_model_file
from ddpm.demo import (
    BUNDLED_IMAGES, DemoModels, class_label, example_images, forward_view, read_image, sample_frames,
)
from ddpm.errors import ConfigError
from ddpm.model_io import load_model

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "ddpm-cifar10-cpu.safetensors"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture
def conditional(tmp_path):
    """The mini network, class-conditional, 8x8 images, 20 cosine steps."""
    path = write_model_file(tmp_path / "cond.safetensors", diffusion={"timesteps": 20, "schedule": "cosine"},
                            model={"class_cond": True, "class_names": CLASSES, "guidance_scale": 2.0})
    return load_model(path)


def test_frames_stream_then_the_samples_equal_ddpm_sample(conditional):
    """About ``frames`` intermediate states, then the final images, which are the images the sampler draws for
    these seeds (image i: seed + i) and this class at this scale."""
    frames = list(sample_frames(conditional, 7, 2.0, ("ddim", 10, "uniform"), 5, 3, frames=5))
    assert [done for *_, done in frames] == [False] * 4 + [True]
    ts = [t for t, *_ in frames[:-1]]
    assert ts == sorted(ts, reverse=True)
    expected = conditional.diffusion.sample(
        conditional.model, (3, 3, 8, 8), "ddim", 10, generator=[torch.Generator().manual_seed(5 + i) for i in range(3)],
        labels=torch.tensor([7, 7, 7]), guidance_scale=2.0)
    torch.testing.assert_close(frames[-1][1], expected, rtol=0, atol=0)


@pytest.mark.parametrize("args, message", [
    ((7, 2.0, ("ddim", 0, "uniform"), 0, 1), "steps must be a whole number from 1 to 20"),
    ((7, 2.0, ("ddim", 21, "uniform"), 0, 1), "from 1 to 20"),
    ((7, 2.0, ("ddim", 4, "uniform"), 0, 17), "number of images must be from 1 to 16"),
    ((7, 2.0, ("euler", 4, "uniform"), 0, 1), "unknown sampler"),
    ((None, 3.0, ("ddim", 4, "uniform"), 0, 1), "guidance needs a class"),
    ((7, -1.0, ("ddim", 4, "uniform"), 0, 1), "finite number >= 0"),
])
def test_bad_sampling_settings_are_refused(conditional, args, message):
    with pytest.raises(ConfigError, match=message):
        next(sample_frames(conditional, *args))


def test_classes_and_images(conditional, tmp_path):
    assert class_label(conditional, "horse") == 7 and class_label(conditional, "") is None
    with pytest.raises(ConfigError, match="unknown class 'unicorn'; choose one of airplane"):
        class_label(conditional, "unicorn")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ConfigError, match="notes.png is not an image"):
        read_image(text, 8)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((16, 12, 3), np.uint8)).save(big)
    with pytest.raises(ConfigError, match="works on 8x8 images; this one is 12x16"):
        read_image(big, 8)
    bundled = example_images()
    assert sorted(bundled) == sorted(CLASSES) and all(a.shape == (32, 32, 3) for a in bundled.values())
    assert {p.stem for p in BUNDLED_IMAGES.glob("*.png")} == set(CLASSES)
    with pytest.raises(ConfigError, match="no models given"):
        DemoModels.load([])


def test_forward_view_is_eq_4_and_the_model_s_guess(conditional):
    """x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps with the seed's eps, abar and SNR of the schedule, and eps-hat's error
    that of the network at (x_t, t, no class)."""
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    view = forward_view(conditional, image, 12, seed=3)
    abar = float(conditional.diffusion.alphas_cumprod[12])
    assert view.alpha_bar == pytest.approx(abar) and view.snr == pytest.approx(abar / (1 - abar))
    x0 = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    x_t = abar ** 0.5 * x0 + (1 - abar) ** 0.5 * eps
    shown = ((x_t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(view.x_t[4:36:4, 4:36:4], shown)  # one image framed by a pixel, all enlarged 4x
    with torch.no_grad():
        out = conditional.model(x_t, torch.tensor([12]), torch.tensor([10]))
    eps_hat = (x_t - abar ** 0.5 * out) / (1 - abar) ** 0.5 if conditional.diffusion.prediction == "x0" else out
    assert view.eps_mse == pytest.approx(float((eps_hat - eps).square().mean()), rel=1e-5)
    with pytest.raises(ConfigError, match="t must be a whole number from 0 to 19"):
        forward_view(conditional, image, 20)


# ------------------------------------------------------------------------------------------------ in a browser
CHROMIUM = shutil.which("chromium")
STRICT = bool(os.environ.get("DDPM_REQUIRE_BROWSER"))  # .ci/run sets it: there a missing piece fails, not skips


def need(module: str):
    """``module``, or a skip where it is not installed (``pip install -e ".[demo]" playwright``), except in CI."""
    return importlib.import_module(module) if STRICT else pytest.importorskip(module)
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    """``ddpm demo`` (the console script) on the shipped conditional model on a free port: (url, process)."""
    need("gradio")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    process = subprocess.Popen([Path(sys.executable).parent / "ddpm", "demo", SHIPPED, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    line = process.stdout.readline()
    assert "serving on" in line, line + process.stdout.read()
    yield f"http://127.0.0.1:{port}/", process
    if process.poll() is None:
        process.kill()


def not_blank(png: bytes) -> float:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    return pixels.std()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and not STRICT,
                    reason="Debian's chromium is not installed (apt install chromium); CI installs it")
def test_the_page_in_a_real_browser(served):
    """Generate, change the class, move t, send a bad class (the page says so and keeps working), then SIGTERM."""
    playwright = need("playwright.sync_api")
    url, process = served
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        page = browser.new_page()
        page.goto(url)

        def generate(previous: str | None = None) -> tuple[str, bytes]:
            """Click Generate and wait for a new grid (the samples image changes only when sampling is done)."""
            page.click("#generate")
            page.wait_for_function("s => { const i = document.querySelector('#samples img'); return i && i.src != s; }",
                                   arg=previous, timeout=120_000)
            image = page.locator("#samples img")
            shot = image.screenshot()
            assert not_blank(shot) > 20  # a grid of pictures, not a flat colour
            return image.get_attribute("src"), shot

        def set_class(name: str) -> None:
            box = page.get_by_label("class", exact=True)
            box.click()
            box.fill(name)
            box.press("Enter")

        horses, horse_pixels = generate()
        assert "done: 16 images" in page.locator("#status").inner_text()
        set_class("ship")
        ships, ship_pixels = generate(horses)
        assert ship_pixels != horse_pixels  # the same seeds, another class: other pictures
        set_class("unicorn")
        page.click("#generate")
        page.get_by_text("unknown class 'unicorn'").first.wait_for(timeout=30_000)
        set_class("cat")
        generate(ships)  # the page still works

        page.get_by_role("tab", name="Forward").click()
        x_t = page.locator("#forward_xt img")
        x_t.wait_for(timeout=30_000)
        before = x_t.get_attribute("src")
        t = page.locator("#t_slider input[type=number]")
        t.fill("100")
        t.press("Enter")
        page.wait_for_function("s => document.querySelector('#forward_xt img').src != s", arg=before, timeout=30_000)
        assert "t = 101" in page.locator("#caption").inner_text()
        browser.close()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "stopped" in process.stdout.read()


@pytest.mark.slow
def test_generate_endpoint_with_gradio_client(served, tmp_path):
    """``/generate`` returns the image ``ddpm sample --class horse --no-amp`` draws for that seed, and a bad class
    gets the error message."""
    from gradio_client import Client

    url, process = served
    client = Client(url, verbose=False)
    path = client.predict("horse", 2.0, 8, 3, api_name="/generate")
    image = np.asarray(Image.open(path).convert("RGB"))
    from ddpm.cli import main

    assert main(["sample", "--load-model", str(SHIPPED), "--class", "horse", "--guidance-scale", "2",
                 "--sampling-steps", "8", "--seed", "3", "--num-samples", "1", "--no-amp", "--npz",
                 str(tmp_path / "h.npz"), "--output", str(tmp_path / "h.png")]) == 0
    assert np.array_equal(image, np.load(tmp_path / "h.npz")["arr_0"][0])
    with pytest.raises(Exception, match="unknown class 'unicorn'"):
        client.predict("unicorn", 2.0, 8, 0, api_name="/generate")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_without_gradio_the_command_says_how_to_install_it(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` meets where the extra is not installed
    code, _, err = cli("demo")
    assert code == 2 and err.strip() == 'ddpm demo: error: ddpm demo needs gradio: pip install -e ".[demo]"'
