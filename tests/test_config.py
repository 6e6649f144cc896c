"""The config dataclasses as the one source of flags, constraints and resume rules (their field metadata)."""

from __future__ import annotations

import dataclasses

import pytest

from ddpm.config import SECTIONS, check_bound, config_field, flag_name, make_config, may_change_on_resume
from ddpm.errors import ConfigError
from ddpm.train import resume_config


@pytest.mark.parametrize("value, bound, message", [
    (0, "positive", "must be positive"), (-1, "non_negative", "must be >= 0"), (1.0, "(0, 1)", r"must be in \(0, 1\)"),
    (0.0, "(0, 1]", r"must be in \(0, 1\]"), (1.0, "[0, 1)", r"must be in \[0, 1\)"),
    (float("nan"), "[0, 1)", "must be a finite number"), (float("inf"), "positive", "must be a finite number"),
])
def test_check_bound_refuses(value, bound, message):
    with pytest.raises(ConfigError, match=f"--x {message}, got"):
        check_bound("--x", value, bound)


@pytest.mark.parametrize("value, bound", [(1, "positive"), (0, "non_negative"), (0.5, "(0, 1)"), (1.0, "(0, 1]"),
                                          (0.0, "[0, 1)")])
def test_check_bound_accepts(value, bound):
    check_bound("--x", value, bound)


def test_an_unknown_bound_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown bound"):
        check_bound("--x", 1, "(0, 1")


def test_every_bound_in_the_config_is_understood_and_its_default_obeys_it():
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            if field.metadata["bound"]:
                check_bound(flag_name(field), field.default, field.metadata["bound"])


def test_flag_names_come_from_the_metadata():
    assert flag_name(config_field("diffusion", "timesteps")) == "--time-steps"
    assert flag_name(config_field("train", "checkpoint_every")) == "--checkpoint"
    assert flag_name(config_field("train", "batch_size")) == "--batch-size"


def test_a_refused_resume_names_the_flags_the_user_typed():
    saved = make_config("tiny")
    assert may_change_on_resume("train", "max_time") and not may_change_on_resume("diffusion", "timesteps")
    with pytest.raises(ConfigError, match=r"--time-steps \(100 in the checkpoint, 50 given\); --lr \(0.001 in the "):
        resume_config(saved, None, {"diffusion": {"timesteps": 50}, "train": {"checkpoint_every": 7, "lr": 0.5}})
    resumed = resume_config(saved, None, {"train": {"checkpoint_every": 7, "max_time": 60.0}})
    assert (resumed.train.checkpoint_every, resumed.train.max_time) == (7, 60.0)
