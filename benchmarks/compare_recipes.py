"""Training recipes compared at equal CPU time (issue 18): each candidate trains in turns of ``--chunk`` minutes, so
that load from other processes hits all of them alike, until each has ``--minutes`` of training time; then each is
scored on the README's protocol and the results are printed as a Markdown table.

    python benchmarks/compare_recipes.py --data-dir cifar10-jpeg/train --reference train5k.npz \\
        --runs ~/runs/recipes --minutes 30 --chunk 10

A candidate is the ``cpu`` preset (``--preset``) plus a few flags (:data:`CANDIDATES`; ``--only`` picks some). Every turn is
``ddpm train ... --resume --max-time CHUNK``, so an interrupted comparison continues where it stopped (run it again
with the same arguments); training time is the ``elapsed`` of the run's newest checkpoint (data and steps, not
start-up, grids or saving), which every turn ends with.
Scoring: ``ddpm eval RUN --num-samples 1000 --sampler ddim --sampling-steps 50 --reference REF`` (EMA weights), whose
line in the run's eval.jsonl is read back; a run already scored at its final step is not scored again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ddpm.checkpoint import list_checkpoints, load_checkpoint  # noqa: E402
from ddpm.runlog import EVAL_LOG  # noqa: E402

# name -> flags on top of --preset cpu. "cpu-seed1" measures the seed-to-seed spread of the baseline.
CANDIDATES = {
    "cpu": [],
    "cpu-seed1": ["--seed", "1"],
    "eps-minsnr5": ["--loss-weight", "min-snr"],
    "v-minsnr5": ["--prediction", "v", "--loss-weight", "min-snr"],
    "v-cosine": ["--prediction", "v", "--schedule", "cosine"],
    "x0-minsnr5": ["--prediction", "x0", "--loss-weight", "min-snr"],
}


def trained_seconds(run: Path) -> float:
    """Training time so far: ``elapsed`` of the run's newest checkpoint (0 before the first)."""
    found = list_checkpoints(run)
    return float(load_checkpoint(found[-1])["elapsed"]) if found else 0.0


def ddpm(*args: str) -> None:
    command = ["nice", sys.executable, "-m", "ddpm", *args]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def train_in_turns(args, names: list[str]) -> None:
    budget = args.minutes * 60
    while True:
        behind = [n for n in names if trained_seconds(args.runs / n) < budget]
        if not behind:
            return
        for name in behind:
            left = budget - trained_seconds(args.runs / name)
            ddpm("train", "--preset", args.preset, *CANDIDATES[name], "--data-dir", str(args.data_dir),
                 "--save-model", str(args.runs / name), "--resume", "--max-time", f"{min(args.chunk * 60, left):.0f}s",
                 "--logging-steps", "50", "--sample-every", "0")


def score(args, name: str) -> dict:
    run = args.runs / name
    step = int(list_checkpoints(run)[-1].stem.split("-")[1])
    log = run / EVAL_LOG
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = [r for r in done if r["step"] == step and r["num_samples"] == args.num_samples and r["sampler"] == "ddim"]
    if not done:
        ddpm("eval", str(run), "--num-samples", str(args.num_samples), "--sampler", "ddim", "--sampling-steps", "50",
             "--reference", str(args.reference), "--batch-size", "100")
        done = [json.loads(line) for line in log.read_text().splitlines()][-1:]
    return {"name": name, "minutes": trained_seconds(run) / 60, **done[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="training images (e.g. cifar10-jpeg/train)")
    parser.add_argument("--reference", type=Path, required=True, help="FID reference (e.g. train5k.npz)")
    parser.add_argument("--runs", type=Path, default=Path.home() / "runs" / "recipes", help="one run folder each")
    parser.add_argument("--minutes", type=float, default=30, help="training time per candidate")
    parser.add_argument("--chunk", type=float, default=10, help="minutes per turn")
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--preset", default="cpu", help="the preset every candidate starts from (tiny: a smoke run)")
    parser.add_argument("--num-samples", type=int, default=1000, help="samples scored per candidate")
    args = parser.parse_args()
    train_in_turns(args, args.only)
    rows = [score(args, name) for name in args.only]
    print("| candidate | flags | minutes | steps | FID | KID | precision / recall |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        flags = " ".join(CANDIDATES[r["name"]]) or "(the cpu preset)"
        print(f"| {r['name']} | `{flags}` | {r['minutes']:.1f} | {r['step']:,} | {r['fid']:.1f} | "
              f"{r['kid']:.3f} ± {r['kid_std']:.3f} | {r['precision']:.2f} / {r['recall']:.2f} |")


if __name__ == "__main__":
    main()
