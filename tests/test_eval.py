"""``ddpm eval`` through the real CLI on a tiny checkpoint: summary line, eval.jsonl, kept samples, sweeps, errors.

One checkpoint, the session's tiny run (trained for 4 steps), and one cached cifar10-test reference (the fixture's
8 test images) serve every test. Inception runs on the CPU (~4 images/s); with so few images each FID takes the exact
low-rank path (:func:`ddpm.metrics.fid`), milliseconds instead of a 2048x2048 matrix square root.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, TinyRun, write_cifar10

EVAL = ["--sampler", "ddim", "--reference", "cifar10-test", "--device", "cpu"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The module's statistics cache: the cifar10-test reference is computed once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def run(run_copy: Path, cache: Path, monkeypatch) -> Path:
    """This test's own copy of the tiny run (T = 100; so eval.jsonl starts empty), with the module's statistics
    cache."""
    monkeypatch.setenv("DDPM_CACHE_DIR", str(cache))
    return run_copy


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 8 images: a rank-7 covariance
def test_eval_prints_a_summary_logs_a_json_line_and_keeps_the_samples(cli, run: Path, tiny_run: TinyRun,
                                                                       tmp_path: Path):
    code, out, err = cli("eval", run, "--num-samples", 8, "--sampling-steps", 3, "--batch-size", 5, *EVAL,
                         "--data-dir", tiny_run.data, "--keep-samples", tmp_path / "kept")
    assert code == 0, err
    [record] = _records(run)
    assert Path(record["checkpoint"]) == (run / "ckpt-00000004.pt").resolve()
    assert (record["step"], record["weights"], record["sampler"], record["steps"]) == (4, "ema", "ddim", 3)
    assert (record["num_samples"], record["seed"], record["reference"], record["reference_images"]) == \
        (8, 0, "cifar10-test", 8)
    assert math.isfinite(record["fid"]) and record["fid"] >= 0
    assert math.isfinite(record["kid"]) and record["kid_std"] >= 0
    assert 0 <= record["precision"] <= 1 and 0 <= record["recall"] <= 1 and record["wall_sec"] > 0

    [line] = out.splitlines()
    parts = line.split(" | ")
    assert parts[:3] == ["step 4 ema", "ddim 3 steps", "8 samples vs cifar10-test"]
    assert parts[3] == f"FID {record['fid']:.4f}" and parts[4].startswith(f"KID {record['kid']:.6f} ± ")
    assert parts[5:7] == [f"precision {record['precision']:.4f}", f"recall {record['recall']:.4f}"]
    assert not (run / "fid_vs_nfe.png").exists()  # one point: nothing to plot

    # The kept samples are the images `ddpm sample` draws from the same seeds, whatever the batch size.
    code, _, err = cli("sample", "--load-model", run, "--num-samples", 8, "--sampler", "ddim", "--sampling-steps", 3,
                       "--output-dir", tmp_path / "sampled", "--device", "cpu")
    assert code == 0, err
    for i in range(8):
        kept, sampled = (np.asarray(Image.open(tmp_path / d / f"{i:06d}.png"), dtype=int) for d in ("kept", "sampled"))
        assert np.abs(kept - sampled).max() <= 1  # batch size may change the last bit of a convolution


def test_sweep_logs_one_line_per_step_count_and_plots_fid_against_nfe(cli, run: Path, tiny_run: TinyRun):
    code, out, err = cli("eval", run, "--num-samples", 4, "--sampling-steps", "10,1", *EVAL,
                         "--data-dir", tiny_run.data)
    assert code == 0, err
    records = _records(run)
    assert [(r["steps"], r["num_samples"], r["step"]) for r in records] == [(10, 4, 4), (1, 4, 4)]
    assert records[0]["fid"] != records[1]["fid"] and all(r["fid"] > 0 for r in records)
    assert all(0 <= r["precision"] <= 1 for r in records)  # against a random 4 of the 8 reference images
    lines = out.splitlines()
    assert [line.split(" | ")[1] for line in lines[:2]] == ["ddim 10 steps", "ddim 1 steps"]
    assert lines[2] == f"wrote {run / 'fid_vs_nfe.png'}"
    with Image.open(run / "fid_vs_nfe.png") as plot:
        assert plot.format == "PNG" and plot.width > 300


@pytest.mark.parametrize("args, message", [
    (["--sampling-steps", "101"], "sampling steps must be between 1 and T = 100, got 101"),
    (["--sampling-steps", "10,99,100", "--sampler", "dpm++2m"], "between 1 and T - 1 = 99, got 100"),
    (["--sampling-steps", "10", "--num-samples", "3"], "--num-samples must be at least 4"),
    (["--sampling-steps", "10", "--reference", "{root}/missing"], "missing does not exist"),
])
def test_errors_are_one_line_and_come_before_any_sampling(cli, run: Path, tmp_path: Path, monkeypatch,
                                                          args: list[str], message: str):
    """An empty --data-dir and cache: had the reference been computed first, the error would be about CIFAR-10."""
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path / "no-cache"))
    (tmp_path / "empty").mkdir()
    args = [a.format(root=tmp_path) for a in args]
    code, out, err = cli("eval", run, *EVAL, *args, "--data-dir", tmp_path / "empty")
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1, err
    assert not (run / "eval.jsonl").exists()


def test_a_repeated_step_count_is_refused_by_the_parser(cli, run: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("eval", run, "--sampling-steps", "10,20,10")
    assert exit_info.value.code == 2 and "repeats a step count" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_fid_every_logs_the_numbers_ddpm_eval_computes_for_the_same_checkpoint(cli, tmp_path: Path, monkeypatch):
    """--fid-every scores the EMA weights in training exactly as `ddpm eval` scores the checkpoint afterwards, and
    logs them to eval.jsonl, metrics.jsonl (merged with the loss by `ddpm plot`) and TensorBoard."""
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path / "cache"))
    write_cifar10(tmp_path / "cifar")
    fid = ["--sampler", "ddim", "--reference", "cifar10-test", "--seed", 3]
    code, _, err = cli("train", *TINY, "--data-dir", tmp_path / "cifar", "--save-model", tmp_path / "run",
                       "--seed", 3, "--fid-every", 4, "--fid-samples", 4, "--fid-steps", 2,
                       "--fid-sampler", "ddim", "--fid-reference", "cifar10-test")
    assert code == 0, err
    [trained] = _records(tmp_path / "run")
    assert (trained["step"], trained["weights"], trained["num_samples"], trained["steps"]) == (4, "ema", 4, 2)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [2, 4, 4] and logged[-1]["fid"] == trained["fid"]
    assert list((tmp_path / "run" / "tensorboard").iterdir())

    (tmp_path / "run" / "eval.jsonl").unlink()
    code, _, err = cli("eval", tmp_path / "run", "--num-samples", 4, "--sampling-steps", 2, "--no-amp", *fid,
                       "--data-dir", tmp_path / "cifar", "--device", "cpu")
    assert code == 0, err
    [evaluated] = _records(tmp_path / "run")
    for key in ("fid", "kid", "precision", "recall"):
        assert evaluated[key] == pytest.approx(trained[key], rel=1e-6, abs=1e-9), key

    code, out, err = cli("plot", tmp_path / "run")
    assert code == 0, err
    assert f"FID (EMA) {trained['fid']:.4f} at step 4 (1 evaluations)" in out
