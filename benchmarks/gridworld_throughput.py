"""Gridworld throughput: environment steps/s of our gridworlds next to XLand-MiniGrid.

Each measurement runs ``jax.lax.scan`` over ``jax.vmap(env.step)`` with a uniformly random
policy (actions drawn inside the scan), the observation computed every step and auto-reset on.
A loop with a run-time trip count repeats the scan, so one compiled program serves both the
calibration (each timed call lasts about ``target_seconds``) and the timed calls. The compile
time is that of the first call (made with zero steps); steps/s is the median of the timed
calls.

    python -m benchmarks.gridworld_throughput --batch-sizes 1 64 1024 8192 --out results/gw.json
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import tyro

import envs
from benchmarks.timing import write_json

__all__ = ["Config", "Measurement", "Rollout", "env_rollout", "main", "measure", "peer"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Benchmark settings."""

    batch_sizes: tuple[int, ...] = (1, 64, 1024, 8192)
    envs: tuple[str, ...] = ("GoalSequence", "MemorySequence", "MultiSkill")  # envs.make names
    peers: tuple[str, ...] = ("MiniGrid-Empty-8x8", "MiniGrid-DoorKey-8x8")  # xminigrid ids
    scan_length: int = 64  # env steps per scan; a loop around it repeats the scan
    target_seconds: float = 1.0  # duration of each timed call
    repeats: int = 3  # timed calls; the median is reported
    seed: int = 0
    out: Path | None = None  # write the results here as JSON


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One environment at one batch size."""

    env: str
    batch_size: int
    compile_s: float  # first call, with zero steps: compile time
    steps_per_call: int  # env steps (all envs of the batch) in one timed call
    steps_per_s: float  # median over the timed calls
    call_s: list[float]


class Rollout(NamedTuple):
    """A jitted random-policy rollout: ``run(init(key), num_scans)`` steps
    ``num_scans * scan_length`` times."""

    init: Callable[[jax.Array], Any]
    run: Callable[[Any, jax.Array], Any]


def scan_rollout(
    init_batch: Callable[[jax.Array], Any],
    step_batch: Callable[[Any, jax.Array], Any],
    scan_length: int,
) -> Rollout:
    """Wrap batched ``init_batch(key)`` / ``step_batch(carry, key)`` in the timed loop."""

    def one_step(carry: tuple[Any, jax.Array], _: None) -> tuple[tuple[Any, jax.Array], None]:
        env_carry, key = carry
        key, step_key = jax.random.split(key)
        return (step_batch(env_carry, step_key), key), None

    def one_scan(_: jax.Array, carry: tuple[Any, jax.Array]) -> tuple[Any, jax.Array]:
        return jax.lax.scan(one_step, carry, length=scan_length)[0]

    @jax.jit
    def init(key: jax.Array) -> tuple[Any, jax.Array]:
        reset_key, key = jax.random.split(key)
        return init_batch(reset_key), key

    @jax.jit
    def run(carry: tuple[Any, jax.Array], num_scans: jax.Array) -> tuple[Any, jax.Array]:
        return jax.lax.fori_loop(0, num_scans, one_scan, carry)

    return Rollout(init, run)


def env_rollout(name: str, batch_size: int, scan_length: int, **make_kwargs: Any) -> Rollout:
    """Rollout of an environment from ``envs.make(name, **make_kwargs)`` (gymnax 1.x interface)
    under uniformly random actions from its action space."""
    env, params = envs.make(name, **make_kwargs)
    sample = jax.vmap(env.action_space(params).sample)
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def init_batch(key: jax.Array) -> tuple[Any, jax.Array]:
        obs, state = reset(jax.random.split(key, batch_size), params)  # obs [B, obs_dim]
        return state, obs

    def step_batch(carry: tuple[Any, jax.Array], key: jax.Array) -> tuple[Any, jax.Array]:
        state, _ = carry
        action_key, step_key = jax.random.split(key)
        actions = sample(jax.random.split(action_key, batch_size))
        obs, state, _, _, _, _ = step(
            jax.random.split(step_key, batch_size), state, actions, params
        )
        return state, obs

    return scan_rollout(init_batch, step_batch, scan_length)


def peer(name: str, batch_size: int, scan_length: int) -> Rollout:
    """Rollout of an XLand-MiniGrid environment under its gym-style auto-reset wrapper."""
    import xminigrid
    from xminigrid.wrappers import GymAutoResetWrapper

    env, params = xminigrid.make(name)
    env = GymAutoResetWrapper(env)
    num_actions = env.num_actions(params)
    reset = jax.vmap(env.reset, in_axes=(None, 0))
    step = jax.vmap(env.step, in_axes=(None, 0, 0))

    def init_batch(key: jax.Array) -> Any:
        return reset(params, jax.random.split(key, batch_size))

    def step_batch(timestep: Any, key: jax.Array) -> Any:
        actions = jax.random.randint(key, (batch_size,), 0, num_actions)
        return step(params, timestep, actions)  # the timestep holds the observation

    return scan_rollout(init_batch, step_batch, scan_length)


def _timed(rollout: Rollout, carry: Any, num_scans: int) -> float:
    start = time.perf_counter()
    jax.block_until_ready(rollout.run(carry, jnp.int32(num_scans)))
    return time.perf_counter() - start


def measure(
    name: str, make: Callable[[str, int, int], Rollout], batch_size: int, config: Config
) -> Measurement:
    """Compile time and steady-state steps/s of one environment at one batch size."""
    rollout = make(name, batch_size, config.scan_length)
    carry = jax.block_until_ready(rollout.init(jax.random.key(config.seed)))
    compile_s = _timed(rollout, carry, 0)  # the first call: compile, then zero steps
    probe_s = _timed(rollout, carry, 1)
    num_scans = max(1, round(config.target_seconds / max(probe_s, 1e-6)))
    calls = [_timed(rollout, carry, num_scans) for _ in range(config.repeats)]
    steps = num_scans * config.scan_length * batch_size
    return Measurement(name, batch_size, compile_s, steps, steps / statistics.median(calls), calls)


def _table(results: list[Measurement], config: Config) -> str:
    """Markdown table with ours / peer at each batch size."""
    rate = {(m.env, m.batch_size): m.steps_per_s for m in results}
    head = "| env | batch | compile s | steps/s |" + "".join(f" ours / {p} |" for p in config.peers)
    lines = [head, "|---" * (4 + len(config.peers)) + "|"]
    for m in results:
        ratios = "".join(
            f" {m.steps_per_s / rate[(p, m.batch_size)]:.2f} |"
            if m.env not in config.peers and (p, m.batch_size) in rate
            else " |"
            for p in config.peers
        )
        lines.append(
            f"| {m.env} | {m.batch_size} | {m.compile_s:.2f} | {m.steps_per_s:,.0f} |{ratios}"
        )
    return "\n".join(lines)


def main(config: Config) -> list[Measurement]:
    """Measure every environment at every batch size; print a markdown table."""
    if min(config.batch_sizes) < 1 or config.scan_length < 1 or config.repeats < 1:
        raise ValueError("batch sizes, scan_length and repeats must all be >= 1.")
    if config.target_seconds <= 0:
        raise ValueError(f"target_seconds must be > 0, got {config.target_seconds}.")
    runs: list[tuple[str, Callable[[str, int, int], Rollout]]] = []
    for name in config.envs:
        try:
            envs.make(name)
        except ImportError as error:  # an environment not added to this tree yet
            print(f"note: skipping {name}: {error}")
            continue
        runs.append((name, env_rollout))
    runs += [(name, peer) for name in config.peers]

    print(f"device: {jax.devices()[0].device_kind}, {jax.device_count()} device(s)")
    results = []
    for batch_size in config.batch_sizes:
        for name, make in runs:
            m = measure(name, make, batch_size, config)
            print(
                f"{name:>22} B={batch_size:<5} compile {m.compile_s:5.2f} s "
                f"{m.steps_per_s:>14,.0f} steps/s",
                flush=True,
            )
            results.append(m)
    print(_table(results, config))
    device, rows = jax.devices()[0].device_kind, [dataclasses.asdict(m) for m in results]
    config_dict = dataclasses.asdict(config)
    write_json(config.out, {"config": config_dict, "device": device, "results": rows})
    return results


if __name__ == "__main__":
    main(tyro.cli(Config))
