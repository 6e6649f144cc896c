"""A model file's recommended sampling (sampler, spacing, steps), written by ``ddpm export`` and used by ``ddpm sample``
and ``ddpm eval`` when they are given no sampler; and sampling's automatic bf16 on CPUs that compute it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import write_model_file

from ddpm.config import make_config
from ddpm.distributed import cpu_has_native_bf16, sampling_amp
from ddpm.errors import ConfigError
from ddpm.files import read_safetensors


def config_of(path) -> dict:
    return json.loads(read_safetensors(path)[1]["config"])["diffusion"]


def test_sampling_rule_fills_in_from_the_file_unless_another_sampler_is_asked_for():
    d = dataclasses.replace(make_config("cpu").diffusion, sampler="ipndm", time_spacing="logsnr", sampling_steps=10)
    assert d.sampling(None, None, None) == ("ipndm", 10, "logsnr")
    assert d.sampling("ipndm", 20, None) == ("ipndm", 20, "logsnr")
    assert d.sampling(None, None, "karras") == ("ipndm", 10, "karras")
    assert d.sampling("ddpm", None, None) == ("ddpm", None, "uniform")  # Ho et al.'s sampler, all T steps
    assert make_config("cpu").diffusion.sampling(None, None, None) == ("ddpm", None, "uniform")  # files before


def test_export_records_the_recommendation_and_sample_uses_it(cli, tmp_path):
    source = write_model_file(tmp_path / "m.safetensors", {"timesteps": 20, "schedule": "cosine"})
    out = tmp_path / "rec.safetensors"
    code, _, err = cli("export", source, "--output", out, "--sampler", "ipndm", "--time-spacing", "logsnr",
                       "--sampling-steps", "4")
    assert code == 0, err
    assert {k: config_of(out)[k] for k in ("sampler", "time_spacing", "sampling_steps")} == {
        "sampler": "ipndm", "time_spacing": "logsnr", "sampling_steps": 4}
    images = {}
    for name, model, flags in (("recommended", out, []), ("spelt out", source, ["--sampler", "ipndm",
                                                                               "--time-spacing", "logsnr",
                                                                               "--sampling-steps", "4"]),
                               ("paper", out, ["--sampler", "ddpm"])):
        code, stdout, err = cli("sample", "--load-model", model, "--num-samples", "2", "--npz", tmp_path / "s.npz",
                                "--device", "cpu", "--no-amp", *flags)
        assert code == 0, err
        images[name] = np.load(tmp_path / "s.npz")["arr_0"]
        if name == "recommended":
            assert "sampler ipndm, 4 steps (logsnr)" in stdout
        if name == "paper":
            assert "sampler ddpm (fixed_large variance), 20 steps (uniform)" in stdout
    np.testing.assert_array_equal(images["recommended"], images["spelt out"])
    assert not np.array_equal(images["recommended"], images["paper"])
    # A new sampler alone resets the spacing and steps to its own defaults.
    again = tmp_path / "again.safetensors"
    assert cli("export", out, "--output", again, "--sampler", "ddim")[0] == 0
    assert (config_of(again)["time_spacing"], config_of(again)["sampling_steps"]) == ("uniform", 0)


def test_bad_recommendations_are_one_line_errors(cli, tmp_path):
    source = write_model_file(tmp_path / "m.safetensors", {"timesteps": 20, "schedule": "cosine"})
    code, _, err = cli("export", source, "--output", tmp_path / "x.safetensors", "--sampler", "dpm++2m",
                       "--sampling-steps", "20")
    assert code != 0 and "between 1 and T - 1 = 19, got 20" in err and "Traceback" not in err
    code, _, err = cli("export", source, "--output", tmp_path / "d", "--format", "diffusers", "--sampler", "ddim")
    assert code != 0 and "a diffusers folder carries no recommended sampler" in err
    with pytest.raises(ConfigError, match="unknown recommended sampler 'euler'"):
        make_config("tiny", {"diffusion": {"sampler": "euler"}})


def test_sampling_amp_is_on_by_default_only_on_cpus_with_bf16():
    cpu = torch.device("cpu")
    assert sampling_amp(cpu, None) == cpu_has_native_bf16()
    assert sampling_amp(cpu, False) is False and sampling_amp(cpu, True) is True
    assert sampling_amp(torch.device("cuda"), None) is False and sampling_amp(torch.device("mps"), None) is False
