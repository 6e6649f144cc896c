"""``benchmarks/score_checkpoints.py`` on a CPU: its float16 pack holds the same network, and ``score`` writes every
record, the grids and the Inception check (the GPU runs it with 1,000 samples; here 4 samples of 2 DDIM steps), with
the exact Inception network or the float16 copy it is given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.files import read_safetensors
from ddpm.model_io import load_model

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "score_checkpoints.py"
SHIPPED = ROOT / "models" / "ddpm-cifar10-cpu.safetensors"


def run(*args) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow  # four processes that each load the Inception network: 47 s of a 2-core machine
def test_pack_halves_the_weights_and_score_fills_every_record(tmp_path):
    image_folder = tmp_path / "images"  # the reference: 12 images of 32x32 pixels
    image_folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image_folder / f"{i}.png")
    subset = tmp_path / "subset"  # half of them, scored as a --real set
    subset.mkdir()
    for i in range(6):
        (subset / f"{i}.png").write_bytes((image_folder / f"{i}.png").read_bytes())
    run("pack", tmp_path / "pack", SHIPPED, "--inception")
    packed = tmp_path / "pack" / SHIPPED.name
    assert packed.stat().st_size < 0.55 * SHIPPED.stat().st_size
    tensors, metadata = read_safetensors(packed)
    step = read_safetensors(SHIPPED)[1]["step"]
    assert {v.dtype for v in tensors.values()} == {torch.float16} and metadata["step"] == step
    exact, half = load_model(SHIPPED).model.state_dict(), load_model(packed).model.state_dict()
    for name, value in exact.items():  # float16 keeps 11 significant bits
        torch.testing.assert_close(half[name], value, rtol=2**-11, atol=2**-24)

    out = tmp_path / "out"  # batches of 3: the grid gathers the scored images across batches
    run("score", out, "--reference", image_folder, "--real", image_folder, "--real", subset, "--job",
        f"{packed}=ddim:2", "--num-samples", 4, "--batch-size", 3, "--device", "cpu")
    results = json.loads((out / "results.json").read_text())
    assert results["device"] == "cpu" and results["inception"].startswith("exact")
    reference, real, real_subset, *scored = results["records"]
    assert reference["reference"] == str(image_folder)
    assert real["images"] == 12 and abs(real["fid"]) < 1e-3  # the reference against itself
    assert [(r["sampler"], r["steps"], r["step"]) for r in scored] == [("ddim", 2, int(step))]
    assert scored[0]["fid"] > 1 and {"kid", "kid_std", "precision", "recall"} <= set(scored[0])
    with np.load(out / "grids.npz") as grids:
        assert list(grids) == ["ddpm-cifar10-cpu_ddim2"]
        grid = grids["ddpm-cifar10-cpu_ddim2"]  # the 4 scored images (64 of 1,000 on the GPU), not sampled again
        assert grid.shape == (4, 32, 32, 3) and len({image.tobytes() for image in grid}) == 4
    with np.load(out / "inception_check.npz") as check:
        np.testing.assert_array_equal(check["images"], grid)
    verified = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--verify-inception",
                               str(out / "inception_check.npz")], capture_output=True, text=True, timeout=300)
    assert verified.returncode == 0 and "= 0.00e+00" in verified.stdout, verified.stdout + verified.stderr

    # The float16 copy of the Inception network, passed in: close to the exact network's FID, not equal to it
    half = tmp_path / "half"
    run("score", half, "--reference", image_folder, "--real", subset, "--inception",
        tmp_path / "pack" / "inception_fp16.pt", "--device", "cpu")
    results = json.loads((half / "results.json").read_text())
    assert results["inception"].endswith("default_1.pt rounded to float16, run in float32")
    [_, real_half] = results["records"]
    assert real_half["fid"] != real_subset["fid"] and real_half["fid"] == pytest.approx(real_subset["fid"], rel=0.05)
    assert not (half / "grids.npz").exists()  # no --job: nothing sampled, nothing to check


def test_bad_input_is_a_one_line_error(tmp_path):
    for args, message in ((["score", tmp_path, "--reference", tmp_path, "--job", "model.safetensors=ddim"],
                           "is not MODEL=SAMPLER:STEPS"),
                          (["pack", tmp_path, tmp_path / "ckpt-00000001.pt"], "does not exist")):
        done = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
