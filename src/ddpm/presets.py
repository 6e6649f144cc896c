"""The presets: named sets of overrides of the config's field defaults (:mod:`ddpm.config`), which are the
``seed`` preset."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The original project's network and its "Parameters used".
    "seed": {},
    # Ho et al. (2020), appendix B: the 35.7M-parameter CIFAR-10 network and its training recipe.
    "ho2020": {
        "model": dict(
            nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
            time_emb_dim=512, activation="silu", norm_groups=32, skip="block",
            # Ho et al.'s TensorFlow code: GroupNorm epsilon 1e-6 and 'SAME' padding of the stride-2 convolutions.
            norm_eps=1e-6, downsample_padding="same",
        ),
        "train": dict(
            optimizer="adamw", lr=2e-4, batch_size=128, warmup_steps=5000, grad_clip=1.0,
            ema_decay=0.9999, total_steps=800_000, lr_schedule="constant",
        ),
    },
    # The CPU recipe: the best sample quality per CPU-hour among the candidates compared in docs/benchmarks.md. A
    # 1.4M-parameter network, bf16 autocast, many small AdamW steps, power EMA warm-up, v-prediction with min-SNR-5.
    "cpu": {
        "model": dict(nf=32, ch_mult=(1, 2, 2), attn_resolutions=(8,), norm_groups=8, time_emb_dim=64, dropout=0.0),
        "diffusion": dict(prediction="v"),
        "train": dict(
            optimizer="adamw", lr=5e-4, batch_size=64, warmup_steps=200, total_steps=1_000_000, amp=True,
            logging_steps=100, checkpoint_every=1000, sample_every=1000, sample_steps=50, num_workers=0,
            loss_weight="min-snr",
        ),
    },
    # A few hundred thousand parameters: CPU smoke runs, tests and the tutorial.
    "tiny": {
        "model": dict(nf=16, ch_mult=(1, 2, 2), attn_resolutions=(8,), norm_groups=8, time_emb_dim=64, dropout=0.0),
        "diffusion": dict(timesteps=100),  # the unset beta range scales to 1e-3 -> 0.2: alpha-bar_T = 2e-5
        "train": dict(
            optimizer="adamw", lr=1e-3, batch_size=16, warmup_steps=10, total_steps=200, ema_decay=0.99,
            logging_steps=10, checkpoint_every=100, sample_every=100, sample_steps=20, num_workers=0,
        ),
    },
}
