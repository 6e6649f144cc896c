"""Score many checkpoints and samplers in one process: a run's FID/KID-against-time curve and a sampler comparison.

On a CPU each 1,000-sample score of the README protocol costs about 10 minutes; on a GPU the whole table takes a few
minutes, which fits a GPU lent briefly. Such a machine is offline and takes at most 64 MiB of files per call, less
than the Inception weights (87 MB) and a run's checkpoints (22 MB each). So ``pack`` writes what travels in float16
and ``score`` runs it in float32:

    python benchmarks/score_checkpoints.py pack PACK RUN/ckpt-00001000.pt ... --inception   # here
    python benchmarks/score_checkpoints.py score OUT --reference PACK/train5k.tar.gz --inception PACK/inception_fp16.pt \\
        --job PACK/ckpt-00001000.safetensors=ddim:50 --job models/ddpm-cifar10-cpu.safetensors=ddim:50,ddpm:1000
    python benchmarks/gpu_check.py --verify-inception OUT/inception_check.npz               # here again

Each ``--job`` is MODEL=SAMPLER:STEPS,...; every pair draws ``--num-samples`` images with seeds 0.. (as ``ddpm eval``)
and is scored against ``--reference`` (a folder, archive or .npz that ``ddpm fid`` takes), optionally beside
``--real`` image sets (the protocol's floor). OUT gets ``results.json`` (one record per score, written as they come),
``grids.npz`` (the first 64 scored images of each pair) and ``inception_check.npz`` (16 samples and their features,
for the comparison with the exact network on a CPU). The float16 Inception weights move the features by about 3e-3 of
their largest value; docs/benchmarks.md lists the FIDs they gave beside the exact network's.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from ddpm.config import DEVICES  # noqa: E402
from ddpm.distributed import resolve_device  # noqa: E402
from ddpm.errors import DDPMError  # noqa: E402
from ddpm.evaluate import sample_features, score  # noqa: E402
from ddpm.files import read_safetensors, safetensors_bytes  # noqa: E402
from ddpm.metrics import inception_features, inception_network, load_source  # noqa: E402
from ddpm.model_io import export_safetensors, load_model  # noqa: E402

INCEPTION_FP16 = "inception_fp16.pt"
GRID = 64  # images per pair kept in grids.npz


def pack(folder: Path, checkpoints: list[str], inception: bool) -> None:
    """float16 copies of checkpoints' EMA weights (``.safetensors``) and, with ``inception``, of the Inception net."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in checkpoints:
        target = folder / (Path(source).stem + ".safetensors")
        export_safetensors(source, target)
        tensors, metadata = read_safetensors(target)
        target.write_bytes(safetensors_bytes({k: v.half() if v.is_floating_point() else v
                                              for k, v in tensors.items()}, metadata))
        print(f"{target}: step {metadata['step']}, {target.stat().st_size / 2**20:.1f} MiB")
    if inception:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is the format these weights ship in
            net = copy.deepcopy(inception_network(torch.device("cpu")))  # the cached one stays float32
            torch.jit.save(net.half(), str(folder / INCEPTION_FP16))
        print(f"{folder / INCEPTION_FP16}: {(folder / INCEPTION_FP16).stat().st_size / 2**20:.1f} MiB")


def parse_job(text: str) -> tuple[str, list[tuple[str, int]]]:
    model, _, pairs = text.partition("=")
    try:
        return model, [(name, int(steps)) for name, steps in (p.split(":") for p in pairs.split(","))]
    except ValueError:
        raise SystemExit(f"score_checkpoints: --job {text!r} is not MODEL=SAMPLER:STEPS[,SAMPLER:STEPS...]") from None


def run_score(args: argparse.Namespace) -> None:
    jobs = [parse_job(job) for job in args.job]
    out, device = Path(args.out), resolve_device(args.device)
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # float32 like a CPU's
    inception, net = "exact (default_1.pt)", None
    if args.inception:  # the float16 copy from `pack`, run in float32 in place of the exact network
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(args.inception, map_location=device).float().eval()
        inception = f"{args.inception}: default_1.pt rounded to float16, run in float32"
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
               "torch": torch.__version__, "inception": inception, "num_samples": args.num_samples, "records": []}

    def record(entry: dict) -> None:
        results["records"].append(entry)
        print(json.dumps(entry), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    start = time.perf_counter()
    reference = load_source(args.reference, device=device.type, progress=False, network=net)
    record({"reference": args.reference, "sec": time.perf_counter() - start})
    for source in args.real:
        features = load_source(source, device=device.type, progress=False, network=net).features
        record({"real": source, "images": len(features), **score(features, reference, args.seed, device.type)})
    grids: dict[str, np.ndarray] = {}
    for model_path, pairs in jobs:
        loaded = load_model(model_path, device)
        for sampler, steps in pairs:
            grid: list[np.ndarray] = []  # the first GRID of the scored images, not sampled a second time

            def keep(_seeds: list[int], images: torch.Tensor) -> None:
                grid.append(images[:GRID - sum(map(len, grid))].numpy())

            start = time.perf_counter()
            features = sample_features(loaded.model, loaded.diffusion, args.num_samples, sampler, steps, args.seed,
                                       args.batch_size, device, progress=False, network=net, on_batch=keep)
            sampling_sec = time.perf_counter() - start
            grids[f"{Path(model_path).stem}_{sampler}{steps}"] = np.concatenate(grid)
            record({"model": model_path, "step": loaded.step, "sampler": sampler, "steps": steps,
                    "sample_and_features_sec": sampling_sec, **score(features, reference, args.seed, device.type)})
    if not grids:  # only --real sets were scored
        return
    np.savez_compressed(out / "grids.npz", **grids)
    check = next(iter(grids.values()))[:16]
    features = inception_features(torch.from_numpy(check).permute(0, 3, 1, 2), device=device.type, progress=False,
                                  network=net)
    np.savez(out / "inception_check.npz", images=check, features=features, device=f"{device.type}, {inception}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="float16 copies of checkpoints (and the Inception net) to carry")
    p.add_argument("folder", type=Path)
    p.add_argument("checkpoints", nargs="*", help="run directories or checkpoint .pt files")
    p.add_argument("--inception", action="store_true", help=f"also write {INCEPTION_FP16}")
    s = commands.add_parser("score", help="sample and score every --job against --reference")
    s.add_argument("out")
    s.add_argument("--reference", required=True, help="images (folder, archive) or statistics (.npz) to compare with")
    s.add_argument("--real", action="append", default=[], help="real image sets scored like samples (repeatable)")
    s.add_argument("--job", action="append", default=[], help="MODEL=SAMPLER:STEPS[,...] (repeatable)")
    s.add_argument("--inception", default=None, help=f"the {INCEPTION_FP16} of `pack` instead of the exact file")
    s.add_argument("--num-samples", type=int, default=1000)
    s.add_argument("--batch-size", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", choices=DEVICES, default="auto")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            pack(args.folder, args.checkpoints, args.inception)
        else:
            run_score(args)
    except DDPMError as exc:  # bad input: one line, no traceback, as the ddpm commands do
        raise SystemExit(f"score_checkpoints: {exc}") from None


if __name__ == "__main__":
    main()
