"""Cost of vmapped seeds, on one device and split over several: wall-clock of 1, 16 and 64 PPO
seeds in one program (CartPole), each device count in a fresh process (on CPU, simulated
devices: ``--xla_force_host_platform_device_count``), the seeds split by
``experiments.runner.seed_sharding``'s ``NamedSharding``.

Targets on a 2-core CPU: 64 seeds cost at most 8x one seed; 2 devices give at least 1.7x the
throughput of 1 at the same seeds.

    python -m benchmarks.seed_scaling                       # 1 and 2 simulated devices
    python -m benchmarks.seed_scaling --devices 1 --seeds 1 16
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import tyro

import envs
from agents.core import seed_sharding
from agents.ppo import PPOConfig, make_ppo
from benchmarks.timing import write_json


@dataclasses.dataclass
class Args:
    seeds: tuple[int, ...] = (1, 16, 64)
    devices: tuple[int, ...] = (1, 2)  # device counts; on CPU, simulated ones
    total_steps: int = 102_400  # per seed; PureJaxRL's CartPole settings otherwise
    repeats: int = 3
    out: str | None = None
    child: bool = False  # internal: measure on this process's devices, print JSON rows


def measure(args: Args) -> list[dict]:
    """Rows for this process's devices: seeds, compile_s, run_s (median), env_steps_per_s."""
    env, params = envs.make("gymnax:CartPole-v1")
    train = make_ppo(PPOConfig(total_steps=args.total_steps), env, params).train
    rows = []
    for n in args.seeds:
        if n % jax.device_count():
            continue  # seeds must divide over the devices
        sharding = seed_sharding(n)
        keys = jax.device_put(jax.random.split(jax.random.key(0), n), sharding)
        t0 = time.perf_counter()
        program = jax.jit(jax.vmap(train), in_shardings=sharding, out_shardings=sharding)
        fn = program.lower(keys).compile()
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(keys))
            times.append(time.perf_counter() - t0)
        run_s = float(np.median(times))
        rows.append(
            {"devices": jax.device_count(), "seeds": n, "compile_s": compile_s, "run_s": run_s,
             "env_steps_per_s": n * args.total_steps / run_s}
        )  # fmt: skip
    return rows


def main(args: Args) -> list[dict]:
    if args.child:
        print("ROWS " + json.dumps(measure(args)))
        return []
    rows = []
    for d in args.devices:
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={d}"
        cmd = [sys.executable, "-m", "benchmarks.seed_scaling", "--child", "--devices", str(d),
               "--seeds", *map(str, args.seeds), "--total-steps", str(args.total_steps),
               "--repeats", str(args.repeats)]  # fmt: skip
        done = subprocess.run(
            cmd, env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True
        )
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        line = next(x for x in done.stdout.splitlines() if x.startswith("ROWS "))
        rows += json.loads(line[5:])
    one = {r["seeds"]: r for r in rows if r["devices"] == rows[0]["devices"]}
    base = rows[0]["run_s"]
    print("| devices | seeds | compile s | run s (median) | env steps/s | cost vs 1 seed, 1 device "
          "| throughput vs first device count |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["cost_ratio"] = r["run_s"] / base
        same = one.get(r["seeds"])
        r["speedup"] = same["run_s"] / r["run_s"] if same else float("nan")
        print(
            f"| {r['devices']} | {r['seeds']} | {r['compile_s']:.1f} | {r['run_s']:.2f} | "
            f"{r['env_steps_per_s']:,.0f} | {r['cost_ratio']:.2f}x | {r['speedup']:.2f}x |"
        )
    return write_json(args.out, rows)


if __name__ == "__main__":
    main(tyro.cli(Args))
