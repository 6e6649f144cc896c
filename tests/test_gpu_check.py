"""The GPU check's dry mode (``benchmarks/gpu_check.py --device cpu``): every part runs on a CPU in seconds with the
tiny preset, and the summary a GPU run fills has every field, so the script cannot rot between GPU loans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm.distributed import cpu_has_native_bf16

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


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
