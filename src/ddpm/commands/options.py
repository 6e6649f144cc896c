"""What the sub-commands share: the help formatter, flags generated from the config dataclasses (so flags, help
texts and defaults never drift) and the flags of several commands."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from ddpm.config import SECTIONS, DiffusionConfig, flag_name
from ddpm.presets import PRESETS
from ddpm.samplers import SAMPLERS, sampler_help
from ddpm.spacing import SPACINGS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default and keeps the descriptions' line breaks."""


# What every command that loads a model accepts (:func:`ddpm.model_io.load_model`).
MODEL_SOURCES = "run directory (its newest checkpoint), checkpoint .pt, exported .safetensors or diffusers folder"


def positive_int(text: str) -> int:
    """argparse type of counts (images, batch sizes): an integer >= 1, else argparse's one-line usage error."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_image_source(parser: argparse.ArgumentParser, num_images: int | None, num_help: str) -> None:
    """--data-dir, --split and --num-images (default ``num_images``) of the commands that read real images."""
    parser.add_argument("--data-dir", default=None, metavar="PATH",
                        help="images: a folder, a .zip/.tar(.gz) of images, or CIFAR-10 pickles (see --split); None: "
                             "CIFAR-10 in ./data (downloaded if absent)")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="CIFAR-10 split; for a folder or archive, only files below a folder of this name when "
                             "there are any (e.g. test/ of the CIFAR-10 JPEG archive), else all files")
    parser.add_argument("--num-images", type=positive_int, default=num_images, metavar="N",
                        help=f"{num_help}, spread evenly over the source in sorted order")


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    """``--compile`` for the commands that sample (training's own flag comes from :class:`ddpm.config.TrainConfig`)."""
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network before sampling: pays off over many batches on a GPU, costs "
                             "a minute of compilation; images equal the uncompiled ones up to float rounding")


def add_variance_argument(parser: argparse.ArgumentParser) -> None:
    """``--variance`` for the commands that sample or score a trained model: the reverse-process variance is not learnt
    (Ho et al. 2020, sec. 3.2), so either can be used with any model; the choices are the training flag's."""
    variance = next(f for f in dataclasses.fields(DiffusionConfig) if f.name == "variance")
    parser.add_argument("--variance", choices=variance.metadata["choices"], default=None,
                        help=f"{variance.metadata['help']}; None: the one the model was trained with. Only ancestral "
                             "sampling (--sampler ddpm) and the bound use it")


def add_sampler_arguments(parser: argparse.ArgumentParser, default: str | None = None, fallback: str = "ddpm") -> None:
    """``--sampler`` and ``--time-spacing``, their choices and help from the registries (:data:`ddpm.samplers.SAMPLERS`,
    :data:`ddpm.spacing.SPACINGS`); None defaults mean the model file's recommendation
    (:meth:`ddpm.config.DiffusionConfig.sampling`)."""
    recommended = f"default: the model file's recommended sampler ({fallback} where it records none)"
    parser.add_argument("--sampler", choices=SAMPLERS, default=default, metavar="{" + ",".join(SAMPLERS) + "}",
                        help=sampler_help() + ("" if default else "; " + recommended))
    parser.add_argument("--time-spacing", choices=SPACINGS, default=None,
                        help="where the steps go: even in t (uniform), in t squared (quadratic), in log-SNR (logsnr), "
                             "Karras et al.'s rho = 7 (karras), or even from T - 1 to T/N - 1 (trailing, a distilled "
                             "student's); default: the file's recommendation with its sampler, else uniform")


def add_amp_argument(parser: argparse.ArgumentParser) -> None:
    """``--amp`` for the commands that sample (training's own flag comes from :class:`ddpm.config.TrainConfig`)."""
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="run the network under autocast: bfloat16 where the device computes it, float16 on older "
                             "GPUs and MPS, off on CPUs without bfloat16 instructions; the sampler's arithmetic stays "
                             "float32 and images differ from float32 ones by a few levels of 255. Default: on for CPUs "
                             "with bfloat16 instructions (1.9x the images/s, the same FID), off elsewhere (on an H100 "
                             "it pays off with --compile only; docs/benchmarks.md)")


def _base_type(hint: Any) -> type:
    """int for ``int``, ``tuple[int, ...]`` and ``int | None``; likewise for the other scalar types."""
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    return _base_type(args[0]) if args else hint


