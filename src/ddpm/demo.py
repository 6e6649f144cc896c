"""A local web demo of trained models (Gradio): watch the reverse process denoise, and the forward process noise.

Two tabs over the models given (by default the model files in ``./models``):

* **Generate**: class, guidance scale, sampler, steps, seed and number of images; x_t and the model's x0-hat are
  streamed every few steps while the sampler runs, then the grid. "Guidance strip" draws one seed at scales
  0 ... 8. The same action is the HTTP endpoint ``/generate`` (``gradio_client``: ``Client(url).predict(class_name,
  guidance_scale, steps, seed, api_name="/generate")``), which samples the first model with its recommended sampler.
* **Forward**: a CIFAR-10 test image (from ``--data-dir``, else the ten bundled with the package) or an upload,
  noised to x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4) at the t of a slider, beside the model's x0-hat and
  its eps-hat against the true eps, with abar_t and the SNR printed.

The work is done by the plain functions below (:class:`DemoModels`, :func:`sample_frames`, :func:`forward_view`),
so that they are tested without a browser; :func:`build_app` only lays them out. Bad input raises
:class:`ddpm.errors.ConfigError`, which the page shows as a message while the server goes on serving.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ddpm.errors import ConfigError
from ddpm.figures.common import tile
from ddpm.guidance import check_guidance
from ddpm.generate import grid_columns, to_uint8
from ddpm.model_io import LoadedModel, load_model
from ddpm.samplers import SAMPLERS, default_steps, randn
from ddpm.schedules import split_prediction
from ddpm.spacing import SPACINGS

BUNDLED_IMAGES = Path(__file__).parent / "demo_images"  # CIFAR-10 test images, the first of each class
MAX_IMAGES = 16
MAX_STEPS = 1000
STRIP_SCALES = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
ZOOM = 4  # 32x32 images shown at 128x128, nearest neighbour


def enlarge(image: np.ndarray, zoom: int = ZOOM) -> np.ndarray:
    """A uint8 (H, W, C) image repeated ``zoom`` times along both axes, for a crisp view of tiny images."""
    return image.repeat(zoom, axis=0).repeat(zoom, axis=1)


def grid(images: torch.Tensor, columns: int | None = None) -> np.ndarray:
    """A batch in [-1, 1] (N, C, H, W) as one enlarged uint8 grid (:func:`ddpm.figures.common.tile`), about sqrt(N)
    columns."""
    pixels = to_uint8(images).numpy()
    if pixels.shape[-1] == 1:
        pixels = pixels.repeat(3, axis=-1)
    columns = columns or grid_columns(len(pixels))
    return enlarge(tile([pixels[i:i + columns] for i in range(0, len(pixels), columns)]))


@dataclass
class DemoModels:
    """The models of the demo by name (their file names), loaded once."""

    models: dict[str, LoadedModel]

    @classmethod
    def load(cls, sources: list[str | Path], device: str = "cpu") -> "DemoModels":
        if not sources:
            raise ConfigError("no models given and no .safetensors files in ./models; pass MODEL paths")
        return cls({Path(s).name: load_model(s, device) for s in sources})

    def get(self, name: str) -> LoadedModel:
        if name not in self.models:
            raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(self.models)}")
        return self.models[name]


def class_label(loaded: LoadedModel, class_name: str | None) -> int | None:
    """The label of ``class_name`` for a conditional model ("" or None: none, "no class"), after refusing a class
    for an unconditional model and a name the model does not know."""
    names = loaded.config.model.class_names
    if not class_name:
        return None
    if not loaded.config.model.class_cond:
        raise ConfigError(f"{loaded.source.name} is not class-conditional; leave the class empty")
    if class_name not in names:
        raise ConfigError(f"unknown class {class_name!r}; choose one of {', '.join(names)}")
    return names.index(class_name)


def check_sampling(loaded: LoadedModel, sampler: str, steps: int, spacing: str, count: int) -> None:
    """Refuse what the sampler cannot do before it starts, with the range that is allowed."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if spacing not in SPACINGS:
        raise ConfigError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    most = min(MAX_STEPS, loaded.diffusion.timesteps - (0 if SAMPLERS[sampler].call_at_zero else 1))
    if not (float(steps).is_integer() and 1 <= steps <= most):
        raise ConfigError(f"steps must be a whole number from 1 to {most} for {sampler}, got {steps}")
    if not (float(count).is_integer() and 1 <= count <= MAX_IMAGES):
        raise ConfigError(f"the number of images must be from 1 to {MAX_IMAGES}, got {count}")


