"""SynthER's diffusion model: training steps/s and samples/s by denoiser width and batch size.

Vectors of HalfCheetah transitions (42 dimensions: s, a, r, s', terminal). Training: one
jitted ``lax.scan`` of ``train_steps`` updates (AdamW, EMA); sampling: the stochastic Heun
sampler over ``sample_steps`` noise levels (the reference uses 128). N levels cost 2N - 1
network evaluations, so CPU runs may measure fewer levels; the table also gives the figure
scaled to 128 levels (255 evaluations).
The peer is the reference PyTorch implementation on this 2-core CPU (``research/platform.md``):
2.53 training steps/s at batch 256 and 0.79 at 1024, and 10.25 samples/s (batch 1000, 128
steps), all at width 2048; ratios are only printed for CPU rows at that width.

Importing ``agents`` makes XLA's CPU matmuls single-threaded (see ``envs/platform.py``);
``SKILL_AGENTS_KEEP_XLA_FLAGS=1`` lets these large, un-vmapped matmuls use every core.

    python -m benchmarks.diffusion_throughput                           # CPU: all widths
    python -m benchmarks.diffusion_throughput --widths 1024 2048 --sample-steps 128   # GPU
"""

from __future__ import annotations

import dataclasses
import json

import jax
import tyro

from agents.diffusion import PRESETS, make_diffusion, num_params
from benchmarks.timing import timed, write_json
from envs.wrappers import Normalizer

DATA_DIM = 2 * 17 + 6 + 2
PEER_TRAIN = {256: 2.53, 1024: 0.79}  # SynthER PyTorch, width 2048, steps/s on this CPU
PEER_SAMPLES = 10.25  # samples/s, batch 1000, 128 Heun steps, width 2048


@dataclasses.dataclass
class Args:
    widths: tuple[int, ...] = (256, 1024, 2048)  # 256: the "cpu" preset; 2048: the reference
    batches: tuple[int, ...] = (256, 1024)
    train_steps: int = 20  # updates per timed call
    sample_steps: int = 8  # Heun noise levels per timed sampling call
    repeats: int = 3
    out: str | None = None


def main(args: Args) -> list[dict]:
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}); data dim {DATA_DIM}")
    data = jax.random.normal(jax.random.key(0), (100_000, DATA_DIM))
    normalizer = Normalizer.fit(data, ddof=1, eps=1e-5, skip_dims=(DATA_DIM - 1,))
    rows = []
    for width in args.widths:
        for batch in args.batches:
            config = PRESETS["reference"].replace(
                width=width, batch_size=batch, num_sample_steps=args.sample_steps
            )
            model = make_diffusion(config, DATA_DIM)
            state = model.init(jax.random.key(1), normalizer)
            key = jax.random.key(2)
            train = lambda s, k, model=model: model.train(s, data, k, num_steps=args.train_steps)
            train_compile, train_s = timed(train, state, key, repeats=args.repeats)
            sample = lambda s, k, model=model, batch=batch: model.sample(s, k, batch)
            sample_compile, sample_s = timed(sample, state, key, repeats=args.repeats)
            row = {
                "width": width,
                "batch": batch,
                "params": num_params(state.ema_params),
                "train_steps_per_s": args.train_steps / train_s,
                "train_compile_s": train_compile,
                "samples_per_s": batch / sample_s,
                # N noise levels cost 2N - 1 network evaluations (the last step is Euler)
                "samples_per_s_128": batch / sample_s * (2 * args.sample_steps - 1) / 255,
                "sample_compile_s": sample_compile,
                "sample_steps": args.sample_steps,
                "device": device.device_kind,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    cpu = device.platform == "cpu"
    print(
        f"\n| width | params | batch | train steps/s | vs PyTorch | samples/s ({args.sample_steps}"
        " steps) | samples/s (128 steps) | vs PyTorch | compile s (train / sample) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peer = cpu and r["width"] == 2048
        train_ratio = f"{r['train_steps_per_s'] / PEER_TRAIN[r['batch']]:.2f}x" if peer else ""
        sample_ratio = f"{r['samples_per_s_128'] / PEER_SAMPLES:.2f}x" if peer else ""
        if r["batch"] not in PEER_TRAIN:
            train_ratio = ""
        print(
            f"| {r['width']} | {r['params'] / 1e6:.1f}M | {r['batch']} | "
            f"{r['train_steps_per_s']:,.1f} | {train_ratio} | {r['samples_per_s']:,.0f} | "
            f"{r['samples_per_s_128']:,.1f} | {sample_ratio} | "
            f"{r['train_compile_s']:.1f} / {r['sample_compile_s']:.1f} |"
        )
    return write_json(args.out, rows)


if __name__ == "__main__":
    main(tyro.cli(Args))
