"""Short runs done right: the EMA warm-up, the --max-time budget and bf16 training on the CPU."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from conftest import TINY
from ddpm import distributed
from ddpm.checkpoint import list_checkpoints, load_checkpoint
from ddpm.config import RunConfig, make_config
from ddpm.durations import format_duration, parse_duration
from ddpm.distributed import DistInfo
from ddpm.ema import EMA, warmup_decay
from ddpm.train import Trainer


@pytest.mark.parametrize("n, expected", [
    (0, 0.0), (7, 1 - 8 ** (-2 / 3)), (999, 0.99), (31_622, 1 - 31_623 ** (-2 / 3)), (10**6 - 1, 0.9999), (10**8, 0.9999),
])
def test_power_warmup_is_diffusers_schedule_capped_at_the_decay(n, expected):
    """1 - (1 + n)^(-2/3): 0.99 after 1,000 updates, 0.999 after ~31.6k, the cap 0.9999 after 1M (diffusers' docs)."""
    assert warmup_decay(n, 0.9999, "power", 2 / 3) == pytest.approx(expected, abs=1e-12)


def test_other_warmups_and_the_shorter_power():
    assert warmup_decay(10_000 - 1, 0.9999, "power", 3 / 4) == pytest.approx(0.999, abs=1e-12)  # "0.999 at 10K steps"
    assert warmup_decay(90, 0.9999, "tf") == pytest.approx(91 / 100)
    assert warmup_decay(10**7, 0.9999, "tf") == 0.9999
    assert warmup_decay(0, 0.9999, "none") == 0.9999  # Ho et al.'s fixed decay from the first update


def test_ema_update_follows_the_warmup_and_a_skipped_step_leaves_it_unchanged():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, 0.9999, "power", 2 / 3)
    taken, skipped = torch.tensor(True), torch.tensor(False)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, taken)  # d_0 = 0: the average is the current weights
    assert torch.equal(ema.model.weight, model.weight)
    before = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, taken)  # d_1 = 1 - 2^(-2/3)
    d = 1 - 2 ** (-2 / 3)
    torch.testing.assert_close(ema.model.weight, d * before + (1 - d) * model.weight, rtol=0, atol=1e-6)
    after = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, skipped)  # weight 0: not a bit changes, but the step counts towards the warm-up
    assert all(torch.equal(a, p) for a, p in zip(after, ema.model.parameters())) and ema.num_updates == 3


def test_new_runs_warm_up_with_the_power_rule_and_old_checkpoints_keep_theirs():
    assert make_config("seed").train.ema_warmup == "power"
    old = make_config("seed").to_dict()
    del old["train"]["ema_warmup"]  # a checkpoint written before the field existed trained with the TF rule
    assert RunConfig.from_dict(old).train.ema_warmup == "tf"


@pytest.mark.parametrize("text, seconds", [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("1.5h", 5400),
                                           ("300", 300), ("2 h", 7200), ("10min", 600), ("0", 0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["2x", "", "-5", "h", "1h-2m", "inf", "nan"])
def test_parse_duration_refuses_what_is_not_a_duration(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_picks_the_unit():
    assert [format_duration(s) for s in (11.2, 750, 7380)] == ["11 s", "12.5 min", "2.05 h"]


def test_max_time_flag_errors_are_one_line(cli, capsys):
    with pytest.raises(SystemExit) as exited:
        cli("train", "--max-time", "2x", "--dry-run")
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "argument --max-time: '2x' is not a duration; write e.g. 2h" in err


def test_max_time_stops_with_a_checkpoint_and_a_grid_and_the_run_resumes(cli, cifar_dir, tmp_path):
    run = tmp_path / "run"
    flags = [*TINY, "--data-dir", cifar_dir, "--save-model", run, "--checkpoint", "100000"]
    code, out, err = cli("train", *flags, "--total-steps", "100000", "--sample-every", "100000", "--max-time", "2s")
    assert code == 0, err
    (last,) = list_checkpoints(run)
    step = load_checkpoint(last)["step"]
    assert 0 < step < 100_000
    assert f"time budget of 2 s reached: {step} steps ({4 * step:,} images)" in out
    assert "100%" in err and "2/2 s of the time budget" in err  # with a budget the bar measures time, not steps
    grid = run / "samples" / f"step-{step:08d}.png"
    assert grid.is_file() and f"samples: {grid}" in out
    code, out, err = cli("train", *flags, "--total-steps", str(step + 2), "--max-time", "0", "--resume")
    assert code == 0, err
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == step + 2
    assert f"done: {step + 2} steps" in out


def test_bf16_cpu_training_step_is_finite_and_close_to_float32(tmp_path):
    """Same weights, batch, timesteps and noise: bf16 autocast's gradient norm within 5% of float32's, the loss after
    one update within 2%.
    bf16 is forced, so that CPUs where ``--amp`` falls back to float32 still check its numerics."""
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    results = {}
    for dtype in (None, torch.bfloat16):
        config = make_config("tiny", {"train": {"save_model": str(tmp_path), "device": "cpu", "batch_size": 8}})
        trainer = Trainer(config, DistInfo(0, 0, 1, torch.device("cpu")), log=lambda *a, **k: None)
        trainer.amp_dtype = dtype
        _, norm = trainer.train_step(images)  # the zero-initialised output layer predicts 0 in either dtype
        loss, _ = trainer.train_step(images)
        results[dtype] = (loss.item(), norm)
    (loss32, norm32), (loss16, norm16) = results[None], results[torch.bfloat16]
    assert math.isfinite(loss16) and math.isfinite(norm16) and loss16 != loss32 and norm16 != norm32
    assert abs(loss16 - loss32) <= 0.02 * loss32 and abs(norm16 - norm32) <= 0.05 * norm32


@pytest.mark.parametrize("native", [True, False])
def test_amp_on_a_cpu_is_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch, tmp_path, native):
    """Emulated bf16 made a training step 20x slower than float32 on an AVX2 CPU: there --amp warns and is off."""
    monkeypatch.setattr(distributed, "cpu_has_native_bf16", lambda: native)
    config = make_config("tiny", {"train": {"save_model": str(tmp_path), "device": "cpu", "amp": True}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(config, DistInfo(0, 0, 1, torch.device("cpu")), log=lambda *a, **k: None)
    amp_warnings = [w for w in caught if issubclass(w.category, distributed.AmpWarning)]
    if native:
        assert trainer.amp_dtype == torch.bfloat16 and not amp_warnings
    else:
        assert trainer.amp_dtype is None and len(amp_warnings) == 1
        assert "no bfloat16 instructions" in str(amp_warnings[0].message)


def test_auto_picks_cuda_then_mps_then_the_cpu(monkeypatch):
    """The hardware probes are replaced; the choice and --amp's dtype on each device are the code under test."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed, "mps_available", lambda: True)
    assert distributed.resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.resolve_device("auto") == torch.device("mps")
    assert distributed.amp_dtype(torch.device("mps")) == torch.float16
    monkeypatch.setattr(distributed, "mps_available", lambda: False)
    assert distributed.resolve_device("auto") == torch.device("cpu")
