"""FID against network calls for every sampler x step spacing x step count, one JSON line per evaluation.

    python benchmarks/sampler_sweep.py MODEL --reference train5k.npz --out sweep.jsonl [--guidance-scale 0] \
        [--samplers ddim,ipndm] [--spacings uniform,logsnr] [--steps 5,10] [--num-samples 1000] [--amp]
    python benchmarks/sampler_sweep.py --table sweep.jsonl [--plot fid-vs-calls.png]

Each evaluation is :func:`ddpm.evaluate.evaluate` (the README protocol: image i has seed i and, for a conditional
model, class i mod K), so every row of one sweep uses the same noise. Rows already in ``--out`` are skipped, so a
stopped sweep resumes where it was. DDIM-50 on the uniform grid is always measured first: the reference every other
row is set against. Network calls per image are the steps, twice that under guidance (scale not 0 or 1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ddpm.evaluate import evaluate
from ddpm.metrics import load_source
from ddpm.model_io import load_model


def calls(row: dict) -> int:
    """Network evaluations per image: one per step, two when guidance combines two predictions."""
    guided = row.get("guidance_scale") not in (None, 0.0, 1.0)
    return row["steps"] * (2 if guided else 1)


def sweep(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    loaded = load_model(args.model, device="cpu")
    reference = load_source(args.reference)
    out = Path(args.out)
    done = set()
    if out.exists():
        done = {(r["sampler"], r["spacing"], r["steps"]) for r in map(json.loads, out.read_text().splitlines())}
    plan = [("ddim", "uniform", 50)] + [(sampler, spacing, steps) for steps in args.steps
                                         for sampler in args.samplers for spacing in args.spacings]
    for sampler, spacing, steps in plan:
        if (sampler, spacing, steps) in done:
            continue
        row = evaluate(loaded.model, loaded.diffusion, reference, args.num_samples, sampler, steps,
                       batch_size=args.batch_size, progress=False, amp=args.amp, guidance_scale=args.guidance_scale,
                       spacing=spacing)
        row.update(model=str(args.model), calls=calls(row))
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done.add((sampler, spacing, steps))
        print(f"{sampler:8} {spacing:9} {steps:3} steps {row['calls']:4} calls  FID {row['fid']:7.2f}  "
              f"KID {row['kid']:.4f}  {row['wall_sec']:.0f} s", flush=True)


def table(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in Path(args.table).read_text().splitlines()]
    reference = next(r["fid"] for r in rows if (r["sampler"], r["spacing"], r["steps"]) == ("ddim", "uniform", 50))
    steps = sorted({r["steps"] for r in rows if r["steps"] != 50 or r["sampler"] != "ddim"})
    combos = sorted({(r["sampler"], r["spacing"]) for r in rows if r["steps"] in steps})
    by = {(r["sampler"], r["spacing"], r["steps"]): r for r in rows}
    print(f"DDIM-50 (uniform): FID {reference:.2f}; cells: FID (ratio to DDIM-50)")
    print("| sampler | spacing | " + " | ".join(f"{s} steps" for s in steps) + " |")
    print("| --- | --- |" + " --- |" * len(steps))
    for sampler, spacing in combos:
        cells = [f"{by[sampler, spacing, s]['fid']:.1f} ({by[sampler, spacing, s]['fid'] / reference:.2f})"
                 if (sampler, spacing, s) in by else "" for s in steps]
        print(f"| {sampler} | {spacing} | " + " | ".join(cells) + " |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for sampler, spacing in combos:
            points = sorted((calls(r), r["fid"]) for (a, b, _), r in by.items() if (a, b) == (sampler, spacing))
            ax.plot(*zip(*points), marker="o", ms=3, label=f"{sampler}, {spacing}")
        ax.axhline(reference, color="k", ls="--", lw=1, label="DDIM-50")
        ax.axhline(1.1 * reference, color="k", ls=":", lw=1, label="1.1 x DDIM-50")
        ax.set(xlabel="network calls per image", ylabel="FID (1,000 samples)", yscale="log")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--reference")
    parser.add_argument("--out")
    parser.add_argument("--guidance-scale", type=float, default=None, help="None: the file's recommended scale")
    parser.add_argument("--samplers", type=lambda s: s.split(","), default=["ddim", "dpm++2m", "dpm++3m", "ipndm"])
    parser.add_argument("--spacings", type=lambda s: s.split(","), default=["uniform", "quadratic", "logsnr",
                                                                            "karras"])
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10])
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--table")
    parser.add_argument("--plot")
    args = parser.parse_args()
    table(args) if args.table else sweep(args)


if __name__ == "__main__":
    main()
