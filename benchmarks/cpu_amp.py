"""Mixed precision on a CPU: training and forward img/s of float32, ``--amp`` and ``--amp --channels-last``, measured
as ratios in one process, and the loss of the first steps of float32 and bf16 training side by side.

    python benchmarks/cpu_amp.py --preset seed --batch-size 32 --rounds 5              # speed
    python benchmarks/cpu_amp.py --preset seed --batch-size 32 --loss-steps 300 --data-dir cifar10-jpeg/train

Speed: every variant is a real :class:`ddpm.train.Trainer` (forward, backward, clipping, AdamW, EMA) on the same
random batch (``--torch-dropout`` adds float32 and ``--amp`` variants whose dropout layers are PyTorch's own
``nn.Dropout``, the mask before :class:`ddpm.unet.Dropout`); the variants take turns, ``--steps`` steps each per round, so that load from other processes on a small
machine hits them alike, and the median over rounds is reported. Loss: the same run (seed, data order, noise) in
float32 and in bf16, the loss averaged over windows of steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ddpm.config import make_config  # noqa: E402
from ddpm.data import StepBatches, iterate_batches, open_training_data  # noqa: E402
from ddpm.distributed import DistInfo  # noqa: E402
from ddpm.train import Trainer  # noqa: E402

CPU = torch.device("cpu")
RUNS = Path(tempfile.gettempdir()) / "ddpm-cpu-amp"  # run directories the trainers are given; nothing is saved there
VARIANTS = {"float32": (False, False), "amp": (True, False), "amp + channels_last": (True, True)}  # --amp, --channels-last
TORCH_DROPOUT = {"float32, nn.Dropout": (False, False), "amp, nn.Dropout": (True, False)}


def with_torch_dropout(tr: Trainer) -> Trainer:
    """``tr`` with every :class:`ddpm.unet.Dropout` replaced by ``torch.nn.Dropout`` of the same rate."""
    from ddpm.unet import Dropout

    for module in list(tr.model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, name, torch.nn.Dropout(child.p))
    return tr


def trainer(preset: str, batch: int, amp: bool, channels_last: bool, run: str, **train) -> Trainer:
    config = make_config(preset, {"train": dict(save_model=run, device="cpu", batch_size=batch, amp=amp,
                                                channels_last=channels_last, **train)})
    return Trainer(config, DistInfo(0, 0, 1, CPU), log=lambda *a, **k: None)


def speed(args) -> None:
    images = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    variants = {**VARIANTS, **(TORCH_DROPOUT if args.torch_dropout else {})}
    trainers = {name: trainer(args.preset, args.batch_size, *flags, str(RUNS / "speed")) for name, flags in variants.items()}
    for name in TORCH_DROPOUT:
        if name in trainers:
            with_torch_dropout(trainers[name])
    x = torch.randn(args.batch_size, 3, 32, 32)
    t = torch.randint(0, 1000, (args.batch_size,))
    rates: dict[str, dict[str, list[float]]] = {name: {"train": [], "forward": []} for name in trainers}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, tr in trainers.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                tr.train_step(images)
            train_rate = args.steps * args.batch_size / (time.perf_counter() - start)
            amp, channels_last = variants[name]
            xi = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            tr.model.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                start = time.perf_counter()
                for _ in range(args.steps):
                    tr.model(xi, t)
                forward_rate = args.steps * args.batch_size / (time.perf_counter() - start)
            tr.model.train()
            if round_:
                rates[name]["train"].append(train_rate)
                rates[name]["forward"].append(forward_rate)
    base = {k: statistics.median(v) for k, v in rates["float32"].items()}
    print(f"{args.preset} preset, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"median of {args.rounds} rounds of {args.steps} steps")
    print("| variant | train img/s | vs float32 | forward img/s | vs float32 |\n| --- | --- | --- | --- | --- |")
    for name, r in rates.items():
        tr_, fw = statistics.median(r["train"]), statistics.median(r["forward"])
        print(f"| {name} | {tr_:.1f} | {tr_ / base['train']:.2f}x | {fw:.1f} | {fw / base['forward']:.2f}x |")


def loss_curves(args) -> None:
    data = open_training_data(args.data_dir, 32)
    curves = {}
    for name in ("float32", "amp"):
        tr = trainer(args.preset, args.batch_size, *VARIANTS[name], str(RUNS / name),
                     optimizer="adamw", lr=args.lr, warmup_steps=args.warmup_steps)
        batches = StepBatches(len(data), args.batch_size, tr.config.train.seed)
        losses = [tr.train_step(images)[0].item() for images in iterate_batches(data, batches, 0, args.loss_steps, CPU)]
        curves[name] = losses
    w = args.window
    print(f"{args.preset} preset, batch {args.batch_size}, AdamW lr {args.lr}, {args.warmup_steps} warm-up steps; mean "
          f"loss per {w} steps, same seed, data and noise")
    print("| steps | float32 | bf16 autocast | difference |\n| --- | --- | --- | --- |")
    for start in range(0, args.loss_steps, w):
        a = statistics.mean(curves["float32"][start:start + w])
        b = statistics.mean(curves["amp"][start:start + w])
        print(f"| {start + 1}-{start + w} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--torch-dropout", action="store_true",
                        help="also time float32 and amp with torch.nn.Dropout (the mask before ddpm.unet.Dropout)")
    parser.add_argument("--loss-steps", type=int, default=0, help="instead of speed: train this many steps twice")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--window", type=int, default=50)
    args = parser.parse_args()
    loss_curves(args) if args.loss_steps else speed(args)


if __name__ == "__main__":
    main()
