"""Never lose a run (issue #5): preemption, kill -9 while a checkpoint is written, a full disk, damaged and
malicious checkpoints, non-finite steps, config validation and bad input, all on CPU with the tiny preset.

Signals and kill -9 run the real CLI in a subprocess (``python -m ddpm``), so exit codes and signal handlers are
the real ones, and a few bad inputs go through the ``ddpm`` console script itself; the rest, the bad-input catalogue
included, runs the CLI's ``main(argv)`` in-process, which is faster. kill -9 and the full disks are end-to-end runs,
marked ``slow``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import TINY, TinyRun, training_state
from ddpm.checkpoint import list_checkpoints, load_checkpoint
from ddpm.cli import main
from ddpm.config import make_config
from ddpm.data import TrainingData
from ddpm.diffusion import GaussianDiffusion
from ddpm.distributed import DistInfo
from ddpm.errors import ConfigError
from ddpm.train import Trainer
from ddpm.unet import UNet

DDPM = [sys.executable, "-m", "ddpm"]
# Unbuffered, so that output written before a kill -9 is there to read; one thread, because the trainer shares
# two cores with this process polling it.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
LONG = ["--total-steps", "100000", "--checkpoint", "100000"]  # a run that only stops when told to


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture
def start():
    """``start(LOGS, *ARGS)``: ``python -m ddpm ARGS`` in the background, stdout and stderr going to LOGS.out and
    LOGS.err; whatever still runs when the test ends (a failed one) is killed."""
    started: list[subprocess.Popen] = []

    def run(logs: Path, *args) -> subprocess.Popen:
        with open(logs.with_suffix(".out"), "w") as out, open(logs.with_suffix(".err"), "w") as err:
            started.append(subprocess.Popen([*DDPM, *map(str, args)], stdout=out, stderr=err, cwd=logs.parent,
                                            env=ENV))
        return started[-1]

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _output(logs: Path) -> tuple[str, str]:
    return logs.with_suffix(".out").read_text(), logs.with_suffix(".err").read_text()


def _wait_for(condition, proc: subprocess.Popen, logs: Path, timeout: float = 180.0) -> None:
    """Poll ``condition()`` until it holds; fail with the process's stderr if it exits or times out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"gave up waiting (exit code {proc.returncode}); stderr:\n{_output(logs)[1][-3000:]}")
        time.sleep(0.002)


def _metrics_written(run: Path) -> bool:
    path = run / "metrics.jsonl"
    return path.is_file() and path.stat().st_size > 0


def _temp_files(run: Path) -> list[Path]:
    return sorted(run.glob(".*.tmp-*"))


def _error_line(err: str) -> str:
    """The one line of a user error; there must be exactly one and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if re.match(r"ddpm( \w+)?: error: ", line)]
    assert len(lines) == 1, err
    return lines[0]


def _train(cli, data: Path, run: Path, *extra) -> tuple[int, str, str]:
    return cli("train", *TINY, "--data-dir", data, "--save-model", run, *extra)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for the in-process runs: on two shared cores, two threads spin against each other
    and a tiny run takes several times longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ preemption
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_at_the_current_step_then_resume_continues(signum, start, cli, cifar_dir,
                                                                              tmp_path):
    run, logs = tmp_path / "run", tmp_path / "train"
    proc = start(logs, "train", *TINY, "--data-dir", cifar_dir, "--save-model", run, *LONG, "--logging-steps", "1")
    _wait_for(lambda: _metrics_written(run), proc, logs)
    sent = time.monotonic()
    proc.send_signal(signum)
    code = proc.wait(timeout=120)
    took = time.monotonic() - sent
    out, err = _output(logs)
    name = signal.Signals(signum).name
    assert code == 128 + signum, err
    assert f"received {name}" in err and "Traceback" not in err
    step = int(re.search(rf"stopped by {name} at step (\d+); checkpoint saved", out).group(1))
    assert [p.name for p in list_checkpoints(run)] == [f"ckpt-{step:08d}.pt"]
    assert load_checkpoint(run / f"ckpt-{step:08d}.pt")["step"] == step
    assert (run / "latest").read_text().strip() == f"ckpt-{step:08d}.pt"
    assert took < 30, f"took {took:.1f} s to stop"  # one step and one save; generous for a loaded machine

    code, out, err = _train(cli, cifar_dir, run, "--resume", "--total-steps", step + 1)
    assert code == 0, err
    assert f"(step {step})" in out
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == step + 1


def test_second_sigint_quits_at_once_without_saving(start, cifar_dir, tmp_path):
    # The second SIGINT must arrive while the first one's step is still running; should the step and its save
    # finish first (the process then reports "stopped by SIGINT"), that attempt proves nothing and is repeated.
    for attempt in range(3):
        run, logs = tmp_path / f"run{attempt}", tmp_path / f"train{attempt}"
        proc = start(logs, "train", *TINY, "--data-dir", cifar_dir, "--save-model", run, *LONG,
                      "--logging-steps", "1", "--batch-size", "16")
        _wait_for(lambda: _metrics_written(run), proc, logs)
        proc.send_signal(signal.SIGINT)
        _wait_for(lambda: "received SIGINT" in _output(logs)[1], proc, logs)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        out, err = _output(logs)
        if "stopped by SIGINT" not in out:
            break
    assert code == 130, err
    assert "received SIGINT again: quitting without saving" in err and "Traceback" not in err
    assert list_checkpoints(run) == [] and _temp_files(run) == []


# ------------------------------------------------------------------------------------------------ kill -9
# ``python -c KILL_BEFORE_RENAME NAME N ARGS...`` runs ``ddpm ARGS`` and kill -9s itself at the Nth rename onto a file
# whose name starts with NAME: inside an atomic write, after its temp file is written and fsynced, before the rename.
# It wraps ``os.replace``, the rename every atomic write ends with, and leaves ddpm's code as it is.
KILL_BEFORE_RENAME = """
import os, signal, sys

