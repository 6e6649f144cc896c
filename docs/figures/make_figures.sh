#!/usr/bin/env bash
# Redraws every figure of README.md and docs/guide.md into docs/figures/.
#
#   bash docs/figures/make_figures.sh [RUN] [DATA]
#
# RUN   the model: the one shipped with the repository (default, models/ddpm-cifar10-cpu.safetensors), a run
#       directory of `ddpm train` (its newest checkpoint) or any file `ddpm sample --load-model` takes
# DATA  the JPEG copy of CIFAR-10, a folder holding train/<class>/*.jpg and test/<class>/*.jpg; default cifar10-jpeg:
#       mkdir -p cifar10-jpeg && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C cifar10-jpeg
#
# Run it from the root of the repository. The commands are the ones shown next to each figure in the documents.
# The first four figures need no model; the others use RUN (the last two only a class-conditional one), the loss
# figure and trajectory-ddpm-eps.png also the eps model models/ddpm-cifar10-cpu-eps.safetensors. Each command
# prints what it drew (checkpoint and step included): put that step in the captions of docs/guide.md when the figures
# come from a new checkpoint.
set -euo pipefail

RUN=${1:-models/ddpm-cifar10-cpu.safetensors}
DATA=${2:-cifar10-jpeg}
[[ -f docs/figures/make_figures.sh ]] || { echo "run this from the root of the repository" >&2; exit 2; }

# The forward process q(x_t | x_0) on real images, linear vs cosine schedule, with alpha-bar_t and SNR(t).
ddpm visualize forward --data-dir "$DATA/train" --num-images 4 --output docs/figures/forward.png

# SNR(t) and what each target (eps, x0, v) and min-SNR-5 weigh at each t (no data, no model).
ddpm visualize loss-weights --output docs/figures/loss-weights.png

# The two UNets (built from the presets, no training needed).
ddpm visualize architecture seed --output docs/figures/architecture-seed.png
ddpm visualize architecture ho2020 --output docs/figures/architecture-ho2020.png

# The unconditional eps-predicting model (Ho et al.'s recipe), shipped beside RUN: the loss figure and one trajectory
# draw it beside RUN, the contrast of sections 4 and 6 of the guide.
EPS=models/ddpm-cifar10-cpu-eps.safetensors

# Loss per timestep of the trained model(s) on held-out (test) images, on the same t and eps.
ddpm visualize loss-vs-t "$RUN" ${EPS:+"$EPS"} --data-dir "$DATA/test" --num-images 256 \
    --output docs/figures/loss-vs-t.png

# The reverse process: x_t and the predicted x_0, with all T = 1000 DDPM steps, with 50 DDIM steps, and with
# 20 DPM-Solver++(2M) steps, from the same seeds (the same x_T).
ddpm visualize trajectory "$RUN" --sampler ddpm --seeds 0 1 2 --every 100 --gif-frames 40 --scale 2 \
    --output docs/figures/trajectory-ddpm.png
[[ -z $EPS ]] || ddpm visualize trajectory "$EPS" --sampler ddpm --seeds 0 1 2 --every 100 --gif-frames 40 --scale 2 \
    --output docs/figures/trajectory-ddpm-eps.png
ddpm visualize trajectory "$RUN" --sampler ddim --sampling-steps 50 --seeds 0 1 2 --every 5 --gif-frames 25 \
    --scale 2 --output docs/figures/trajectory-ddim.png
ddpm visualize trajectory "$RUN" --sampler dpm++2m --sampling-steps 20 --seeds 0 1 2 --every 2 --gif-frames 20 \
    --scale 2 --output docs/figures/trajectory-dpmpp2m.png

# The README's Results grid: 64 samples of the EMA weights with 50 DDIM steps (seeds 0..63).
ddpm sample --load-model "$RUN" --num-samples 64 --sampler ddim --sampling-steps 50 \
    --output docs/figures/results-samples.png

# The variational bound (Ho et al. 2020, eq. 5) of 48 test images with all 1000 terms (48,000 network calls: about
# 12 minutes on one core of the 2-core CPU; skipped when docs/figures/nll.json exists, delete it to measure again),
# then its terms against t and rate against distortion (Fig. 5).
[[ -f docs/figures/nll.json ]] || ddpm nll "$RUN" --data-dir "$DATA/test" --num-images 48 --batch-size 48 --json \
    > docs/figures/nll.json
ddpm visualize rate-distortion docs/figures/nll.json --output docs/figures/rate-distortion.png

# What the model does from a real image's x_t, with 50 or 100 respaced reverse steps (a few minutes each on a CPU):
# samples sharing one x_t (Fig. 7), interpolation in x_t (Fig. 8), inpainting (replacement, then RePaint).
ddpm visualize shared-xt "$RUN" --data-dir "$DATA/test" --timesteps 249 499 749 999 --samples 4 --sampling-steps 50 \
    --output docs/figures/shared-xt.png
ddpm visualize interpolation "$RUN" --data-dir "$DATA/test" --timesteps 99 249 499 --lambdas 7 --sampling-steps 50 \
    --output docs/figures/interpolation.png
ddpm visualize inpainting "$RUN" --data-dir "$DATA/test" --num-images 4 --sampling-steps 100 \
    --output docs/figures/inpainting.png
ddpm visualize inpainting "$RUN" --data-dir "$DATA/test" --num-images 4 --masks centre half --sampling-steps 100 \
    --resample 3 --jump-length 10 --output docs/figures/inpainting-repaint.png

# A class-conditional model (`ddpm train --class-cond`, issue 19): one labelled row per class at the file's
# recommended guidance scale, and one seed per class at guidance scales 0, 1, 2, 4 and 8 side by side.
if python -c 'import sys; from ddpm.model_io import load_model; sys.exit(not load_model(sys.argv[1]).config.model.class_cond)' "$RUN"; then
    ddpm visualize classes "$RUN" --per-class 10 --sampler ddim --sampling-steps 50 --output docs/figures/classes.png
    ddpm visualize guidance "$RUN" --scales 0,1,2,4,8 --sampler ddim --sampling-steps 50 \
        --output docs/figures/guidance.png
fi
