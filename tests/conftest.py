"""Shared fixtures: tiny data sets in the real formats (CIFAR-10 pickles, image folders, archives), and one tiny
run trained once per session for the tests that need a checkpoint rather than a training run of their own."""

from __future__ import annotations

import contextlib
import io
import pickle
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main

CIFAR_PER_BATCH = 8


def write_cifar10(root: Path, per_batch: int = CIFAR_PER_BATCH, seed: int = 0) -> Path:
    """A miniature ``cifar-10-batches-py`` in the real format: pickled dicts, b"data" N x 3072 uint8 channel-major."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, per_batch).tolist(),
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                                      b"horse", b"ship", b"truck"], b"num_cases_per_batch": per_batch}, f, protocol=2)
    return folder


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """A folder holding ``cifar-10-batches-py/`` (40 train and 8 test images)."""
    write_cifar10(tmp_path / "cifar")
    return tmp_path / "cifar"


@pytest.fixture
def cifar_archive(tmp_path: Path) -> Path:
    """``cifar-10-python.tar.gz`` packed like the official download."""
    folder = write_cifar10(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive


def write_image_folder(root: Path, count: int = 12, seed: int = 0) -> Path:
    """Images of mixed sizes, formats and nesting, as a user's folder would have."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        sub = root / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        h, w = (36, 48) if i % 3 else (32, 32)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sub / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def cli(capsys):
    """Run the real CLI in-process: returns (exit code, stdout, stderr)."""

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@contextlib.contextmanager
def deterministic_torch():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.fixture(autouse=True)
def _deterministic():
    with deterministic_torch():
        yield


def training_state(trainer) -> list[torch.Tensor]:
    """Copies, on the trainer's device, of its weights, its EMA's weights and every tensor of its optimiser's state."""
    return [x.detach().clone() for x in (*trainer.model.parameters(), *trainer.ema.model.parameters(),
                                         *(v for s in trainer.optimizer.state.values() for v in s.values()))]


# Flags of a few-second CPU training run of the tiny preset.
TINY = ["--preset", "tiny", "--batch-size", "4", "--total-steps", "4", "--logging-steps", "2", "--checkpoint", "2",
        "--sample-every", "0", "--num-workers", "0", "--device", "cpu"]


@dataclass(frozen=True)
class TinyRun:
    data: Path  # a folder holding cifar-10-batches-py/ (40 train and 8 test images)
    run: Path  # `ddpm train TINY`'s run directory: ckpt-00000002.pt, ckpt-00000004.pt, latest, config.json, ...
    out: str  # what that `ddpm train` printed on stdout


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """A tiny run trained once per session with ``ddpm train TINY`` on the CIFAR-10 fixture. Shared: read it, never
    write into it; a test that adds to or damages a run works on ``run_copy``."""
    root = tmp_path_factory.mktemp("tiny_run")
    data = write_cifar10(root / "cifar").parent
    out = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as fast on this tiny network, and much faster when other work shares the cores
    try:
        with deterministic_torch(), contextlib.redirect_stdout(out):
            code = main(["train", *TINY, "--data-dir", str(data), "--save-model", str(root / "run")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, out.getvalue()
    before = _snapshot(root / "run")
    yield TinyRun(data, root / "run", out.getvalue())
    assert _snapshot(root / "run") == before, "a test wrote into the shared tiny run; give it run_copy instead"


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def run_copy(tiny_run: TinyRun, tmp_path: Path) -> Path:
    """This test's own copy of the session's tiny run, to resume, damage or add files to."""
    return Path(shutil.copytree(tiny_run.run, tmp_path / "run"))


# A network of a few thousand parameters on 8x8 images: what the likelihood and editing tests run many times.
MINI_MODEL = {"resolution": 8, "nf": 8, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (4,),
              "norm_groups": 4, "time_emb_dim": 16}


def write_model_file(path: Path, diffusion: dict | None = None, model: dict | None = None, seed: int = 0) -> Path:
    """An exported ``.safetensors`` model (random weights, the config in its metadata) that ``load_model`` reads:
    the mini network with ``diffusion`` (default: 10 cosine steps) and ``model`` overrides."""
    import json

    from ddpm.config import make_config, without_paths
    from ddpm.files import safetensors_bytes
    from ddpm.unet import UNet

    config = make_config("tiny", {"model": {**MINI_MODEL, **(model or {})},
                                  "diffusion": diffusion or {"timesteps": 10, "schedule": "cosine"}})
    torch.manual_seed(seed)
    network = UNet(config.model)
    with torch.no_grad():  # the output layer starts at zero; give it weights so the prediction is not trivially 0
        for p in network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tensors = {k: v.contiguous() for k, v in network.state_dict().items()}
    metadata = {"config": json.dumps(without_paths(config).to_dict()), "step": "0", "weights": "ema",
                "format": "ddpm"}
    path.write_bytes(safetensors_bytes(tensors, metadata))
    return path


def write_png_folder(root: Path, count: int = 3, size: int = 8, seed: int = 0) -> Path:
    """``count`` random RGB PNGs of ``size`` x ``size`` pixels in ``root``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root