def _argparse_type(convert):
    """``convert`` with its ValueError shown as argparse's one-line usage error, message and all."""
    if convert in (int, float, str):
        return convert

    def parse(text: str):
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = convert.__name__
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, sections: dict[str, type] = SECTIONS,
                         only: dict[str, tuple[str, ...]] | None = None,
                         defaults: dict[str, str] | None = None) -> None:
    """One flag per field of the config ``sections`` (those named in ``only``, where it names the section).
    Defaults are suppressed so that only explicitly given flags override the preset; the help shows the field
    default, which is the ``seed`` preset's value, or the words ``defaults[section]`` give instead."""
    for section, cls in sections.items():
        group = parser.add_argument_group(f"{section} options")
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if not field.metadata["cli"] or (only and section in only and field.name not in only[section]):
                continue
            kind = _base_type(hints[field.name])
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            note = (defaults or {}).get(section, "{shown}; presets may change it").format(shown=shown)
            help_text = f"{field.metadata['help']} (default: {note})"
            kwargs: dict[str, Any] = dict(dest=f"{section}.{field.name}", default=argparse.SUPPRESS, help=help_text)
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs.update(type=_argparse_type(field.metadata.get("type", kind)),
                              metavar=field.metadata.get("metavar", field.name.upper()))
                if field.metadata.get("choices"):
                    kwargs.update(choices=field.metadata["choices"], metavar="{" + ",".join(field.metadata["choices"]) + "}")
                if field.metadata.get("nargs"):
                    kwargs["nargs"] = field.metadata["nargs"]
            group.add_argument(flag_name(field), **kwargs)


def add_preset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=tuple(PRESETS), default=argparse.SUPPRESS,
                        help="starting configuration that explicit flags override: 'seed' (the original network), "
                             "'ho2020' (Ho et al.'s 35.7M CIFAR-10 network and recipe), 'cpu' (the CPU recipe: 1.4M "
                             "parameters, the best samples per CPU-hour measured), 'tiny' (CPU smoke runs) "
                             "(default: seed)")


def overrides_from_args(args: argparse.Namespace, sections: dict[str, type] = SECTIONS) -> dict[str, dict[str, Any]]:
    """The explicitly given config flags as {section: {field: value}}."""
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        section, _, name = key.partition(".")
        if section in sections and name:
            overrides.setdefault(section, {})[name] = tuple(value) if isinstance(value, list) else value
    return overrides


# ------------------------------------------------------------------------------- classes and guidance
def guidance_scale(text: str) -> float:
    """argparse type of a classifier-free guidance scale: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0: unconditional, 1: conditional), got "
                                         f"{text}")
    return value


def guidance_scales(text: str) -> list[float]:
    """``"0,1,1.5"`` -> [0.0, 1.0, 1.5]: scales >= 0, without repeats, in the given order."""
    scales = [guidance_scale(part) for part in text.split(",")]
    if len(set(scales)) != len(scales):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a scale")
    return scales


GUIDANCE_HELP = ("classifier-free guidance scale s of a class-conditional model, eps(x, no class) + s (eps(x, class) "
                 "- eps(x, no class)): 1 is the plain conditional model, 0 the unconditional one, more draws more "
                 "recognisable and less varied images (Ho & Salimans' w = s - 1); default: the model file's "
                 "recommended scale")


def add_class_argument(parser: argparse.ArgumentParser) -> None:
    """``--class`` for the commands that sample a class-conditional model."""
    parser.add_argument("--class", dest="classes", default=None, metavar="NAME[,NAME...]",
                        help="class-conditional models: the class of every image, by name or index; a list cycles "
                             "(image i gets the (i mod n)-th); default: image i of class i mod K (class-balanced)")


def conditioning(loaded, classes: str | None, scales) -> list[int] | None:
    """The class indices ``--class`` names for a loaded model (None without --class), after refusing --class or
    --guidance-scale (``scales``: None, a number or a list) on a model that is not class-conditional."""
    from ddpm.errors import ConfigError

    m = loaded.config.model
    if not m.class_cond:
        given = "--class" if classes is not None else "--guidance-scale" if scales is not None else None
        if given:
            raise ConfigError(f"{loaded.source} is not class-conditional, so {given} does not apply (train a model "
                              "with --class-cond)")
        return None
    if classes is None:
        return None
    return [class_index(part.strip(), m.class_names) for part in classes.split(",")]


def class_index(name: str, class_names: tuple[str, ...]) -> int:
    """The index of a class given by name or by number, else a one-line error listing the choices."""
    from ddpm.errors import ConfigError

    if name in class_names:
        return class_names.index(name)
    if name.isdigit() and int(name) < len(class_names):
        return int(name)
    raise ConfigError(f"unknown class {name!r}; choose one of {', '.join(class_names)} (or an index 0 to "
                      f"{len(class_names) - 1})")
