"""Training recipes compared at equal compute (issue 18): every candidate trains the same number of steps of the same
network and batch, so each gets the same arithmetic whatever else the machine is doing; then each is scored on the
README's protocol and the results are printed as a Markdown table.

    python benchmarks/compare_recipes.py --data-dir cifar10-jpeg/train --reference train5k.npz \\
        --runs ~/runs/recipes --steps 1420 --jobs 2

The budget is counted in steps, not seconds: prediction type, loss weighting and schedule cost nothing per step, so
equal steps are equal CPU time, and a step budget is immune to load (wall-clock budgets are not: a second busy process
cut this machine's rate by up to 3x). 1,420 steps of 64 images are 30 minutes of the ``cpu`` preset on an idle 2-core
AMD EPYC (AVX2), which trained 50.3 img/s for the shipped model. ``--jobs`` candidates run at once with
``cores // jobs`` threads each: two single-thread runs train 15% more images per second on 2 cores than one
two-thread run (``ddpm bench --preset cpu``: 59.7 vs 51.7 img/s).

A candidate is ``--preset`` plus a few flags (:data:`CANDIDATES`; ``--only`` picks some). Every job is ``ddpm train
... --resume --total-steps STEPS``, then ``ddpm eval RUN --num-samples 1000 --sampler ddim --sampling-steps 50
--reference REF`` (EMA weights), whose line in the run's eval.jsonl is read back; so an interrupted comparison
continues where it stopped (run it again with the same arguments), and a run already scored at its final step is not
scored again. Checkpoints every 100 steps are all kept, so that earlier points can be scored for curves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ddpm.checkpoint import list_checkpoints, load_checkpoint  # noqa: E402
from ddpm.runlog import EVAL_LOG  # noqa: E402

# name -> flags on top of --preset cpu, each spelling out its target and weighting. "cpu" is the preset's recipe
# before this comparison (eps, uniform); "cpu-seed1" measures its seed-to-seed spread. v-minsnr5 won and is the
# preset's recipe since (docs/benchmarks.md).
CANDIDATES = {
    "cpu": ["--prediction", "eps", "--loss-weight", "uniform"],
    "cpu-seed1": ["--prediction", "eps", "--loss-weight", "uniform", "--seed", "1"],
    "v-minsnr5": ["--prediction", "v", "--loss-weight", "min-snr"],
    "eps-minsnr5": ["--prediction", "eps", "--loss-weight", "min-snr"],
    "v-cosine": ["--prediction", "v", "--loss-weight", "uniform", "--schedule", "cosine"],
    "x0-minsnr5": ["--prediction", "x0", "--loss-weight", "min-snr"],
}


def newest(run: Path) -> dict:
    """The run's newest checkpoint: step, training ``elapsed`` and images seen (all 0 before the first)."""
    found = list_checkpoints(run)
    if not found:
        return {"step": 0, "elapsed": 0.0, "images": 0}
    state = load_checkpoint(found[-1])
    step = int(state["step"])
    return {"step": step, "elapsed": float(state["elapsed"]), "images": step * state["config"]["train"]["batch_size"]}


def ddpm(threads: int, *args: str) -> None:
    command = ["nice", sys.executable, "-m", "ddpm", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print("$", f"OMP_NUM_THREADS={threads}", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


def train_and_score(args, name: str, threads: int) -> dict:
    run = args.runs / name
    if newest(run)["step"] < args.steps:
        ddpm(threads, "train", "--preset", args.preset, *CANDIDATES[name], "--data-dir", str(args.data_dir),
             "--save-model", str(run), "--resume", "--total-steps", str(args.steps), "--checkpoint", "100",
             "--keep-checkpoints", "1000", "--logging-steps", "50", "--sample-every", "0")
    state = newest(run)
    log = run / EVAL_LOG
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = [r for r in done if r["step"] == state["step"] and r["num_samples"] == args.num_samples
            and r["sampler"] == "ddim"]
    if not done:
        ddpm(threads, "eval", str(run), "--num-samples", str(args.num_samples), "--sampler", "ddim",
             "--sampling-steps", "50", "--reference", str(args.reference), "--batch-size", "100")
        done = [json.loads(line) for line in log.read_text().splitlines()][-1:]
    return {"name": name, **done[-1], **state}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="training images (e.g. cifar10-jpeg/train)")
    parser.add_argument("--reference", type=Path, required=True, help="FID reference (e.g. train5k.npz)")
    parser.add_argument("--runs", type=Path, default=Path.home() / "runs" / "recipes", help="one run folder each")
    parser.add_argument("--steps", type=int, default=1420, help="training steps per candidate")
    parser.add_argument("--jobs", type=int, default=2, help="candidates trained at once")
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--preset", default="cpu", help="the preset every candidate starts from (tiny: a smoke run)")
    parser.add_argument("--num-samples", type=int, default=1000, help="samples scored per candidate")
    args = parser.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda name: train_and_score(args, name, threads), args.only))
    print("| candidate | flags | steps | images | FID | KID | precision / recall |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        flags = " ".join(CANDIDATES[r["name"]]) or "(the cpu preset)"
        print(f"| {r['name']} | `{flags}` | {r['step']:,} | {r['images']:,} "
              f"| {r['fid']:.1f} | {r['kid']:.3f} ± {r['kid_std']:.3f} | {r['precision']:.2f} / {r['recall']:.2f} |")


if __name__ == "__main__":
    main()