name, nth = sys.argv[1], int(sys.argv[2])
rename, renames = os.replace, 0


def replace(src, dst, *args, **kwargs):
    global renames
    if os.path.basename(os.fspath(dst)).startswith(name):
        renames += 1
        if renames == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst, *args, **kwargs)


os.replace = replace
from ddpm.cli import main

sys.exit(main(sys.argv[3:]))
"""


def _without_pids(paths: list[Path]) -> list[str]:
    return sorted(re.sub(r"\d+$", "PID", p.name) for p in paths)


@pytest.mark.slow
def test_kill_9_while_writing_checkpoints_then_resume(cli, cifar_dir, tmp_path):
    """Three runs killed -9 inside a write, at points chosen by construction, then a resume that completes.

    Whatever checkpoint is left must be complete, a temp file is never read, and every resume starts from the
    newest checkpoint, also when ``latest`` was not yet updated to name it.
    """
    run = tmp_path / "run"
    args = ["train", *TINY, "--data-dir", cifar_dir, "--save-model", run, "--resume", "--checkpoint", "1",
            "--total-steps", "6", "--logging-steps", "100000"]  # 6: a run the kill missed ends, and the test fails

    def killed(name: str, nth: int) -> str:
        done = subprocess.run([sys.executable, "-c", KILL_BEFORE_RENAME, name, str(nth), *map(str, args)],
                              capture_output=True, text=True, env=ENV, timeout=300)
        assert done.returncode == -signal.SIGKILL, f"exit code {done.returncode}; stderr:\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr and "trying the previous checkpoint" not in done.stderr, done.stderr
        return done.stdout

    def steps() -> list[int]:  # atomic writes: every checkpoint file there is complete
        found = [load_checkpoint(p)["step"] for p in list_checkpoints(run)]
        assert found == [int(p.stem.split("-")[1]) for p in list_checkpoints(run)]
        return found

    # A new run, killed as its first checkpoint is renamed into place: the temp file is complete, and it is all.
    assert "starting a new run" in killed("ckpt-", 1)
    assert steps() == [] and not (run / "latest").exists()
    [temp] = _temp_files(run)
    assert _without_pids([temp]) == [".ckpt-00000001.pt.tmp-PID"] and load_checkpoint(temp)["step"] == 1

    # The temp file is not a checkpoint to resume from; killed again at the third checkpoint's rename.
    assert "starting a new run" in killed("ckpt-", 3)
    assert steps() == [1, 2] and (run / "latest").read_text().strip() == "ckpt-00000002.pt"
    assert _without_pids(_temp_files(run)) == [".ckpt-00000003.pt.tmp-PID"]  # the first run's is removed

    # Killed after checkpoint 3 is in place, as `latest` is renamed to name it: latest still names step 2.
    assert f"resuming from {run / 'ckpt-00000002.pt'} (step 2)" in killed("latest", 1)
    assert steps() == [1, 2, 3] and (run / "latest").read_text().strip() == "ckpt-00000002.pt"
    assert _without_pids(_temp_files(run)) == [".ckpt-00000003.pt.tmp-PID", ".latest.tmp-PID"]

    code, out, err = _train(cli, cifar_dir, run, "--resume", "--checkpoint", "1", "--total-steps", "4")
    assert code == 0, err
    assert f"resuming from {run / 'ckpt-00000003.pt'} (step 3)" in out  # the newest, not the one latest named
    assert steps() == [2, 3, 4] and (run / "latest").read_text().strip() == "ckpt-00000004.pt"
    assert _temp_files(run) == []  # the leftovers of the killed writers are gone


# ------------------------------------------------------------------------------------------------ full disk
@contextlib.contextmanager
def _file_size_limit(nbytes: int):
    """RLIMIT_FSIZE: the kernel refuses to grow any file past ``nbytes`` (EFBIG, with SIGXFSZ ignored)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@contextlib.contextmanager
