"""``ddpm eval CHECKPOINT``: sample N images and score them (FID, KID, precision/recall) against a reference.

Samples are scored batch by batch as they are drawn (no PNGs unless --keep-samples). Each evaluated step count
prints one summary line and appends one JSON line to eval.jsonl in the checkpoint's folder (the run directory, or
the diffusers folder itself):
checkpoint, step, weights, sampler, steps, N, FID, KID, KID std, precision, recall, wall time and reference.
A comma list of step counts is a sweep: every point uses the same seeds, and FID against network evaluations
(NFE, = steps for these samplers) is plotted to fid_vs_nfe.png in the run directory.
Published CIFAR-10 FIDs use 50,000 samples of the EMA weights against cifar10-train; see docs/fid.md.
A class-conditional model draws image i of class i mod K (class-balanced) at --guidance-scale (default: the model's
recommended scale); a comma list of scales is a sweep, one JSON line per scale, plotted as FID, precision and recall
against the scale (fid_vs_guidance.png). --probe DATA adds how often a linear probe on Inception features recognises
the class asked for, beside its accuracy on real test images (the ceiling).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpm.commands.options import (
    GUIDANCE_HELP, MODEL_SOURCES, HelpFormatter, add_amp_argument, add_compile_argument, add_sampler_arguments,
    add_variance_argument, conditioning, guidance_scales, positive_int,
)
from ddpm.config import DEVICES, MIN_EVAL_SAMPLES

EXAMPLE = """examples:
  ddpm eval runs/cifar10 --num-samples 50000 --sampler ddpm --sampling-steps 1000 --batch-size 500
  ddpm eval runs/cifar10 --num-samples 10000 --sampler ddim --sampling-steps 10,20,50,100
  ddpm eval runs/cond --num-samples 1000 --sampler ddim --sampling-steps 50 --guidance-scale 0,1,1.5,2,3,5 \
      --reference train5k.npz --probe cifar10-jpeg"""


def _step_list(text: str) -> list[int]:
    """``"10,20,50"`` -> [10, 20, 50]: positive, without repeats, in the given order."""
    try:
        steps = [positive_int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}") from None
    if len(set(steps)) != len(steps):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a step count")
    return steps


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="sample from a checkpoint and compute FID, KID, precision/recall",
                                   description=__doc__, epilog=EXAMPLE, formatter_class=HelpFormatter)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help=MODEL_SOURCES)
    parser.add_argument("--num-samples", type=positive_int, default=50_000, metavar="N",
                        help="images to sample per step count (papers: 50,000; FID is biased upwards for fewer)")
    add_sampler_arguments(parser)
    parser.add_argument("--sampling-steps", type=_step_list, default=None, metavar="K[,K...]",
                        help="network evaluations per image (1000 for Ho et al.'s FID); a comma list is a sweep; "
                             "default: the file's recommendation with its sampler, else the sampler's default")
    parser.add_argument("--reference", default="cifar10-train",
                        help="what to compare with: cifar10-train, cifar10-test, or any images or statistics that "
                             "`ddpm fid` accepts as B (folder, archive, .npz)")
    parser.add_argument("--data-dir", default=None, metavar="PATH",
                        help="folder with cifar-10-batches-py/ or cifar-10-python.tar.gz for the built-in references; "
                             "None: ./data, where CIFAR-10 is downloaded if absent (only when not yet cached)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per sampling batch")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed SEED + i, at every step count")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema",
                        help="EMA (what papers report) or raw training weights")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where sampling and Inception run (auto: CUDA, else MPS, else the CPU)")
    parser.add_argument("--keep-samples", default=None, metavar="DIR",
                        help="also write the samples as PNGs named by seed; a sweep writes DIR/<sampler>-<steps>/")
    parser.add_argument("--guidance-scale", type=guidance_scales, default=None, metavar="S[,S...]",
                        help=GUIDANCE_HELP + "; a comma list is a sweep")
    parser.add_argument("--probe", default=None, metavar="DATA",
                        help="class-conditional models: also report how often a linear probe on Inception features "
                             "recognises the class asked for, fitted on DATA's train images and scored on its test "
                             "images: CIFAR-10's pickles, or a folder or archive with train/<class>/ and "
                             "test/<class>/ (the CIFAR-10 JPEG copy); features cached after the first run")
    parser.add_argument("--probe-images", type=_step_list, default=[200, 100], metavar="TRAIN,TEST",
                        help="images per class the probe is fitted on and tested on (their Inception features are "
                             "computed once and cached)")
    add_compile_argument(parser)
    add_amp_argument(parser)
    add_variance_argument(parser)
    parser.set_defaults(func=run)


def _summary(record: dict) -> str:
    """One line: what was evaluated, then the metrics (``n/a`` for those a features-less reference rules out)."""

    def show(key: str, fmt: str) -> str:
        return "n/a" if record[key] is None else format(record[key], fmt)

    guidance = f" | guidance {record['guidance_scale']:g}" if "guidance_scale" in record else ""
    probe = (f" | probe {record['probe_accuracy']:.4f} (real test images {record['probe_test_accuracy']:.4f})"
             if "probe_accuracy" in record else "")
    return (f"step {record['step']} {record['weights']} | {record['sampler']} {record['steps']} steps{guidance} | "
            f"{record['num_samples']} samples vs {record['reference']} | FID {record['fid']:.4f} | "
            f"KID {show('kid', '.6f')} ± {show('kid_std', '.6f')} | precision {show('precision', '.4f')} | "
            f"recall {show('recall', '.4f')}{probe} | {record['wall_sec']:.1f} s")


def run(args: argparse.Namespace) -> int:
    import torch

    from ddpm.distributed import resolve_device, sampling_amp
    from ddpm.errors import ConfigError
    from ddpm.evaluate import FID_PLOT, GUIDANCE_PLOT, check_steps, evaluate, plot_fid_vs_nfe, plot_guidance_sweep
    from ddpm.metrics import load_source, source_kind
    from ddpm.runlog import append_eval, eval_record
    from ddpm.model_io import load_model
    from ddpm.samplers import default_steps

    if args.num_samples < MIN_EVAL_SAMPLES:
        raise ConfigError(f"--num-samples must be at least {MIN_EVAL_SAMPLES} (precision/recall use the 3rd nearest "
                          f"neighbour), got {args.num_samples}")
    # Every check that can fail comes before the reference statistics, which take hours on a CPU the first time.
    kind = source_kind(args.reference)
    device = resolve_device(args.device)
    loaded = load_model(args.checkpoint, device, args.weights, args.variance)
    conditioning(loaded, None, args.guidance_scale)
    if args.probe is not None and not loaded.config.model.class_cond:
        raise ConfigError(f"{loaded.source} is not class-conditional, so --probe does not apply")
    scales = args.guidance_scale or [None]
    if len(scales) > 1 and args.sampling_steps and len(args.sampling_steps) > 1:
        raise ConfigError("sweep --sampling-steps or --guidance-scale, not both at once")
    sampler, steps, spacing = loaded.config.diffusion.sampling(args.sampler, None, args.time_spacing)
    step_list = args.sampling_steps or [default_steps(sampler, loaded.diffusion.timesteps) if steps is None else steps]
    check_steps(loaded.diffusion, sampler, step_list)
    run_dir = loaded.source if loaded.source.is_dir() else loaded.source.parent  # a diffusers folder is its own
    print(f"{loaded.source} (step {loaded.step}, {loaded.weights} weights); results go to {run_dir}",
          file=sys.stderr)

    probe = None
    if args.probe is not None:
        from ddpm.probe import load_probe

        train_per_class, test_per_class = (args.probe_images * 2)[:2]
        m = loaded.config.model
        probe = load_probe(args.probe, train_per_class, test_per_class, m.in_channels, m.resolution, args.device)
    reference = load_source(args.reference, data_dir=args.data_dir, device=args.device)
    model = torch.compile(loaded.model) if args.compile else loaded.model
    reference_name = args.reference if kind == "reference" else str(Path(args.reference).resolve())
    sweep = len(step_list) > 1
    records = []
    for steps in step_list:
        for scale in scales:
            keep = None
            if args.keep_samples:
                name = f"{sampler}-{steps}" + (f"-s{scale:g}" if len(scales) > 1 else "")
                keep = Path(args.keep_samples) / name if sweep or len(scales) > 1 else Path(args.keep_samples)
            result = evaluate(model, loaded.diffusion, reference, args.num_samples, sampler, steps, args.seed,
                              args.batch_size, device, keep, amp=sampling_amp(device, args.amp), guidance_scale=scale,
                              probe=probe, spacing=spacing)
            record = eval_record(result, checkpoint=loaded.source, step=loaded.step, weights=loaded.weights,
                                 reference=reference_name, reference_images=reference.num_images)
            append_eval(run_dir, record)
            records.append(record)
            print(_summary(record), flush=True)
    title = f"{sampler} ({spacing}), {args.num_samples} samples, step {loaded.step} ({loaded.weights})"
    if sweep:
        print(f"wrote {plot_fid_vs_nfe(records, run_dir / FID_PLOT, title)}")
    if len(scales) > 1:
        title = f"{sampler} {step_list[0]} steps, {args.num_samples} samples, step {loaded.step}"
        print(f"wrote {plot_guidance_sweep(records, run_dir / GUIDANCE_PLOT, title)}")
    return 0
