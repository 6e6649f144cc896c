"""``ddpm fid A B``: FID, KID and precision/recall of images A against reference images B, as the papers measure them.

A and B may each be a folder of images (recursive), a .zip/.tar(.gz) of images, an .npz of uint8 images
(``arr_0``, N x H x W x 3, as ``ddpm sample --npz`` and OpenAI's evaluator write), an .npz of statistics saved
with ``--save-stats`` (or any .npz with ``mu`` and ``sigma``), or a built-in reference: cifar10-train or cifar10-test,
computed from the CIFAR-10 python pickles on first use and cached in $DDPM_CACHE_DIR (default ~/.cache/ddpm).
Papers compare 50,000 samples against the training set: ``ddpm fid samples.npz cifar10-train --num-images 50000``.
Features are Inception pool3 (2048-d), the network of the reference TensorFlow code; see docs/fid.md.
"""

from __future__ import annotations

import argparse
import sys

from ddpm.commands.options import HelpFormatter, positive_int
from ddpm.config import DEVICES


def register(subparsers) -> None:
    parser = subparsers.add_parser("fid", help="FID, KID and precision/recall of images against a reference",
                                   description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("a", metavar="A", help="images to evaluate (e.g. samples): folder, archive, .npz or built-in")
    parser.add_argument("b", metavar="B", nargs="?", default=None,
                        help="reference images or statistics, same kinds as A; may be omitted with --save-stats")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where the Inception network runs (auto: CUDA, else MPS, else the CPU)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per Inception forward pass")
    parser.add_argument("--data-dir", default=None, metavar="PATH",
                        help="folder with cifar-10-batches-py/ or cifar-10-python.tar.gz for the built-in references; "
                             "None: ./data, where CIFAR-10 is downloaded if absent")
    parser.add_argument("--save-stats", default=None, metavar="FILE.npz",
                        help="save A's statistics and features (for KID, precision/recall) to reuse as A or B later")
    parser.add_argument("--num-images", type=positive_int, default=None, metavar="N",
                        help="use the first N images of A and of B, an error if either has fewer; None: all")
    parser.set_defaults(func=run)


def _print_unavailable(reason: str, metrics: tuple[str, ...] = ("KID", "precision", "recall")) -> None:
    for metric in metrics:
        print(f"{metric}: unavailable ({reason})")


def run(args: argparse.Namespace) -> int:
    from ddpm.errors import ConfigError, DataError
    from ddpm.metrics import fid, kernel_inception_distance, load_source, precision_recall, source_kind

    if args.b is None and args.save_stats is None:
        raise ConfigError("give a reference B to compare A with, or --save-stats FILE.npz to only save A's statistics")
    if args.save_stats is not None and not args.save_stats.endswith(".npz"):
        raise ConfigError(f"--save-stats {args.save_stats}: the file name must end in .npz")
    for source in (args.a, args.b):
        if source is not None:
            source_kind(source)  # fail on a wrong B now, not after minutes of Inception passes over A
    options = dict(data_dir=args.data_dir, num_images=args.num_images, batch_size=args.batch_size,
                   device=args.device)
    a = load_source(args.a, **options)
    print(f"A: {args.a} ({a.num_images or 'unknown number of'} images)", file=sys.stderr)
    if args.save_stats is not None:
        a.save(args.save_stats)
        print(f"saved the statistics of A to {args.save_stats}", file=sys.stderr)
    if args.b is None:
        return 0
    b = load_source(args.b, **options)
    print(f"B: {args.b} ({b.num_images or 'unknown number of'} images)", file=sys.stderr)

    print(f"FID: {fid(a, b):.4f}", flush=True)
    without = [name for name, stats in (("A", a), ("B", b)) if stats.features is None]
    if without:
        verb = "is" if len(without) == 1 else "are"
        _print_unavailable(f"{' and '.join(without)} {verb} statistics without features")
        return 0
    # Too few images for KID or precision/recall is reported, not fatal: the FID above still stands.
    try:
        kid_mean, kid_std = kernel_inception_distance(a.features, b.features)
        print(f"KID: {kid_mean:.6f} ± {kid_std:.6f}", flush=True)
    except DataError as exc:
        _print_unavailable(str(exc), ("KID",))
    try:
        precision, recall = precision_recall(real=b.features, fake=a.features, device=args.device)
        print(f"precision: {precision:.4f}\nrecall: {recall:.4f}")
    except DataError as exc:
        _print_unavailable(str(exc), ("precision", "recall"))
    return 0