def _small_tmpfs(folder: Path, nbytes: int):
    """A file system of ``nbytes`` mounted at ``folder`` (ENOSPC once full); needs root."""
    folder.mkdir()
    mount = shutil.which("mount")
    if mount is None or subprocess.run([mount, "-t", "tmpfs", "-o", f"size={nbytes}", "tmpfs", str(folder)],
                                       capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("disk", ["file-size-limit", "full-tmpfs"])
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(disk, cli, cifar_dir, tmp_path):
    run = tmp_path / "run"
    assert _train(cli, cifar_dir, run, "--total-steps", "2")[0] == 0
    size = (run / "ckpt-00000002.pt").stat().st_size
    if disk == "file-size-limit":
        full = _file_size_limit(size // 2)
    else:
        full = _small_tmpfs(tmp_path / "disk", size * 3 // 2)
    with full:
        if disk == "full-tmpfs":
            run = Path(shutil.copytree(run, tmp_path / "disk" / "run"))
        before = (run / "ckpt-00000002.pt").read_bytes()
        code, out, err = _train(cli, cifar_dir, run, "--resume", "--total-steps", "4")
        assert code == 2
        line = _error_line(err)
        assert "could not write" in line and "ckpt-00000004.pt" in line
        assert ("File too large" if disk == "file-size-limit" else "No space left on device") in line
        assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000002.pt"] and _temp_files(run) == []
        assert (run / "ckpt-00000002.pt").read_bytes() == before
        assert (run / "latest").read_text().strip() == "ckpt-00000002.pt"
        assert load_checkpoint(run / "ckpt-00000002.pt")["step"] == 2


# ------------------------------------------------------------------------------------------------ damaged files
def test_damaged_latest_checkpoint_falls_back_to_the_previous(cli, tiny_run: TinyRun, run_copy, tmp_path):
    latest = run_copy / "ckpt-00000004.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated, as by a failing disk

    with pytest.warns(UserWarning, match=r"ckpt-00000004\.pt is truncated, corrupt .*trying the previous"):
        code, out, err = cli("sample", "--load-model", run_copy, "--num-samples", "2", "--sampler", "ddim",
                             "--sampling-steps", "2", "--output", tmp_path / "grid.png", "--device", "cpu")
    assert code == 0, err
    assert "ckpt-00000002.pt (step 2" in out

    with pytest.warns(UserWarning, match=r"ckpt-00000004\.pt is truncated"):
        code, out, err = _train(cli, tiny_run.data, run_copy, "--resume")
    assert code == 0, err
    assert "ckpt-00000002.pt (step 2)" in out
    assert load_checkpoint(latest)["step"] == 4  # rewritten by the resumed run


class _RunsCode:
    """Unpickling this object opens (creates) a file: harmless, but code all the same."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_checkpoint_carrying_code_is_refused(cli, tiny_run: TinyRun, run_copy, tmp_path):
    marker = tmp_path / "code-ran"
    state = load_checkpoint(run_copy / "ckpt-00000004.pt")
    evil = tmp_path / "evil.pt"
    torch.save({**state, "step": _RunsCode(marker)}, evil)

    code, _, err = cli("sample", "--load-model", evil, "--output", tmp_path / "g.png", "--device", "cpu")
    assert code == 2
    assert "refusing to load" in _error_line(err) and "evil.pt" in err
    # The same file as the newest checkpoint of a run: skipped with a warning, the previous one used.
    shutil.copy(evil, run_copy / "ckpt-00000006.pt")
    with pytest.warns(UserWarning, match=r"refusing to load .*ckpt-00000006\.pt"):
        code, out, err = _train(cli, tiny_run.data, run_copy, "--resume", "--total-steps", "5")
    assert code == 0, err
    assert "ckpt-00000004.pt (step 4)" in out
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ numerics
def test_non_finite_steps_are_skipped_counted_then_stop_the_run(cli, cifar_dir, tmp_path):
    """Lion at --lr 0.99 overflows within a few steps: a real divergence through the real training step."""
    run = tmp_path / "run"
    diverge = ["--optimizer", "lion", "--lr", "0.99", "--warmup-steps", "0", "--logging-steps", "1",
               "--checkpoint", "1"]
    code, _, err = _train(cli, cifar_dir, run, *diverge, "--total-steps", "40", "--max-bad-steps", "2")
    assert code == 2
    line = _error_line(err)
    match = re.search(r"non-finite loss or gradients for 3 steps in a row at step (\d+); the last good "
                      r"checkpoint is (\S+)\.", line)
    assert match, line
    stop, named = int(match.group(1)), Path(match.group(2))
    assert "--max-bad-steps" in line
    # Checkpoints of the last good step and of the two skipped steps after it, all with the same, finite weights:
    # a skipped step changes nothing but the step counter.
    checkpoints = [load_checkpoint(p) for p in list_checkpoints(run)]
    assert [c["step"] for c in checkpoints] == [stop - 3, stop - 2, stop - 1] and named == list_checkpoints(run)[-1]
    assert [c["skipped_steps"] for c in checkpoints] == [0, 1, 2]
    for name, tensor in checkpoints[0]["model"].items():
        assert torch.isfinite(tensor).all() and all(torch.equal(tensor, c["model"][name]) for c in checkpoints)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records[-2:]] == [1, 2]
    assert all(math.isnan(r["loss"]) for r in records[-2:])  # a window of skipped steps has no loss, not 0

    # With a larger --max-bad-steps (a flag that may change on resume) the run goes on, counting what it skips.
    code, _, err = _train(cli, cifar_dir, run, *diverge, "--resume", "--total-steps", stop + 2,
                          "--max-bad-steps", "100")
    assert code == 0, err
    final = load_checkpoint(list_checkpoints(run)[-1])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert final["step"] == stop + 2
    assert final["skipped_steps"] == sum(math.isnan(r["loss"]) for r in records) >= 2


# Every way ddpm's code could read a tensor's value back to the host, i.e. wait for the device.
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@pytest.mark.parametrize("optimizer", ["fused-adamw", "adamw", "lion"])
def test_a_nan_step_changes_nothing_and_only_sync_points_read_the_device(optimizer, tmp_path, monkeypatch):
    """Six steps of the real loop with sync points after steps 3 (logging), 5 (--sync-every) and 6 (the last); the
    fourth step's loss is made NaN by a forward hook. That step leaves weights, optimiser state and EMA exactly as
    they were, and is counted at the next sync point, not before; the window of steps 4-6 averages the other two.

    Host reads by ddpm's code are observed (the tensor methods wrapped, their results unchanged): fused AdamW, CUDA's
    optimiser, is built here on the CPU and takes the skip decision on the device, so only the sync points read;
    Lion and foreach AdamW (the CPU's) read the decision once per step as well, and nothing else does."""
    run = tmp_path / "run"
    run.mkdir()
    config = make_config("tiny", {"train": {
        "save_model": str(run), "device": "cpu", "batch_size": 4, "total_steps": 6, "logging_steps": 3,
        "sync_every": 5, "checkpoint_every": 6, "sample_every": 0, "optimizer": optimizer.removeprefix("fused-")}})
    trainer = Trainer(config, DistInfo(0, 0, 1, torch.device("cpu")), log=lambda *a, **k: None)
    if optimizer == "fused-adamw":  # what make_optimizer builds on CUDA
        t = config.train
        trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=t.lr, weight_decay=t.weight_decay,
                                              fused=True)
        trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, trainer.scheduler.lr_lambdas[0])
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    seen: dict[int, tuple[list[torch.Tensor], int]] = {}  # step -> (training state, skipped steps) as it began

    def poison_the_fourth_step(module, inputs, output):
        seen[trainer.step] = training_state(trainer), trainer.skipped
        return output * math.nan if trainer.step == 3 else None

    trainer.model.register_forward_hook(poison_the_fourth_step)
    reads: list[int] = []  # the step count at each host read made by ddpm's code
    for name in HOST_READS:
        def observed(tensor, *args, _original=getattr(torch.Tensor, name), **kwargs):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("ddpm."):
                reads.append(trainer.step)
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, observed)
    assert trainer.run(TrainingData("random images", images=images)) is None
    monkeypatch.undo()

    assert trainer.step == 6 and trainer.skipped == 1 and trainer.ema.num_updates == 6  # the EMA counts it too
    (first, _), (before, _), (after, skipped_then) = seen[0], seen[3], seen[4]
    assert not all(torch.equal(a, b) for a, b in zip(first, before))  # the finite steps trained
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # the NaN step changed not a bit
    assert skipped_then == 0 and seen[5][1] == 1  # counted at the sync point after step 5
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_steps"]) for r in records] == [(3, 0), (6, 1)]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    assert load_checkpoint(run / "ckpt-00000006.pt")["skipped_steps"] == 1
    sync_points = [3, 5, 6]
    assert sorted(reads) == sorted(sync_points + ([] if optimizer == "fused-adamw" else list(range(6))))


# ------------------------------------------------------------------------------------------------ bad images
def test_skip_bad_images_warns_naming_the_file_and_trains(cli, image_folder, tmp_path):
    (image_folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.warns(UserWarning, match=r"skipping cannot read image .*broken\.png"):
        code, out, err = _train(cli, image_folder, tmp_path / "run", "--skip-bad-images")
    assert code == 0, err
    assert "(12 images)" in out  # the 12 good ones


def test_a_beta_range_that_keeps_signal_in_x_T_warns_before_training(cli):
    """The CLI prints ddpm's warnings as one line on stderr, like its errors, without a source-code line."""
    code, out, err = cli("train", "--preset", "tiny", "--beta-start", "1e-4", "--beta-end", "0.02", "--dry-run")
    assert code == 0, err
    (line,) = err.strip().splitlines()
    assert line.startswith("ddpm train: warning: the linear schedule beta = 0.0001 -> 0.02 over T = 100 steps ends "
                           "at alpha-bar_T = 0.364: x_T keeps")
    assert '"beta_end": 0.02' in out


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture
def bad(tiny_run: TinyRun, tmp_path) -> dict[str, Path]:
    """Paths for the bad-input catalogue."""
    (tmp_path / "empty").mkdir()
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(images / f"ok{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "a-file").write_text("in the way")
    (tmp_path / "garbage.pt").write_bytes(os.urandom(4096))
    state = load_checkpoint(tiny_run.run / "ckpt-00000004.pt")
    state["config"]["model"]["nf"] = 32  # the weights are those of nf 16
    torch.save(state, tmp_path / "incompatible.pt")
    return {"data": tiny_run.data, "run": tiny_run.run, "tmp": tmp_path, "empty": tmp_path / "empty", "images": images,
            "file": tmp_path / "a-file"}


def _train_args(*extra):
    return lambda p: ["train", *TINY, "--data-dir", p["data"], "--save-model", p["tmp"] / "new", *extra]


def _sample_args(model, *extra):
    return lambda p: ["sample", "--load-model", model(p), "--num-samples", "2", "--sampler", "ddim",
                      "--sampling-steps", "2", "--device", "cpu", "--output", p["tmp"] / "g.png", *extra]


CATALOGUE = {
    "missing data dir": (lambda p: ["train", *TINY, "--data-dir", p["tmp"] / "nope", "--save-model", p["tmp"] / "r"],
                         ["--data-dir", "nope does not exist"]),
    "empty data dir": (lambda p: ["train", *TINY, "--data-dir", p["empty"], "--save-model", p["tmp"] / "r"],
                       ["no images", "empty"]),
    "corrupt image": (lambda p: ["train", *TINY, "--data-dir", p["images"], "--save-model", p["tmp"] / "r"],
                      ["cannot read image", "broken.png", "--skip-bad-images"]),
    "time-steps 0": (_train_args("--time-steps", "0"), ["--time-steps must be positive"]),
    "total-steps 0": (_train_args("--total-steps", "0"), ["--total-steps must be positive"]),
    "batch-size -4": (_train_args("--batch-size", "-4"), ["--batch-size must be positive"]),
    "nf 0": (_train_args("--nf", "0"), ["--nf must be positive"]),
    "beta start >= end": (_train_args("--beta-start", "0.02", "--beta-end", "0.01"), ["--beta-start < --beta-end"]),
    "beta end >= 1": (_train_args("--beta-end", "1.5"), ["--beta-end < 1", "1.5"]),
    "default beta range at T <= 20": (_train_args("--time-steps", "10"), ["--beta-end < 1", "1000/T = 100",
                                                                          "--schedule cosine"]),
    "resolution not halvable": (_train_args("--resolution", "36"), ["--resolution 36 cannot be halved 3 times"]),
    "nf GroupNorm cannot divide": (_train_args("--nf", "12"), ["GroupNorm with 8 groups cannot divide 12"]),
    "unknown preset": (_train_args("--preset", "huge"), ["--preset", "invalid choice", "huge"]),
    "run dir not writable": (lambda p: ["train", *TINY, "--data-dir", p["data"], "--save-model", p["file"] / "run"],
                             ["cannot create run directory", "Not a directory"]),
    "missing checkpoint": (_sample_args(lambda p: p["tmp"] / "nope.pt"), ["nope.pt does not exist"]),
    "corrupt checkpoint": (_sample_args(lambda p: p["tmp"] / "garbage.pt"), ["garbage.pt is truncated, corrupt"]),
    "incompatible checkpoint": (_sample_args(lambda p: p["tmp"] / "incompatible.pt"),
                                ["incompatible.pt do not fit", "size mismatch"]),
    "sample output not writable": (_sample_args(lambda p: p["run"], "--output", "a-file/grid.png"),
                                   ["--output a-file/grid.png", "not an existing folder"]),
    "mps without an Apple GPU": (_train_args("--device", "mps"), ["--device mps", "no Apple-silicon GPU", "--device cpu"]),
    "cuda without a GPU": (_sample_args(lambda p: p["run"], "--device", "cuda"), ["--device cuda", "--device cpu"]),
    "export output not writable": (lambda p: ["export", p["run"], "--output", p["file"] / "model.safetensors"],
                                   ["could not write", "model.safetensors", "Not a directory"]),
}


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input_is_a_one_line_error(case, bad, capsys, monkeypatch):
    """``main(argv)`` in-process, as the console script calls it; argparse's own errors leave by SystemExit."""
    if (case.startswith("mps") and torch.backends.mps.is_available()) or (case.startswith("cuda") and
                                                                          torch.cuda.is_available()):
        pytest.skip("this machine has the device")
    make_args, expected = CATALOGUE[case]
    monkeypatch.chdir(bad["tmp"])
    try:
        code = main([str(a) for a in make_args(bad)])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    line = _error_line(capsys.readouterr().err)
    for text in expected:
        assert text in line, line


@pytest.mark.parametrize("case", ["unknown preset", "corrupt checkpoint"])
def test_the_console_script_prints_the_one_line_error(case, bad):
    """Two cases of the catalogue through the installed ``ddpm`` script, an argparse error and a DDPMError, with the
    exit code and stderr a user sees. (The signal tests start ``ddpm train`` in a fresh process too.)"""
    script = Path(sys.executable).with_name("ddpm")
    command = [str(script)] if script.is_file() else DDPM  # not installed: the same main() through python -m ddpm
    make_args, expected = CATALOGUE[case]
    done = subprocess.run([*command, *map(str, make_args(bad))], capture_output=True, text=True, cwd=bad["tmp"],
                          env=ENV, timeout=300)
    assert done.returncode == 2
    line = _error_line(done.stderr)
    for text in expected:
        assert text in line, line


# ------------------------------------------------------------------------------------------------ config properties
def _finite_or_not(low: float, high: float):
    return st.floats(low, high) | st.sampled_from([math.nan, math.inf, -math.inf])


CONFIGS = st.fixed_dictionaries({
    "model": st.fixed_dictionaries({
        "resolution": st.sampled_from([0, 2, 4, 6, 8, 12, 16]),
        "nf": st.integers(-1, 16),
        "ch_mult": st.lists(st.integers(-1, 3), max_size=3).map(tuple),
        "num_res_blocks": st.integers(0, 2),
        "attn_resolutions": st.lists(st.sampled_from([1, 2, 3, 4, 8, 16]), max_size=2).map(tuple),
        "norm_groups": st.sampled_from([-1, 0, 1, 2, 4, 8]),
        "attention_heads": st.integers(0, 4),
        "time_emb_dim": st.integers(-1, 24),
        "dropout": _finite_or_not(-0.5, 1.5),
        "skip": st.sampled_from(["level", "block"]),
        "activation": st.sampled_from(["relu", "silu"]),
    }),
    "diffusion": st.fixed_dictionaries({
        "timesteps": st.integers(-1, 50),
        "beta_start": _finite_or_not(-0.1, 1.1),
        "beta_end": _finite_or_not(-0.1, 1.1),
        "schedule": st.sampled_from(["linear", "cosine"]),
    }),
})
TINY_MODEL = {"resolution": 8, "nf": 8, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (4,),
              "norm_groups": 4, "attention_heads": 2, "time_emb_dim": 16, "dropout": 0.1, "skip": "block",
              "activation": "silu"}


@settings(max_examples=60, deadline=None)
@given(CONFIGS)
@example({"model": TINY_MODEL, "diffusion": {"timesteps": 10, "beta_start": 0.01, "beta_end": 0.2,
                                              "schedule": "linear"}})
@example({"model": {**TINY_MODEL, "skip": "level", "attn_resolutions": (2,)},
          "diffusion": {"timesteps": 1, "beta_start": 0.5, "beta_end": 0.6, "schedule": "cosine"}})
@example({"model": {**TINY_MODEL, "nf": 2, "norm_groups": 1, "attention_heads": 1}, "diffusion": {}})  # nf/2 - 1 = 0
def test_a_config_that_validates_trains_and_any_other_is_a_config_error(overrides):
    """make_config either raises ConfigError, never another exception, or gives a network and a schedule whose
    training loss on a tiny batch is finite."""
    try:
        config = make_config("tiny", overrides)
    except ConfigError:
        return
    m = config.model
    model = UNet(m)
    diffusion = GaussianDiffusion.from_config(config.diffusion)
    x0 = torch.rand(2, m.in_channels, m.resolution, m.resolution) * 2 - 1
    loss = diffusion.loss(model, x0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


NOT_POSITIVE = st.integers(max_value=0)
INVALID = {
    ("diffusion", "timesteps"): NOT_POSITIVE,
    ("train", "total_steps"): NOT_POSITIVE,
    ("train", "batch_size"): NOT_POSITIVE,
    ("model", "nf"): st.integers(max_value=3),
    ("model", "num_res_blocks"): NOT_POSITIVE,
    ("train", "keep_checkpoints"): NOT_POSITIVE,
    ("train", "checkpoint_every"): NOT_POSITIVE,
    ("train", "warmup_steps"): st.integers(max_value=-1),
    ("train", "grad_clip"): st.floats(max_value=-1e-9) | st.sampled_from([math.nan, math.inf]),
    ("train", "weight_decay"): st.floats(max_value=-1e-9) | st.sampled_from([math.nan, math.inf]),
    # tiny's T = 100 scales the unset end to 0.02 x 1000/T = 0.2, the unset start to 1e-4 x 1000/T = 1e-3.
    ("diffusion", "beta_start"): st.floats(max_value=0) | st.floats(min_value=0.2) | st.just(math.nan),
    ("diffusion", "beta_end"): st.floats(min_value=1) | st.floats(max_value=1e-3) | st.just(math.nan),
    ("train", "lr"): st.floats(max_value=0) | st.floats(min_value=1) | st.just(math.nan),
    ("model", "dropout"): st.floats(max_value=-1e-9) | st.floats(min_value=1) | st.just(math.nan),
    ("train", "ema_decay"): st.floats(max_value=-1e-9) | st.floats(min_value=1) | st.just(math.nan),
    ("model", "resolution"): st.integers(max_value=400).filter(lambda r: r <= 0 or r % 8),  # tiny: 3 halvings
    ("model", "norm_groups"): st.integers(min_value=3, max_value=64).filter(lambda g: 16 % g or 32 % g),  # nf 16
}


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(INVALID)).flatmap(lambda key: st.tuples(st.just(key), INVALID[key])))
def test_invalid_values_are_rejected_with_config_error(case):
    (section, name), value = case
    with pytest.raises(ConfigError):
        make_config("tiny", {section: {name: value}})