def sample_frames(loaded: LoadedModel, label: int | None, guidance_scale: float, sampling: tuple[str, int, str],
                  seed: int, count: int, frames: int = 10) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, bool]]:
    """Draw ``count`` images (image i: seed + i, as ``ddpm sample`` draws it) with ``sampling`` = (sampler, steps,
    spacing) and yield (t, x_t, x0-hat, done) about ``frames`` times while the sampler runs, then the samples with
    done = True.

    The sampler runs in a thread and hands its states over through a queue, so that a caller (the page) can show
    them while the next steps are computed.
    """
    sampler, steps, spacing = sampling
    check_sampling(loaded, sampler, steps, spacing, count)
    steps, count = int(steps), int(count)
    labels = None if label is None else torch.full((count,), label, dtype=torch.long)
    check_guidance(loaded.model, labels, guidance_scale)
    if label is None and loaded.config.model.class_cond and guidance_scale not in (0.0, 1.0):
        raise ConfigError("guidance needs a class; pick one, or set the scale to 1")
    c, r = loaded.config.model.in_channels, loaded.config.model.resolution
    generators = [torch.Generator().manual_seed(int(seed) + i) for i in range(count)]
    every = max(1, steps // frames)
    states: queue.Queue = queue.Queue()

    def callback(i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if (i + 1) % every == 0 and i + 1 < steps:
            states.put((t, x.detach().clone(), x0.detach().clone(), False))

    def run() -> None:
        try:
            with torch.no_grad():
                x = loaded.diffusion.sample(loaded.model, (count, c, r, r), sampler=sampler, steps=steps,
                                            generator=generators, labels=labels, guidance_scale=guidance_scale,
                                            spacing=spacing, callback=callback)
            states.put((-1, x, x, True))
        except Exception as exc:  # handed to the caller's thread, which raises it
            states.put(exc)

    threading.Thread(target=run, daemon=True).start()
    while True:
        item = states.get()
        if isinstance(item, Exception):
            raise item
        yield item
        if item[3]:
            return


def read_image(path: str | Path, resolution: int) -> np.ndarray:
    """An uploaded file as uint8 (H, W, 3), after refusing what is not an image or not ``resolution`` square."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError):
        raise ConfigError(f"{Path(path).name} is not an image the demo can read (PNG, JPEG, ...)") from None
    if pixels.shape[:2] != (resolution, resolution):
        raise ConfigError(f"the model works on {resolution}x{resolution} images; this one is "
                          f"{pixels.shape[1]}x{pixels.shape[0]}")
    return pixels


def example_images(data_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """The forward tab's choices: the first test image of each class of a CIFAR-10 folder (``data_dir/test/NAME``),
    else the ten bundled with the package."""
    folder = Path(data_dir) / "test" if data_dir else BUNDLED_IMAGES
    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        first = path if path.is_file() else next(iter(sorted(p for p in path.iterdir() if p.is_file())), None)
        if first is not None:
            try:
                with Image.open(first) as image:
                    found[path.stem] = np.asarray(image.convert("RGB"))
            except (UnidentifiedImageError, OSError):
                continue
    if not found:
        raise ConfigError(f"no images in {folder}; --data-dir takes a CIFAR-10 folder with test/CLASS/*.png")
    return found


@dataclass
class ForwardView:
    """What the forward tab shows at one t: x_t, x0-hat, eps-hat and eps as uint8 images, and the numbers."""

    x_t: np.ndarray
    x0_hat: np.ndarray
    eps_hat: np.ndarray
    eps: np.ndarray
    alpha_bar: float
    snr: float
    eps_mse: float

    def caption(self, t: int) -> str:
        return (f"t = {t + 1} (paper's count): alpha-bar_t = {self.alpha_bar:.4g}, SNR = alpha-bar / (1 - alpha-bar) = "
                f"{self.snr:.4g}; mean squared error of eps-hat against eps = {self.eps_mse:.4f}")


@torch.no_grad()
def forward_view(loaded: LoadedModel, image: np.ndarray, t: int, seed: int = 0) -> ForwardView:
    """x_t of ``image`` (uint8 (H, W, 3)) at timestep ``t`` (0-based) with eps from ``seed``, and the model's
    x0-hat and eps-hat there (a conditional model as its unconditional self, "no class")."""
    T = loaded.diffusion.timesteps
    if not (float(t).is_integer() and 0 <= t < T):
        raise ConfigError(f"t must be a whole number from 0 to {T - 1}, got {t}")
    t = int(t)
    x0 = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    if loaded.config.model.in_channels == 1:
        x0 = x0.mean(1, keepdim=True)
    eps = randn(x0.shape, torch.Generator().manual_seed(int(seed)), "cpu")
    steps = torch.tensor([t])
    alpha, sigma = loaded.diffusion.alpha_sigma(steps, x0)
    x_t = alpha * x0 + sigma * eps
    k = loaded.model.num_classes
    output = loaded.model(x_t, steps) if k is None else loaded.model(x_t, steps, torch.tensor([k]))
    eps_hat, x0_hat = split_prediction(output.float(), x_t, alpha, sigma, loaded.diffusion.prediction)
    abar = float(loaded.diffusion.alphas_cumprod[t])

    def show(x: torch.Tensor, scale: float = 1.0) -> np.ndarray:
        return grid((x / scale).clamp(-1, 1), 1)

    return ForwardView(show(x_t), show(x0_hat), show(eps_hat, 3.0), show(eps, 3.0), abar, abar / (1 - abar),
                       float((eps_hat - eps).square().mean()))


# ------------------------------------------------------------------------------------------------ the page
def recommended(loaded: LoadedModel) -> tuple[str, int, str]:
    """The model file's recommended (sampler, steps, spacing), the steps filled in with the sampler's default."""
    sampler, steps, spacing = loaded.config.diffusion.sampling(None, None, None)
    return sampler, steps or min(default_steps(sampler, loaded.diffusion.timesteps), MAX_STEPS), spacing


class Actions:
    """What the page's buttons and sliders do, on ``models`` and the forward tab's ``examples``; each returns (or
    yields) the values of the page's outputs and raises ConfigError for bad input."""

    def __init__(self, models: DemoModels, examples: dict[str, np.ndarray]):
        self.models, self.examples = models, examples
        self.first = models.get(next(iter(models.models)))

    def model_settings(self, name: str):
        import gradio as gr

        loaded = self.models.get(name)
        m = loaded.config.model
        sampler, steps, spacing = recommended(loaded)
        classes = list(m.class_names)
        return (gr.update(choices=[""] + classes, value=classes[0] if classes else ""),
                gr.update(value=m.guidance_scale, interactive=m.class_cond), gr.update(value=sampler),
                gr.update(value=steps), gr.update(value=spacing), gr.update(maximum=loaded.diffusion.timesteps - 1))

    def generate(self, name, class_name, scale, sampler, steps, spacing, seed, count):
        import gradio as gr

        loaded = self.models.get(name)
        label = class_label(loaded, class_name)
        for t, x, x0, done in sample_frames(loaded, label, float(scale), (sampler, steps, spacing), seed, count):
            if done:
                yield grid(x), grid(x), grid(x0), f"done: {int(count)} images, {sampler}, {int(steps)} steps"
            else:
                yield gr.update(), grid(x), grid(x0), f"sampling: t = {t + 1}"

    def strip(self, name, class_name, sampler, steps, spacing, seed):
        loaded = self.models.get(name)
        label = class_label(loaded, class_name)
        if label is None:
            raise ConfigError("the guidance strip needs a class-conditional model and a class")
        return [(grid(self._one(loaded, label, s, (sampler, steps, spacing), seed)), f"s = {s:g}")
                for s in STRIP_SCALES]

    def api_generate(self, class_name, guidance_scale, steps, seed):
        """The ``/generate`` endpoint: one image of the first model with its recommended sampler, as uint8 HWC."""
        sampler, default, spacing = recommended(self.first)
        sampling = (sampler, steps or default, spacing)
        x = self._one(self.first, class_label(self.first, class_name), float(guidance_scale), sampling, seed)
        return to_uint8(x).numpy()[0]

    @staticmethod
    def _one(loaded, label, scale, sampling, seed) -> torch.Tensor:
        """The one image of ``seed``, in [-1, 1]."""
        *_, (_, x, _, _) = sample_frames(loaded, label, scale, sampling, seed, 1)
        return x

    def forward(self, name, example, upload, t, seed):
        loaded = self.models.get(name)
        if upload:
            image = read_image(upload, loaded.config.model.resolution)
        elif example in self.examples:
            image = self.examples[example]
        else:
            raise ConfigError(f"unknown example {example!r}; choose one of {', '.join(self.examples)}")
        view = forward_view(loaded, image, t, seed)
        return enlarge(image), view.x_t, view.x0_hat, view.eps_hat, view.eps, view.caption(int(t))


def _shown(fn):
    """``fn`` with a ConfigError shown in the page as a message (the server keeps serving)."""
    import gradio as gr

    def wrapped(*args):
        try:
            result = fn(*args)
            if hasattr(result, "__next__"):
                yield from result
            else:
                yield result
        except ConfigError as exc:
            raise gr.Error(str(exc)) from None

    wrapped.__name__ = fn.__name__
    return wrapped


def _generate_tab(gr, first: LoadedModel) -> dict:
    """The Generate tab's components by name."""
    sampler, steps, spacing = recommended(first)
    classes = list(first.config.model.class_names)
    c: dict = {}
    with gr.Row():
        c["class_name"] = gr.Dropdown([""] + classes, value=classes[7] if len(classes) > 7 else "", label="class",
                                      allow_custom_value=True)
        c["scale"] = gr.Slider(0, 8, value=first.config.model.guidance_scale, step=0.5, label="guidance scale",
                               interactive=first.config.model.class_cond)
        c["sampler"] = gr.Dropdown(list(SAMPLERS), value=sampler, label="sampler")
        c["spacing"] = gr.Dropdown(list(SPACINGS), value=spacing, label="step spacing")
    with gr.Row():
        c["steps"] = gr.Number(steps, precision=0, label=f"steps (1 to {MAX_STEPS})")
        c["seed"] = gr.Number(0, precision=0, label="seed (image i: seed + i)")
        c["count"] = gr.Slider(1, MAX_IMAGES, value=MAX_IMAGES, step=1, label="images")
    with gr.Row():
        c["go"] = gr.Button("Generate", variant="primary", elem_id="generate")
        c["strip_button"] = gr.Button("Guidance strip: this seed at scales 0 to 8", elem_id="strip")
    c["status"] = gr.Markdown(elem_id="status")
    with gr.Row():
        c["result"] = gr.Image(label="samples", elem_id="samples", format="png")
        c["x_t"] = gr.Image(label="x_t", elem_id="x_t", format="png")
        c["x0_hat"] = gr.Image(label="x0-hat, the model's guess of the image", elem_id="x0_hat", format="png")
    c["gallery"] = gr.Gallery(label="guidance strip", columns=len(STRIP_SCALES), elem_id="strip_gallery")
    return c


def _forward_tab(gr, first: LoadedModel, examples: dict[str, np.ndarray]) -> tuple[list, list]:
    """The Forward tab: its inputs (after the model) and its outputs, in :meth:`Actions.forward`'s order."""
    side, T = first.config.model.resolution, first.diffusion.timesteps
    with gr.Row():
        example = gr.Dropdown(list(examples), value=next(iter(examples)), label="test image")
        upload = gr.File(label=f"or upload a {side}x{side} image", type="filepath")
        t = gr.Slider(0, T - 1, value=T // 2, step=1, label="t (0-based)", elem_id="t_slider")
        noise_seed = gr.Number(0, precision=0, label="seed of eps")
    caption = gr.Markdown(elem_id="caption")
    with gr.Row():
        images = [gr.Image(label="x_0", format="png"), gr.Image(label="x_t", elem_id="forward_xt", format="png"),
                  gr.Image(label="x0-hat", format="png"), gr.Image(label="eps-hat / 3", format="png"),
                  gr.Image(label="eps / 3", format="png")]
    return [example, upload, t, noise_seed], [*images, caption]


def build_app(models: DemoModels, examples: dict[str, np.ndarray]):
    """The Gradio page over ``models`` (see the module docstring); ``examples`` are the forward tab's images."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    actions = Actions(models, examples)
    with gr.Blocks(title="ddpm demo") as app:
        gr.Markdown("# ddpm: watch a diffusion model denoise\nGenerate draws images with the reverse process; "
                    "Forward noises a real image with q(x_t | x_0) and shows what the model makes of it.")
        model = gr.Dropdown(list(models.models), value=next(iter(models.models)), label="model")
        with gr.Tab("Generate"):
            g = _generate_tab(gr, actions.first)
        with gr.Tab("Forward"):
            forward_inputs, forward_outputs = _forward_tab(gr, actions.first, examples)
        with gr.Row(visible=False):  # the API endpoint: hidden inputs, one image out
            api_inputs = [gr.Textbox(label="class_name"), gr.Number(label="guidance_scale"),
                          gr.Number(label="steps", precision=0), gr.Number(label="seed", precision=0)]
            api_button, api_image = gr.Button(), gr.Image(format="png")

        settings = [g["class_name"], g["scale"], g["sampler"], g["steps"], g["spacing"], forward_inputs[2]]
        model.change(_shown(actions.model_settings), model, settings, api_visibility="private")
        g["go"].click(_shown(actions.generate), [model, *(g[k] for k in ("class_name", "scale", "sampler", "steps",
                                                                          "spacing", "seed", "count"))],
                      [g["result"], g["x_t"], g["x0_hat"], g["status"]], api_name="generate_stream")
        g["strip_button"].click(_shown(actions.strip), [model, *(g[k] for k in ("class_name", "sampler", "steps",
                                                                                "spacing", "seed"))],
                                g["gallery"], api_name="guidance_strip")
        api_button.click(_shown(actions.api_generate), api_inputs, api_image, api_name="generate")
        example, upload, t, noise_seed = forward_inputs
        for trigger in (t.change, example.change, upload.change, noise_seed.change, model.change, app.load):
            trigger(_shown(actions.forward), [model, *forward_inputs], forward_outputs, api_visibility="private",
                    trigger_mode="always_last")
    return app


def serve(app, host: str, port: int, share: bool, log=print) -> int:
    """Serve ``app`` until SIGINT or SIGTERM, then close it and return 0."""
    import signal

    try:
        app.queue().launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc}); pass another --port") from None
    log(f"ddpm demo: serving on http://{host}:{port} (Ctrl-C or SIGTERM stops it)", flush=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *args: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.2):
            pass
    finally:
        app.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log("ddpm demo: stopped", flush=True)
    return 0
