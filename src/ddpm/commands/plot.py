"""``ddpm plot RUN``: the training curves of a run from its ``metrics.jsonl``, for those without TensorBoard.

Plots the loss (as logged, the mean over each --logging-steps window, and smoothed), the learning rate, the
gradient norm and, for a run trained with --fid-every, the FID against the step, and prints a summary.
``--guidance`` plots instead a class-conditional run's guidance sweep from its eval.jsonl (`ddpm eval RUN
--guidance-scale 0,1,1.5,2,3,5`): FID, precision, recall and the probe's accuracy against the guidance scale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm.commands.options import HelpFormatter


def register(subparsers) -> None:
    parser = subparsers.add_parser("plot", help="plot the training curves of a run (metrics.jsonl)",
                                   description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run", metavar="RUN", help="run directory of `ddpm train` (its --save-model) or a metrics.jsonl")
    parser.add_argument("--output", default=None, metavar="FILE.png",
                        help="PNG to write; None: training_curves.png in the run directory")
    parser.add_argument("--smoothing", type=float, default=0.6,
                        help="weight of the exponential moving average drawn over the loss, in [0, 1) (0: none), "
                             "as TensorBoard's smoothing slider")
    parser.add_argument("--dpi", type=int, default=100, help="pixels per inch of the PNG")
    parser.add_argument("--guidance", action="store_true",
                        help="plot the guidance sweep of eval.jsonl instead (the newest evaluation at each scale of "
                             "the newest step, sampler and sample count); default output: fid_vs_guidance.png")
    parser.set_defaults(func=run)


def run_guidance(args: argparse.Namespace) -> int:
    from ddpm.errors import ConfigError, DataError
    from ddpm.evaluate import GUIDANCE_PLOT, plot_guidance_sweep
    from ddpm.runlog import read_evals

    source = Path(args.run)
    run_dir = source if source.is_dir() else source.parent
    output = Path(args.output) if args.output else run_dir / GUIDANCE_PLOT
    if not output.parent.exists():
        raise ConfigError(f"cannot write {output}: folder {output.parent} does not exist")
    records = [r for r in read_evals(args.run) if r.get("guidance_scale") is not None]
    if not records:
        raise DataError(f"{args.run} holds no evaluation of a class-conditional model; run `ddpm eval RUN "
                        "--guidance-scale 0,1,1.5,2,3,5` first")
    last = records[-1]
    key = ("step", "sampler", "steps", "num_samples", "reference")
    sweep = {r["guidance_scale"]: r for r in records if all(r[k] == last[k] for k in key)}  # the newest per scale
    title = f"{last['sampler']} {last['steps']} steps, {last['num_samples']} samples, step {last['step']}"
    plot_guidance_sweep(list(sweep.values()), output, title)
    for scale, r in sorted(sweep.items()):
        probe = f", probe {r['probe_accuracy']:.3f}" if r.get("probe_accuracy") is not None else ""
        print(f"s = {scale:g}: FID {r['fid']:.2f}, precision {r['precision']:.3f}, recall {r['recall']:.3f}{probe}")
    print(f"wrote {output}")
    return 0



def run(args: argparse.Namespace) -> int:
    from ddpm.errors import ConfigError, DataError
    from ddpm.figures.common import save_figure
    from ddpm.figures.curves import metrics_figure
    from ddpm.runlog import read_metrics

    if not 0 <= args.smoothing < 1:
        raise ConfigError(f"--smoothing must be in [0, 1), got {args.smoothing}")
    if args.dpi <= 0:
        raise ConfigError(f"--dpi must be positive, got {args.dpi}")
    if args.guidance:
        return run_guidance(args)
    records = read_metrics(args.run)
    source = Path(args.run)
    run_dir = source if source.is_dir() else source.parent
    output = Path(args.output) if args.output else run_dir / "training_curves.png"
    if not output.parent.exists():
        raise ConfigError(f"cannot write {output}: folder {output.parent} does not exist")
    losses = [r for r in records if "loss" in r]  # the others hold only --fid-every metrics
    if not losses:
        raise DataError(f"{args.run} holds no loss records yet; training writes one every --logging-steps steps")
    first, last = losses[0], losses[-1]
    best = min(losses, key=lambda r: r["loss"])
    title = f"{run_dir.name or run_dir.resolve().name}: {len(losses)} logged points, steps {first['step']}-{last['step']}"
    width, height = save_figure(metrics_figure(records, title, args.smoothing), output, args.dpi)
    print(f"{len(losses)} records, steps {first['step']}..{last['step']}: loss {first['loss']:.4f} -> "
          f"{last['loss']:.4f} (lowest {best['loss']:.4f} at step {best['step']}), lr {last['lr']:.3g}")
    fids = [r for r in records if r.get("fid") is not None]
    if fids:
        print(f"FID (EMA) {fids[-1]['fid']:.4f} at step {fids[-1]['step']} ({len(fids)} evaluations)")
    print(f"wrote {output} ({width}x{height})")
    return 0
