"""PSEC's costs: LoRA skill training against full fine-tuning, and composed-policy acting.

On HalfCheetah shapes (17-D observations, 6-D actions) with the reference's noise network
(width 256, 3 blocks, T = 5): gradient steps/s of a LoRA skill (base frozen) against full
fine-tuning of the same network in the same run, the parameters a skill trains as a fraction
of the base, and the composed policy's action latency (batch 1) and throughput (batch 1024)
for 1, 4 and 16 skills, by mix (parameter space with fixed or context-aware weights, noise
space, action space).

    python -m benchmarks.psec
    python -m benchmarks.psec --skills 1 4 --batches 1 --repeats 3
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import tyro

import envs
from agents import lora
from agents.diffusion_policy import (
    ContextAlpha,
    DiffusionPolicyConfig,
    diffusion_policy,
    make_diffusion_bc,
    num_trainable,
)
from agents.replay import Transition
from benchmarks.timing import timed, write_json

OBS_DIM, ACT_DIM = 17, 6


@dataclasses.dataclass
class Args:
    width: int = 256
    rank: int = 8
    batch_size: int = 256  # training batch
    train_steps: int = 50  # gradient steps per timed call
    skills: tuple[int, ...] = (1, 4, 16)
    batches: tuple[int, ...] = (1, 1024)  # acting batch sizes
    mixes: tuple[str, ...] = ("param", "context", "noise", "action")
    repeats: int = 5
    out: str | None = None


def main(args: Args) -> dict:
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform})")
    env, env_params = envs.make("HalfCheetah", backend="native")
    n = 10_000
    k_obs, k_act = jax.random.split(jax.random.key(0))
    obs = jax.random.normal(k_obs, (n, OBS_DIM))
    action = jax.random.uniform(k_act, (n, ACT_DIM), minval=-1, maxval=1)
    zeros = jnp.zeros((n,))
    data = Transition(obs, action, zeros, obs, zeros.astype(bool), zeros.astype(bool))
    config = DiffusionPolicyConfig(
        width=args.width,
        batch_size=args.batch_size,
        total_steps=args.train_steps,
        eval_every=args.train_steps,
        eval_episodes=0,
    )
    base_agent = make_diffusion_bc(config, data, env, env_params)
    base = base_agent.policy_params(jax.jit(base_agent.init)(jax.random.key(1)))["net"]
    train = {}
    for name, cfg in (("full fine-tuning", config), ("LoRA skill", config.replace(rank=args.rank))):
        agent = make_diffusion_bc(cfg, data, env, env_params, base=base)
        state = jax.jit(agent.init)(jax.random.key(2))
        compile_s, run_s = timed(lambda s, a=agent: a.update(s), state, repeats=args.repeats)
        train[name] = {"steps_per_s": args.train_steps / run_s, "compile_s": compile_s}
    adapter, total = num_trainable(config.replace(rank=args.rank), OBS_DIM, ACT_DIM)
    ratio = train["LoRA skill"]["steps_per_s"] / train["full fine-tuning"]["steps_per_s"]
    print(f"\nbatch {args.batch_size}, width {args.width}, rank {args.rank}")
    print("| training | gradient steps/s | compile s |\n|---|---|---|")
    for name, r in train.items():
        print(f"| {name} | {r['steps_per_s']:.1f} | {r['compile_s']:.1f} |")
    print(f"LoRA / full fine-tuning: {ratio:.2f}x steps/s; a skill trains {adapter:,} of "
          f"{total:,} parameters ({100 * adapter / total:.2f}%)")  # fmt: skip

    units = {"obs_mean": [0.0] * OBS_DIM, "obs_std": [1.0] * OBS_DIM}
    units |= {"action_low": [-1.0] * ACT_DIM, "action_high": [1.0] * ACT_DIM}
    rows = []
    print(
        "\n| mix | skills | batch | ms per act | actions/s | compile s |\n|---|---|---|---|---|---|"
    )
    for mix in args.mixes:
        policy = diffusion_policy(units, config.net, config.num_steps, mix=mix)
        for k in args.skills:
            adapters = lora.stack(
                [lora.init_adapter(jax.random.key(i), base, args.rank) for i in range(k)]
            )
            params = {"net": base, "adapters": adapters}
            if mix == "context":
                params["alpha"] = ContextAlpha(k).init(jax.random.key(3), obs[:1])
            else:
                params["weights"] = jnp.full((k,), 1.0 / k)
            for b in args.batches:
                act = lambda p, o, key, policy=policy: policy.act(p, (), o, key)[1]
                compile_s, run_s = timed(
                    act, params, obs[:b], jax.random.key(4), repeats=args.repeats
                )
                row = {
                    "mix": mix,
                    "skills": k,
                    "batch": b,
                    "ms": 1e3 * run_s,
                    "compile_s": compile_s,
                }
                rows.append(row | {"actions_per_s": b / run_s})
                cells = f"{1e3 * run_s:.2f} | {b / run_s:,.0f} | {compile_s:.1f}"
                print(f"| {mix} | {k} | {b} | {cells} |")
    result = {"device": str(device), "training": train, "lora_vs_full": ratio}
    result |= {"adapter_params": adapter, "base_params": total, "acting": rows}
    return write_json(args.out, result)


if __name__ == "__main__":
    main(tyro.cli(Args))
