"""The diffusers format, both ways: a ``UNet2DModel`` + ``DDPMScheduler`` folder <-> our UNet and diffusion.

Published DDPMs are shared as diffusers folders: Ho et al.'s own CIFAR-10, CelebA-HQ and LSUN models
(google/ddpm-cifar10-32 and its siblings: ``config.json``, ``diffusion_pytorch_model.safetensors`` or ``.bin`` and
``scheduler_config.json`` in one folder) and the pipeline folders of diffusers' ``train_unconditional.py``
(``model_index.json``, ``unet/``, ``scheduler/``). A ``UNet2DModel`` built from ``DownBlock2D``/``AttnDownBlock2D``
and ``UpBlock2D``/``AttnUpBlock2D`` is our ``skip="block"`` UNet (Ho et al.'s architecture), so this module only
translates names: the configuration (:func:`model_config`, :func:`diffusion_config` and their inverses
:func:`unet_config`, :func:`scheduler_config`) and the weights (:func:`module_pairs`, one explicit table of
which layer is which, as in diffusers' own ``scripts/convert_*_to_diffusers.py``). Whatever our network cannot
express is refused with a one-line error naming the field, never approximated.

diffusers itself is not imported: its files are JSON and safetensors. Keys that a ``config.json`` leaves out take
the defaults of ``UNet2DModel`` and ``DDPMScheduler`` (diffusers 0.42), exactly as diffusers fills them in.
The rest of the project reaches this module through :mod:`ddpm.model_io` (:func:`~ddpm.model_io.load_model`
reads folders with :func:`read_folder`, :func:`~ddpm.model_io.export_diffusers` writes them with
:func:`write_folder`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ddpm.config import DiffusionConfig, ModelConfig, RunConfig, make_config
from ddpm.errors import CheckpointError, OutputError
from ddpm.files import atomic_write, read_safetensors, safetensors_bytes, torch_load_failure
from ddpm.schedules import linear_beta_range

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# The _diffusers_version written into exported configs (diffusers reads it for nothing): the oldest version our
# `[test]` extra allows, as the files use nothing newer.
DIFFUSERS_VERSION = "0.30.0"

# UNet2DModel's defaults (diffusers 0.42), for keys an older config.json does not list.
UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
    "num_train_timesteps": None,
}
# Fields our UNet has no counterpart for: each must hold one of these values.
UNET_FIXED: dict[str, tuple] = {
    "center_input_sample": (False,), "time_embedding_type": ("positional",), "mid_block_type": ("UNetMidBlock2D",),
    "mid_block_scale_factor": (1,), "downsample_type": ("conv",), "upsample_type": ("conv",),
    # diffusers applies SiLU in the timestep embedding and before the output convolution whatever act_fn says,
    # act_fn only in the residual blocks; our --activation is all or nothing.
    "act_fn": ("silu", "swish"), "resnet_time_scale_shift": ("default",), "add_attention": (True,),
    "class_embed_type": (None,),
}
# Where an exported class-conditional UNet2DModel keeps what diffusers has no field for: the class names (its
# num_class_embeds is their count + 1, the last row "no class") and the recommended guidance scale. diffusers drops
# config keys that start with "_" when it builds the model.
CLASS_NAMES_KEY, GUIDANCE_KEY = "_ddpm_class_names", "_ddpm_guidance_scale"
DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}  # block type -> has attention
UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}

# DDPMScheduler's defaults (diffusers 0.42); DDIMScheduler shares those of the training schedule.
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "variance_type": "fixed_small", "prediction_type": "epsilon", "rescale_betas_zero_snr": False,
}
# Options of diffusers' sampling loops, not of the trained model; our samplers have their own flags.
SCHEDULER_SAMPLING_OPTIONS = {
    "clip_sample", "clip_sample_range", "thresholding", "dynamic_thresholding_ratio", "sample_max_value",
    "timestep_spacing", "steps_offset", "set_alpha_to_one",
}
SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}  # diffusers' beta_schedule -> ours
# diffusers' prediction_type -> our --prediction.
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}

# Our module -> diffusers' module inside each residual block; both have a .weight and a .bias.
RESBLOCK = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_proj.1", "time_emb_proj"),
            ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("shortcut", "conv_shortcut"))
# Attention blocks: our one 1x1 convolution `qkv` is diffusers' three linear layers to_q, to_k, to_v stacked.
ATTENTION = (("norm", "group_norm"), ("proj", "to_out.0"))
QKV = ("to_q", "to_k", "to_v")
# Names of the attention layers in diffusers before 0.15, still in some published files (diffusers renames them
# on load, in ModelMixin._convert_deprecated_attention_blocks).
LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def is_diffusers_folder(path: Path) -> bool:
    """A folder in either diffusers layout (our run directories hold neither of these files)."""
    return path.is_dir() and ((path / "model_index.json").is_file() or (path / "unet").is_dir()
                              or any((path / name).is_file() for name in WEIGHTS))


# ---------------------------------------------------------------- configuration


def _refuse(field: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"diffusers field {field}={json.dumps(value)} is not supported: {why}")


def model_config(unet: dict[str, Any]) -> ModelConfig:
    """Our :class:`ModelConfig` of a ``UNet2DModel`` ``config.json``; refuses what our UNet cannot express."""
    if unet.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise _refuse("_class_name", unet["_class_name"], "only UNet2DModel networks load")
    unknown = sorted(k for k in unet if not k.startswith("_") and k not in UNET_DEFAULTS)
    if unknown:
        raise _refuse(unknown[0], unet[unknown[0]], "this field is unknown to ddpm's converter")
    c = {**UNET_DEFAULTS, **unet}
    for field, allowed in UNET_FIXED.items():
        if c[field] not in allowed:
            raise _refuse(field, c[field], f"ddpm's UNet only has {' or '.join(map(json.dumps, allowed))}")
    if c["attn_norm_num_groups"] not in (None, c["norm_num_groups"]):
        raise _refuse("attn_norm_num_groups", c["attn_norm_num_groups"], "ddpm's attention blocks use norm_num_groups")
    if c["in_channels"] != c["out_channels"]:
        raise _refuse("out_channels", c["out_channels"], f"ddpm's UNet predicts in_channels={c['in_channels']}")
    size = c["sample_size"]
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int):
        raise _refuse("sample_size", c["sample_size"], "ddpm's UNet needs one side length of square images")
    channels, down, up = list(c["block_out_channels"]), list(c["down_block_types"]), list(c["up_block_types"])
    nf = channels[0]
    if any(ch % nf for ch in channels):
        raise _refuse("block_out_channels", channels, f"ddpm's UNet has multiples of the first ({nf}) only")
    for field, types, known in (("down_block_types", down, DOWN_BLOCKS), ("up_block_types", up, UP_BLOCKS)):
        if len(types) != len(channels) or any(t not in known for t in types):
            raise _refuse(field, types, f"need one of {', '.join(known)} per entry of block_out_channels")
    if [DOWN_BLOCKS[t] for t in down] != [UP_BLOCKS[t] for t in reversed(up)]:
        raise _refuse("up_block_types", up, "ddpm's UNet has attention at the same resolutions on the way down "
                                            "and up, so up_block_types must mirror down_block_types")
    if c["downsample_padding"] not in (0, 1):
        raise _refuse("downsample_padding", c["downsample_padding"], "ddpm's UNet has 0 (TensorFlow 'SAME') or 1")
    classes: dict[str, Any] = {}
    if c["num_class_embeds"] is not None:
        names = c.get(CLASS_NAMES_KEY)
        if not isinstance(names, list) or len(names) + 1 != c["num_class_embeds"]:
            raise _refuse("num_class_embeds", c["num_class_embeds"], f"a class-conditional UNet2DModel loads when its "
                          f"config lists its classes in {CLASS_NAMES_KEY} and its last class row means 'no class', "
                          "as `ddpm export --format diffusers` writes it")
        classes = dict(class_cond=True, class_names=tuple(map(str, names)),
                       guidance_scale=float(c.get(GUIDANCE_KEY, 1.0)))
    return ModelConfig(
        resolution=size, in_channels=c["in_channels"], nf=nf, ch_mult=tuple(ch // nf for ch in channels),
        num_res_blocks=c["layers_per_block"],
        attn_resolutions=tuple(size // 2**i for i, t in enumerate(down) if DOWN_BLOCKS[t]),
        dropout=float(c["dropout"]), time_emb_dim=c["time_embedding_dim"] or 4 * nf, activation="silu",
        norm_groups=c["norm_num_groups"], skip="block", attention_heads=1,
        attention_head_dim=c["attention_head_dim"] or 0, norm_eps=float(c["norm_eps"]),
        downsample_padding="same" if c["downsample_padding"] == 0 else "symmetric",
        time_cos_first=bool(c["flip_sin_to_cos"]), time_freq_shift=c["freq_shift"], **classes,
    )


def diffusion_config(scheduler: dict[str, Any]) -> DiffusionConfig:
    """Our :class:`DiffusionConfig` of a ``DDPMScheduler`` or ``DDIMScheduler`` ``scheduler_config.json``.

    The beta range and T are taken literally; sampling-loop options (clipping, timestep spacing) are diffusers'
    business and ignored.
    """
    name = scheduler.get("_class_name", "DDPMScheduler")
    if name not in ("DDPMScheduler", "DDIMScheduler"):
        raise _refuse("_class_name", name, "the training schedule is read from DDPMScheduler or DDIMScheduler "
                                           "configs")
    unknown = sorted(k for k in scheduler if not k.startswith("_")
                     and k not in SCHEDULER_DEFAULTS and k not in SCHEDULER_SAMPLING_OPTIONS)
    if unknown:
        raise _refuse(unknown[0], scheduler[unknown[0]], "this field is unknown to ddpm's converter")
    s = {**SCHEDULER_DEFAULTS, **scheduler}
    fixed = {"trained_betas": (None,), "prediction_type": tuple(PREDICTION_TYPES),
             "rescale_betas_zero_snr": (False,), "beta_schedule": tuple(SCHEDULES),
             "variance_type": ("fixed_small", "fixed_large")}
    for field, allowed in fixed.items():
        if s[field] not in allowed:
            raise _refuse(field, s[field], f"ddpm has {' or '.join(map(json.dumps, allowed))}")
    return DiffusionConfig(timesteps=s["num_train_timesteps"], beta_start=float(s["beta_start"]),
                           beta_end=float(s["beta_end"]), schedule=SCHEDULES[s["beta_schedule"]],
                           variance=s["variance_type"], prediction=PREDICTION_TYPES[s["prediction_type"]])


def _attention_head_dim(m: ModelConfig) -> int | None:
    """diffusers' attention_head_dim for our heads: None is one head per block; refuses a head count that gives
    different head widths in blocks of different widths (diffusers sets the width, not the count)."""
    if m.attention_head_dim:
        return m.attention_head_dim
    if m.attention_heads == 1:
        return None
    widths = {m.nf * k // m.attention_heads for i, k in enumerate(m.ch_mult) if m.resolution // 2**i in
              m.attn_resolutions} | {m.nf * m.ch_mult[-1] // m.attention_heads}
    if len(widths) > 1:
        raise CheckpointError(f"--attention-heads {m.attention_heads} gives heads of {sorted(widths)} channels in "
                              "different blocks, which a diffusers UNet2DModel (one attention_head_dim) cannot express")
    return widths.pop()


def unet_config(m: ModelConfig) -> dict[str, Any]:
    """The ``UNet2DModel`` ``config.json`` of our ``skip="block"`` UNet; inverse of :func:`model_config`."""
    if m.skip != "block":
        raise CheckpointError("the seed network (skip='level': level skips, k4 convolutions, transposed-convolution "
                              "up-sampling) is not a diffusers UNet2DModel; export it in ddpm's own format with "
                              "`ddpm export RUN --output model.safetensors`")
    if m.activation != "silu":
        raise CheckpointError(f"--activation {m.activation} does not export: diffusers' UNet2DModel uses SiLU in "
                              "the timestep embedding and before the output convolution whatever its act_fn")
    attention = [m.resolution // 2**i in m.attn_resolutions for i in range(len(m.ch_mult))]
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        **UNET_DEFAULTS,
        "sample_size": m.resolution, "in_channels": m.in_channels, "out_channels": m.in_channels,
        "time_embedding_dim": m.time_emb_dim, "freq_shift": m.time_freq_shift, "flip_sin_to_cos": m.time_cos_first,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": [m.nf * k for k in m.ch_mult], "layers_per_block": m.num_res_blocks,
        "downsample_padding": 0 if m.downsample_padding == "same" else 1, "dropout": m.dropout,
        "attention_head_dim": _attention_head_dim(m), "norm_num_groups": m.norm_groups, "norm_eps": m.norm_eps,
        **({"num_class_embeds": len(m.class_names) + 1, CLASS_NAMES_KEY: list(m.class_names),
            GUIDANCE_KEY: m.guidance_scale} if m.class_cond else {}),
    }


def scheduler_config(d: DiffusionConfig) -> dict[str, Any]:
    """The ``DDPMScheduler`` ``scheduler_config.json`` of our diffusion; inverse of :func:`diffusion_config`."""
    schedule = {ours: theirs for theirs, ours in SCHEDULES.items()}[d.schedule]
    config = {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION, **SCHEDULER_DEFAULTS,
              "num_train_timesteps": d.timesteps, "beta_schedule": schedule, "variance_type": d.variance,
              "clip_sample": True, "prediction_type": {v: k for k, v in PREDICTION_TYPES.items()}[d.prediction]}
    if d.schedule == "linear":  # the range in use, defaults resolved: diffusers never rescales it with T
        config["beta_start"], config["beta_end"] = linear_beta_range(d.timesteps, d.beta_start, d.beta_end)
    return config


# ---------------------------------------------------------------- weights


def module_pairs(m: ModelConfig) -> list[tuple[str, str, bool]]:
    """(our module, diffusers' module, is an attention block) for every layer with weights, in forward order.

    Walks the network as :class:`ddpm.unet.UNet` builds it: the stem convolution is encoder stage 0, each residual
    block (with its attention) one stage, each down-sampling one stage; the middle is one stage of residual block,
    attention, residual block; the decoder is built like the encoder with ``num_res_blocks + 1`` blocks per level.
    Every residual block lists a 1x1 shortcut; only those whose channel count changes have its weights.
    """
    pairs = [("time_embed.mlp.0", "time_embedding.linear_1", False),
             ("time_embed.mlp.2", "time_embedding.linear_2", False), ("encoder.0.0", "conv_in", False)]

    def resblock(ours: str, theirs: str) -> None:
        pairs.extend((f"{ours}.{a}", f"{theirs}.{b}", False) for a, b in RESBLOCK)

    def stages(side: str, blocks: str, order: list[int], count: int, resample: str, res: int, scale: float) -> None:
        stage = 1 if side == "encoder" else 0
        for i, level in enumerate(order):
            for j in range(count):
                resblock(f"{side}.{stage}.0", f"{blocks}.{i}.resnets.{j}")
                if res in m.attn_resolutions:
                    pairs.append((f"{side}.{stage}.1", f"{blocks}.{i}.attentions.{j}", True))
                stage += 1
            if i < len(order) - 1:
                pairs.append((f"{side}.{stage}.0.conv", f"{blocks}.{i}.{resample}.0.conv", False))
                stage, res = stage + 1, int(res * scale)

    levels = list(range(len(m.ch_mult)))
    stages("encoder", "down_blocks", levels, m.num_res_blocks, "downsamplers", m.resolution, 0.5)
    resblock("middle.0", "mid_block.resnets.0")
    pairs.append(("middle.1", "mid_block.attentions.0", True))
    resblock("middle.2", "mid_block.resnets.1")
    bottom = m.resolution // 2 ** (len(levels) - 1)
    stages("decoder", "up_blocks", levels[::-1], m.num_res_blocks + 1, "upsamplers", bottom, 2)
    pairs += [("out.0", "conv_norm_out", False), ("out.2", "conv_out", False)]
    if m.class_cond:  # one embedding row per class and one for "no class", added to the timestep embedding
        pairs.append(("class_embed", "class_embedding", False))
    return pairs


def _legacy_renamed(name: str) -> str:
    """``...attentions.0.query.weight`` (diffusers before 0.15) -> ``...attentions.0.to_q.weight``."""
    head, _, param = name.rpartition(".")
    parent, _, layer = head.rpartition(".")
    if ".attentions." in name and layer in LEGACY_ATTENTION:
        return f"{parent}.{LEGACY_ATTENTION[layer]}.{param}"
    return name


def state_dict_from_diffusers(tensors: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """Our UNet's state dict from a ``UNet2DModel``'s; tensors that fit nowhere are an error, missing ones are left
    for ``load_state_dict`` to name."""
    tensors = {_legacy_renamed(k): v for k, v in tensors.items()}
    ours: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for mine, theirs, attention in module_pairs(m):
        names = [(f"{mine}.{a}", f"{theirs}.{b}") for a, b in ATTENTION] if attention else [(mine, theirs)]
        for param in ("weight", "bias"):
            for a, b in names:
                if f"{b}.{param}" in tensors:
                    ours[f"{a}.{param}"] = tensors[f"{b}.{param}"]
                    used.add(f"{b}.{param}")
            if attention:
                qkv = [f"{theirs}.{q}.{param}" for q in QKV]
                if all(name in tensors for name in qkv):
                    ours[f"{mine}.qkv.{param}"] = torch.cat([tensors[name] for name in qkv])
                    used.update(qkv)
        if attention:  # linear layers (C_out, C_in) -> 1x1 convolutions (C_out, C_in, 1, 1)
            for layer in ("qkv", "proj"):
                if f"{mine}.{layer}.weight" in ours:
                    weight = ours[f"{mine}.{layer}.weight"]
                    ours[f"{mine}.{layer}.weight"] = weight.reshape(weight.shape[0], -1, 1, 1)
    unused = sorted(set(tensors) - used)
    if unused:
        raise CheckpointError(f"the diffusers weights hold {len(unused)} tensors that the network their config "
                              f"describes does not have, e.g. {unused[0]}")
    return ours


def state_dict_to_diffusers(state: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """A ``UNet2DModel``'s state dict from our UNet's; inverse of :func:`state_dict_from_diffusers`."""
    theirs: dict[str, torch.Tensor] = {}
    for mine, other, attention in module_pairs(m):
        names = [(f"{mine}.{a}", f"{other}.{b}") for a, b in ATTENTION] if attention else [(mine, other)]
        for param in ("weight", "bias"):
            for a, b in names:
                if f"{a}.{param}" in state:
                    theirs[f"{b}.{param}"] = state[f"{a}.{param}"]
            if attention:
                for q, part in zip(QKV, state[f"{mine}.qkv.{param}"].chunk(3)):
                    theirs[f"{other}.{q}.{param}"] = part
        if attention:  # 1x1 convolutions -> linear layers
            for q in (*QKV, "to_out.0"):
                theirs[f"{other}.{q}.weight"] = theirs[f"{other}.{q}.weight"].flatten(1)
    return {k: v.contiguous() for k, v in theirs.items()}


# ---------------------------------------------------------------- folders


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a diffusers folder has config.json and scheduler_config.json "
                              "beside its weights, or model_index.json with unet/ and scheduler/")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The UNet's tensors: safetensors if present, else the .bin, read with ``weights_only=True`` (runs no code)."""
    safetensors, pickle = (folder / name for name in WEIGHTS)
    if safetensors.is_file():
        return read_safetensors(safetensors)[0]
    if not pickle.is_file():
        raise CheckpointError(f"{folder} has no {' or '.join(WEIGHTS)}")
    try:
        tensors = torch.load(pickle, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{pickle} is not a readable state dict of tensors ({torch_load_failure(exc)})") from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{pickle} is not a state dict of tensors")
    return tensors


def _translated(translate, path: Path):
    """``translate`` applied to the JSON file ``path``, its refusals naming the file."""
    try:
        return translate(_read_json(path))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def read_folder(path: Path) -> tuple[RunConfig, dict[str, torch.Tensor]]:
    """The config and our state dict of a diffusers folder, in either layout (see the module's docstring).

    The config is the ``ho2020`` preset's (Ho et al.'s recipe, the family of every ``UNet2DModel`` that loads) with
    the network and diffusion of the folder.
    """
    unet_dir, scheduler_dir = (path / "unet", path / "scheduler") if (path / "unet").is_dir() else (path, path)
    model = _translated(model_config, unet_dir / "config.json")
    diffusion = _translated(diffusion_config, scheduler_dir / "scheduler_config.json")
    config = RunConfig(preset="ho2020", model=model, diffusion=diffusion, train=make_config("ho2020").train)
    return config, state_dict_from_diffusers(_read_weights(unet_dir), model)


def write_folder(config: RunConfig, state: dict[str, torch.Tensor], output: Path) -> Path:
    """Write our network's ``state`` and ``config`` as a ``DDPMPipeline`` folder: ``model_index.json``, ``unet/``
    (config and safetensors) and ``scheduler/``; ``diffusers.DDPMPipeline.from_pretrained(output)`` loads it offline."""
    m = config.model
    files = {
        "model_index.json": {"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
                             "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]},
        "unet/config.json": unet_config(m),
        "scheduler/scheduler_config.json": scheduler_config(config.diffusion),
    }
    tensors = state_dict_to_diffusers(state, m)
    if output.exists() and not output.is_dir():
        raise OutputError(f"cannot write the diffusers folder {output}: a file is in the way")
    if not output.parent.is_dir():
        raise OutputError(f"cannot write the diffusers folder {output}: {output.parent} is not an existing folder")
    for sub in (output, output / "unet", output / "scheduler"):
        sub.mkdir(exist_ok=True)
    for name, data in files.items():
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        atomic_write(output / name, lambda f, text=text: f.write(text.encode()))
    blob = safetensors_bytes(tensors, {"format": "pt"})
    atomic_write(output / "unet" / WEIGHTS[0], lambda f: f.write(blob))
    return output
