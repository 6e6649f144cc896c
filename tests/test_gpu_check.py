"""The GPU check on a CPU, so that it cannot rot between GPU loans: each program it runs in a subprocess
(``benchmarks/gpu_programs/``) called in-process on tiny inputs, and the whole script's dry mode
(``benchmarks/gpu_check.py --device cpu``: every part with the tiny preset, and every field of the summary)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.distributed import cpu_has_native_bf16

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent / "gpu_programs"))  # run by path there, imported by name here
import probe_env  # noqa: E402
import score_samples  # noqa: E402
import split_samples  # noqa: E402
import verify_inception  # noqa: E402


def _images(count: int, seed: int = 0) -> np.ndarray:
    """uint8 N x 32 x 32 x 3, as ``ddpm sample --npz`` writes them."""
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def test_probe_env_describes_this_machine():
    info = probe_env.probe()
    assert info["torch"] == torch.__version__ and info["cuda_available"] is torch.cuda.is_available()
    assert info["card"] and info["cpu_count"] >= 1
    assert info["packages"]["scipy"] and set(info["packages"]) == set(probe_env.OPTIONAL_PACKAGES)
    assert json.loads(json.dumps(info)) == info  # what the driver reads back from one printed line


def test_split_samples_cuts_shards_and_draws_the_first_64_as_a_grid(tmp_path):
    images = _images(70)
    np.savez(tmp_path / "samples.npz", arr_0=images)
    names = split_samples.split(tmp_path / "samples.npz", tmp_path, 30)
    assert names == ["samples_0.npz", "samples_1.npz", "samples_2.npz"]
    shards = [np.load(tmp_path / name)["arr_0"] for name in names]
    assert [len(s) for s in shards] == [30, 30, 10]
    np.testing.assert_array_equal(np.concatenate(shards), images)
    grid = np.asarray(Image.open(tmp_path / "samples_grid.png").convert("RGB"))
    assert grid.shape == (8 * 34 + 2, 8 * 34 + 2, 3)  # 8 x 8 images of 32 pixels, 2-pixel gaps
    for k in (0, 9, 63):  # row-major, the pixels unchanged
        row, col = divmod(k, 8)
        np.testing.assert_array_equal(grid[2 + 34 * row:34 + 34 * row, 2 + 34 * col:34 + 34 * col], images[k])


def test_score_samples_scores_and_writes_a_check_that_verify_inception_accepts(tmp_path, capsys):
    """4 samples against 5 reference images in a folder (precision/recall need 4); then the check passes here, and
    fails when its features are altered."""
    samples, reference = _images(4, seed=1), tmp_path / "reference"
    np.savez(tmp_path / "samples.npz", arr_0=samples)
    reference.mkdir()
    for i, image in enumerate(_images(5, seed=2)):
        Image.fromarray(image).save(reference / f"{i}.png")
    result = score_samples.score_samples(tmp_path / "samples.npz", str(reference), tmp_path / "check.npz", "cpu")
    assert (result["num_samples"], result["reference_images"]) == (4, 5) and result["fid"] > 0
    assert {"kid", "kid_std", "precision", "recall"} <= set(result) and json.dumps(result)
    with np.load(tmp_path / "check.npz") as check:
        np.testing.assert_array_equal(check["images"], samples)
        assert check["features"].shape == (4, 2048) and str(check["device"]) == "cpu"
        altered = {**check, "features": check["features"] * 1.01}

    assert verify_inception.main([str(tmp_path / "check.npz")]) == 0
    assert "4 images: max |features on cpu - features here| / max |features| = 0.00e+00" in capsys.readouterr().out
    np.savez(tmp_path / "altered.npz", **altered)
    assert verify_inception.main([str(tmp_path / "altered.npz")]) == 1
    assert capsys.readouterr().out.endswith(f"= {0.01 / 1.01:.2e}\n")  # 1% more: 1/101 of the largest feature


@pytest.mark.slow
def test_dry_mode_runs_every_part_and_fills_the_summary(tmp_path):
    """12 training images of 32x32 pixels: they are the FID reference too, so they must share one size."""
    image_folder, out = tmp_path / "images", tmp_path / "out"
    image_folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image_folder / f"{i}.png")
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), "--device", "cpu", "--data", str(image_folder),
                           "--wheels", str(tmp_path / "no-wheels")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert {p: r["ok"] for p, r in summary["parts"].items()} == dict.fromkeys(
        ("env", "tests", "bench", "train", "sample", "fid"), True)
    assert summary["card"] and summary["parts"]["env"]["torch"]
    tests = summary["parts"]["tests"]
    assert tests["counts"]["skipped"] >= 7 and "passed" not in tests["counts"]  # no GPU: every CUDA test skips
    assert tests["skip_reasons"] == ["needs a CUDA GPU (run with pytest -m cuda)"]
    assert [(r["variant"], r["batch_size"]) for r in summary["bench"]] == [("float32", 8), ("bf16+channels_last", 8)]
    for row in summary["bench"]:
        assert row["train_images_per_sec"] > 0 and row["ddim_images_per_sec"] > 0 and row["ddim_steps"] == 5
        assert row["profile"].startswith("one training step: ")  # the first batch size's step, profiled
    # --amp is bf16 where the CPU has the instructions and float32 (with a warning) where it has not
    amp = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert summary["bench"][1]["dtype"] == amp and summary["bench"][1]["channels_last"]
    train = summary["train"]
    assert train["steps"] > 0 and train["images_seen"] == 8 * train["steps"] and np.isfinite(train["final_loss"])
    assert train["images_per_sec_steady"] > 0 and train["loss_curve"] and "time budget of 6 s reached" in train["last_line"]
    sample = summary["sample"]
    assert (sample["num_samples"], sample["steps"], sample["files"]) == (10, 5, ["samples_0.npz"])
    with np.load(out / "samples_0.npz") as npz:
        assert npz["arr_0"].shape == (10, 32, 32, 3) and npz["arr_0"].dtype == np.uint8
    fid = summary["fid"]
    assert fid["num_samples"] == 10 and fid["reference_images"] == 12 and fid["fid"] > 0
    assert {"kid", "kid_std", "precision", "recall"} <= set(fid)
    assert (out / "samples_grid.png").is_file() and (out / "log.txt").is_file()
    verified = subprocess.run([sys.executable, str(SCRIPT), "--verify-inception", str(out / "inception_check.npz")],
                              capture_output=True, text=True, timeout=300)
    assert verified.returncode == 0 and "= 0.00e+00" in verified.stdout, verified.stdout + verified.stderr


def test_a_failing_part_is_reported_and_the_next_parts_still_run(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), "--device", "cpu", "--data", str(tmp_path / "none"),
                           "--parts", "train,env"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    parts = json.loads((out / "summary.json").read_text())["parts"]
    assert not parts["train"]["ok"] and "no training data" in parts["train"]["error"] and parts["env"]["ok"]
    assert "1 of 2 parts ok; failed: train" in done.stdout
