"""``ddpm demo``: a local web page (Gradio) that samples trained models while you watch, and noises real images;
see :mod:`ddpm.demo`. Needs the ``demo`` extra: ``pip install -e ".[demo]"``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm.commands.options import MODEL_SOURCES, HelpFormatter, positive_int

EXAMPLE = """examples:
  ddpm demo                                             # the models in ./models, on http://127.0.0.1:7860
  ddpm demo runs/student models/ddpm-cifar10-cpu.safetensors --port 8080 --data-dir cifar10-jpeg"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="a local web demo: watch a model denoise", epilog=EXAMPLE,
                                   description=__doc__.split("; see")[0] + ".", formatter_class=HelpFormatter)
    parser.add_argument("models", metavar="MODEL", nargs="*",
                        help=f"models to show, the first by default ({MODEL_SOURCES}); none: ./models/*.safetensors")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 opens the demo to the network")
    parser.add_argument("--port", type=positive_int, default=7860, help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    parser.add_argument("--data-dir", default=None, metavar="PATH",
                        help="a CIFAR-10 folder with test/CLASS/ images for the forward tab; default: the ten test "
                             "images bundled with the package")
    parser.add_argument("--device", choices=("cpu", "cuda", "mps", "auto"), default="cpu", help="device to sample on")
    parser.set_defaults(func=run)


def default_models() -> list[Path]:
    """The model files in ./models, the conditional model first (sorted by name, the shipped ones in their order:
    ddpm-cifar10-cpu, then its distilled student and the eps model)."""
    return sorted(Path("models").glob("*.safetensors"), key=lambda p: (len(p.name), p.name))


def run(args: argparse.Namespace) -> int:
    from ddpm.errors import ConfigError

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError('ddpm demo needs gradio: pip install -e ".[demo]"') from None
    from ddpm.demo import DemoModels, build_app, example_images, serve
    from ddpm.distributed import resolve_device

    models = DemoModels.load(args.models or default_models(), resolve_device(args.device))
    return serve(build_app(models, example_images(args.data_dir)), args.host, args.port, args.share)
