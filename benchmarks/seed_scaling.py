"""Cost of vmapped seeds: wall-clock of 1 vs 16 vs 64 PPO seeds in one program (CartPole).

Target on a 2-core CPU: 64 seeds cost at most 8x one seed.

    python -m benchmarks.seed_scaling
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import tyro

import envs
from agents.ppo import PPOConfig, make_ppo
from benchmarks.timing import write_json


@dataclasses.dataclass
class Args:
    seeds: tuple[int, ...] = (1, 16, 64)
    total_steps: int = 102_400  # per seed; PureJaxRL's CartPole settings otherwise
    repeats: int = 3
    out: str | None = None


def main(args: Args) -> list[dict]:
    env, params = envs.make("gymnax:CartPole-v1")
    train = make_ppo(PPOConfig(total_steps=args.total_steps), env, params).train
    rows = []
    for n in args.seeds:
        keys = jax.random.split(jax.random.key(0), n)
        t0 = time.perf_counter()
        fn = jax.jit(jax.vmap(train)).lower(keys).compile()
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(keys))
            times.append(time.perf_counter() - t0)
        run_s = float(np.median(times))
        rows.append(
            {
                "seeds": n,
                "compile_s": compile_s,
                "run_s": run_s,
                "env_steps_per_s": n * args.total_steps / run_s,
            }
        )
    base = rows[0]["run_s"]
    print("| seeds | compile s | run s (median) | env steps/s | cost vs 1 seed |")
    print("|---|---|---|---|---|")
    for r in rows:
        r["cost_ratio"] = r["run_s"] / base
        print(
            f"| {r['seeds']} | {r['compile_s']:.1f} | {r['run_s']:.2f} | "
            f"{r['env_steps_per_s']:,.0f} | {r['cost_ratio']:.2f}x |"
        )
    return write_json(args.out, rows)


if __name__ == "__main__":
    main(tyro.cli(Args))
