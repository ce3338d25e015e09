"""MuJoCo throughput: env steps/s of the native and MJX backends next to Gymnasium itself.

Ours: ``jax.lax.scan`` over ``jax.vmap(env.step)`` with uniformly random actions drawn inside
the scan, auto-reset on (the timed loop of ``benchmarks.gridworld_throughput``); compile time is
the first call's. Peer, in the same process: Gymnasium's ``<task>-v5`` stepped in a Python loop
(one env at batch 1, ``SyncVectorEnv`` with ``batch`` envs above), random actions, resets on
episode end. The ratio column is ours / Gymnasium at the same batch size.

    python -m benchmarks.mujoco_throughput --batch-sizes 1 64 1024 --tasks HalfCheetah
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from pathlib import Path

import gymnasium
import jax
import tyro

from benchmarks.gridworld_throughput import Measurement, env_rollout, measure
from benchmarks.timing import write_json
from envs.mujoco import BACKENDS

__all__ = ["Config", "gymnasium_rate", "main"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Benchmark settings."""

    batch_sizes: tuple[int, ...] = (1, 64, 1024)
    tasks: tuple[str, ...] = ("HalfCheetah",)  # any of HalfCheetah, Hopper, Walker2d
    backends: tuple[str, ...] = ("native", "mjx")
    scan_length: int = 16  # env steps per scan; a loop around it repeats the scan
    target_seconds: float = 1.0  # duration of each timed call
    repeats: int = 3  # timed calls; the median is reported
    gymnasium_peer: bool = True
    seed: int = 0
    out: Path | None = None  # write the results here as JSON


def gymnasium_rate(name: str, batch_size: int, config: Config) -> Measurement:
    """Gymnasium's own env steps/s: one env at batch 1, else ``SyncVectorEnv(batch_size)``."""
    gym_id = f"{name}-v5"
    if batch_size == 1:
        env = gymnasium.make(gym_id)
    else:
        env = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make(gym_id)] * batch_size)
    env.reset(seed=config.seed)
    env.action_space.seed(config.seed)
    actions = [env.action_space.sample() for _ in range(64)]

    def run(num_steps: int) -> float:
        start = time.perf_counter()
        for t in range(num_steps):
            _, _, terminated, truncated, _ = env.step(actions[t % len(actions)])
            if batch_size == 1 and (terminated or truncated):
                env.reset()  # the vector env resets by itself
        return time.perf_counter() - start

    probe = run(16) / 16
    num_steps = max(16, round(config.target_seconds / probe))
    calls = [run(num_steps) for _ in range(config.repeats)]
    env.close()
    steps = num_steps * batch_size
    label = "gymnasium" if batch_size == 1 else "gymnasium SyncVectorEnv"
    return Measurement(label, batch_size, 0.0, steps, steps / statistics.median(calls), calls)


def main(config: Config) -> list[tuple[str, str, Measurement]]:
    """Measure every task x backend x batch size (and the peer); print a markdown table."""
    if min(config.batch_sizes) < 1 or config.scan_length < 1 or config.repeats < 1:
        raise ValueError("batch sizes, scan_length and repeats must all be >= 1.")
    if config.target_seconds <= 0:
        raise ValueError(f"target_seconds must be > 0, got {config.target_seconds}.")
    unknown = set(config.backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    print(f"device: {jax.devices()[0].device_kind}, {jax.device_count()} device(s)")
    results: list[tuple[str, str, Measurement]] = []
    for name in config.tasks:
        for batch_size in config.batch_sizes:
            make = lambda backend: functools.partial(env_rollout, backend=backend)
            row = [(b, measure(name, make(b), batch_size, config)) for b in config.backends]
            if config.gymnasium_peer:
                row.append(("gymnasium", gymnasium_rate(name, batch_size, config)))
            for backend, m in row:
                print(
                    f"{name:>12} {backend:>9} B={batch_size:<5} compile {m.compile_s:6.2f} s "
                    f"{m.steps_per_s:>12,.0f} steps/s",
                    flush=True,
                )
                results.append((name, backend, m))
    print(_table(results))
    rows = [{"task": t, "backend": b, **dataclasses.asdict(m)} for t, b, m in results]
    device = jax.devices()[0].device_kind
    config_dict = dataclasses.asdict(config)
    write_json(config.out, {"config": config_dict, "device": device, "results": rows})
    return results


def _table(results: list[tuple[str, str, Measurement]]) -> str:
    """Markdown: one row per task x backend x batch, with the ratio to Gymnasium."""
    peer = {(t, m.batch_size): m.steps_per_s for t, b, m in results if b == "gymnasium"}
    lines = [
        "| task | backend | batch | compile s | env steps/s | vs Gymnasium |",
        "|---" * 6 + "|",
    ]
    for task, backend, m in results:
        ref = peer.get((task, m.batch_size))
        ratio = f"{m.steps_per_s / ref:.2f}x" if ref and backend != "gymnasium" else ""
        compile_s = f"{m.compile_s:.1f}" if backend != "gymnasium" else ""
        rate = f"{m.steps_per_s:,.0f}"
        lines.append(f"| {task} | {backend} | {m.batch_size} | {compile_s} | {rate} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(tyro.cli(Config))
