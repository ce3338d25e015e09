"""One table of what this machine's first device does, in a few minutes on any machine.

    python -m benchmarks.accelerator                      # CPU here, GPU/TPU there, unchanged
    python -m benchmarks.accelerator --out results/benchmarks/accelerator.json

Rows (each with its compile time and the device kind):
- gridworld env steps/s at batch 65,536 (random actions, observations every step, auto-reset);
- MJX HalfCheetah env steps/s at batch 4,096 (5 physics steps each);
- PPO on gymnax CartPole-v1 (PureJaxRL's settings): training seconds until the greedy return
  (64 episodes, checked every 10,240 env steps) reaches 475;
- TD3+BC gradient steps/s on 1 and 64 vmapped seeds (HalfCheetah-sized data, 256x256, batch 256);
- SynthER's paper-width denoiser (2048 x 6 blocks, 25.6M parameters): training steps/s at
  batch 256 and samples/s with the paper's 128-step Heun sampler.

On an accelerator each timed call does a full-size chunk of work; on a CPU the TD3+BC, MJX and
diffusion rows time smaller chunks (the rates are per step either way), so the whole table
stays within minutes. Targets on one GPU: >= 100M gridworld steps/s, >= 1M MJX steps/s and
>= 5,000 TD3+BC steps/s per seed; they are printed beside the figures.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import tyro

import envs
from agents.diffusion import PRESETS, make_diffusion, num_params
from agents.td3_bc import TD3BCConfig, make_td3_bc
from benchmarks import gridworld_throughput as gw
from benchmarks import ppo_cartpole
from benchmarks.diffusion_throughput import DATA_DIM
from benchmarks.offline_throughput import synthetic_dataset
from benchmarks.timing import timed, write_json
from envs.wrappers import Normalizer

TARGETS = {"gridworld": 100e6, "mjx": 1e6, "td3_bc": 5_000}  # per second, one GPU


@dataclasses.dataclass
class Args:
    gridworld: str = "MultiSkill"  # an envs.make gridworld
    gridworld_batch: int = 65_536
    mjx_batch: int = 4_096
    ppo_chunks: int = 50  # of 10,240 env steps: PureJaxRL's 500k-step budget
    td3_seeds: tuple[int, ...] = (1, 64)
    td3_steps: int = 0  # gradient steps per timed call (0: 1,000 on accelerators, 50 on CPU)
    diffusion_width: int = 2048
    diffusion_steps: int = 0  # training steps per timed call (0: 100 / 2)
    sample_batch: int = 0  # samples per timed call (0: 10,000 / 16)
    target_seconds: float = 2.0  # gridworld and MJX: duration of each timed call
    repeats: int = 3
    out: str | None = None  # write the rows as JSON here


def main(args: Args) -> list[dict]:
    device = jax.devices()[0]
    accelerator = device.platform != "cpu"
    pick = lambda given, fast, slow: given or (fast if accelerator else slow)
    kind = f"{device.device_kind} ({device.platform})"
    print(f"device: {kind}; {jax.device_count()} device(s); only the first is used", flush=True)
    rows: list[dict] = []

    def row(what: str, value: float, unit: str, compile_s: float, target: float | None = None):
        rows.append({"what": what, "value": value, "unit": unit, "compile_s": compile_s,
                     "target": target, "device": kind})  # fmt: skip
        print(f"{what}: {value:,.1f} {unit} (compile {compile_s:.1f} s)", flush=True)

    # environments: the throughput benchmarks' own timed loop
    config = gw.Config(target_seconds=args.target_seconds, repeats=args.repeats)
    m = gw.measure(args.gridworld, gw.env_rollout, args.gridworld_batch, config)
    row(f"{args.gridworld} env steps/s, batch {m.batch_size:,}", m.steps_per_s, "steps/s",
        m.compile_s, TARGETS["gridworld"])  # fmt: skip
    mjx = dataclasses.replace(config, scan_length=16 if accelerator else 1, repeats=1)
    mjx_rollout = functools.partial(gw.env_rollout, backend="mjx")
    m = gw.measure("HalfCheetah", mjx_rollout, args.mjx_batch, mjx)
    row(f"MJX HalfCheetah env steps/s, batch {m.batch_size:,}", m.steps_per_s, "steps/s",
        m.compile_s, TARGETS["mjx"])  # fmt: skip

    # PPO on CartPole: training time until the greedy return reaches 475
    env, params = envs.make("gymnax:CartPole-v1")
    checks = ppo_cartpole.Args(seeds=1, chunks=args.ppo_chunks, updates_per_chunk=20)
    ppo = ppo_cartpole.ours(env, params, 0, checks)
    reached = ppo["seconds_to_target"]
    row("PPO CartPole-v1 training s to greedy return 475" + (" (never)" if reached is None
        else ""), reached or float("nan"), "s", ppo["compile_s"])  # fmt: skip

    # TD3+BC: vmapped seeds, one program per seed count
    steps = pick(args.td3_steps, 1_000, 50)
    data = synthetic_dataset(200_000)
    env, params = envs.make("HalfCheetah")  # only checks the data: no evaluation here
    td3_config = TD3BCConfig(eval_every=steps, eval_episodes=0, total_steps=steps)
    td3 = make_td3_bc(td3_config, data, env, params)
    for seeds in args.td3_seeds:
        keys = jax.random.split(jax.random.key(0), seeds)
        states = jax.jit(jax.vmap(td3.init))(keys)
        update = jax.vmap(lambda s: td3.update(s)[0])
        compile_s, run_s = timed(update, states, repeats=args.repeats)
        row(f"TD3+BC gradient steps/s per seed, {seeds} seed(s)", steps / run_s, "steps/s",
            compile_s, TARGETS["td3_bc"])  # fmt: skip

    # SynthER's paper-width denoiser: training and 128-step Heun sampling
    width, n_train = args.diffusion_width, pick(args.diffusion_steps, 100, 2)
    batch = pick(args.sample_batch, 10_000, 16)
    diffusion = make_diffusion(PRESETS["reference"].replace(width=width), DATA_DIM)
    vectors = jax.random.normal(jax.random.key(0), (100_000, DATA_DIM))
    state = diffusion.init(jax.random.key(1), Normalizer.fit(vectors, ddof=1, eps=1e-5))
    key = jax.random.key(2)
    train = lambda s, k: diffusion.train(s, vectors, k, num_steps=n_train)
    compile_s, run_s = timed(train, state, key, repeats=args.repeats)
    size = f"width {width}, {num_params(state.ema_params) / 1e6:.1f}M parameters"
    row(f"diffusion training steps/s ({size}, batch 256)", n_train / run_s, "steps/s", compile_s)
    compile_s, run_s = timed(lambda s, k: diffusion.sample(s, k, batch), state, key, repeats=1)
    row(f"diffusion samples/s (128 Heun steps, batch {batch:,})", batch / run_s, "samples/s",
        compile_s)  # fmt: skip

    print("\n| measurement | figure | compile s | target (one GPU) |\n|---|---|---|---|")
    for r in rows:
        target = f">= {r['target']:,.0f}" if r["target"] else ""
        print(f"| {r['what']} | {r['value']:,.1f} {r['unit']} | {r['compile_s']:.1f} | {target} |")
    print(f"\ndevice: {kind}")
    return write_json(args.out, rows)


if __name__ == "__main__":
    main(tyro.cli(Args))
