"""SAC throughput: env steps/s at UTD 1 and 20, compile time, and the replay buffer's speed.

For each env (native HalfCheetah, gymnax Pendulum) and update-to-data ratio, one ``update``
(``num_steps`` env steps, each followed by ``utd`` gradient steps at batch 256, 256x256
networks) is timed after compilation; its gradient-step rate is compared with the bare
gradient step on a fixed batch (one ``learn`` at UTD ``gradient_steps`` whose batch hook returns
the same batch: no buffer, one env step in all), the compute-bound ceiling.
The buffer rows time one add and one 256-sample draw per step (HalfCheetah-sized transitions,
1M capacity) for flashbax's item buffer and a plain ``jnp`` ring buffer written alongside.

    python -m benchmarks.sac_throughput
"""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import flashbax as fbx
import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs
from agents.replay import Transition
from agents.sac import SACConfig, make_sac, replay_sample
from benchmarks.timing import write_json


@dataclasses.dataclass
class Args:
    envs: tuple[str, ...] = ("HalfCheetah", "gymnax:Pendulum-v1")
    utds: tuple[int, ...] = (1, 20)
    gradient_steps: int = 2_000  # per timed update; num_steps = gradient_steps // utd
    repeats: int = 3
    buffer_capacity: int = 1_000_000
    buffer_steps: int = 5_000
    out: str | None = None  # write the rows as JSON here


def _median_time(fn, *args, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _learn_flops(obs_dim: int, act_dim: int, hidden: tuple[int, ...], batch: int) -> float:
    """Matmul FLOPs of one SAC gradient step (twin critics), counting backward as 2x forward."""
    dims = lambda d_in, d_out: list(zip((d_in, *hidden), (*hidden, d_out)))
    macs = lambda d_in, d_out: sum(a * b for a, b in dims(d_in, d_out))
    actor, critic = macs(obs_dim, 2 * act_dim), 2 * macs(obs_dim + act_dim, 1)
    target = actor + critic  # next action, target critics
    critic_step = 3 * critic  # forward + backward
    actor_step = 3 * actor + 2 * critic  # critic: forward + input gradient only
    return 2.0 * batch * (target + critic_step + actor_step)


def bench_sac(name: str, utd: int, args: Args) -> dict:
    backend = {"backend": "native"} if not name.startswith("gymnax:") else {}
    env, params = envs.make(name, **backend)
    num_steps = max(1, args.gradient_steps // utd)
    cfg = SACConfig(
        num_steps=num_steps,
        total_steps=1_000 + num_steps,
        learning_starts=1_000,
        buffer_size=10_000,
        utd=utd,
    )
    sac = make_sac(cfg, env, params)
    state = jax.jit(sac.init)(jax.random.key(0))
    t0 = time.perf_counter()
    update = jax.jit(sac.update).lower(state).compile()
    compile_s = time.perf_counter() - t0
    run_s = _median_time(update, state, repeats=args.repeats)

    fixed_batch = lambda state, key: state.aux  # every gradient step on the batch in aux
    bare_cfg = cfg.replace(utd=args.gradient_steps)
    bare_sac = make_sac(bare_cfg, env, params, sample_batch=fixed_batch)
    bare_state = state._replace(aux=replay_sample(state.buffer, jax.random.key(1), cfg.batch_size))
    bare = jax.jit(bare_sac.learn).lower(bare_state).compile()
    bare_s = _median_time(bare, bare_state, repeats=args.repeats)
    obs_dim, act_dim = state.obs.shape[1], env.action_space(params).shape[0]
    flops = _learn_flops(obs_dim, act_dim, cfg.hidden, cfg.batch_size)
    updates_per_s = utd * num_steps / run_s
    return {
        "env": name,
        "utd": utd,
        "env_steps_per_s": num_steps / run_s,
        "updates_per_s": updates_per_s,
        "bare_updates_per_s": args.gradient_steps / bare_s,
        "ratio_to_bare": updates_per_s / (args.gradient_steps / bare_s),
        "gflops": flops * updates_per_s / 1e9,
        "compile_s": compile_s,
    }


class RingBuffer(NamedTuple):
    """The plain alternative to flashbax: a circular array, a write position and a size."""

    data: Transition  # [capacity, ...]
    pos: jax.Array
    size: jax.Array


def bench_buffers(args: Args) -> list[dict]:
    cap, batch = args.buffer_capacity, 256
    item = Transition(
        jnp.zeros(17), jnp.zeros(6), jnp.zeros(()), jnp.zeros(17), jnp.zeros((), bool),
        jnp.zeros((), bool),
    )  # fmt: skip
    fb = fbx.make_item_buffer(cap, 1, batch, add_batches=True)

    def ring_init():
        zeros = jax.tree.map(lambda v: jnp.zeros((cap, *v.shape), v.dtype), item)
        return RingBuffer(zeros, jnp.int32(0), jnp.int32(0))

    def ring_add(b: RingBuffer, x: Transition) -> RingBuffer:
        idx = (b.pos + jnp.arange(x.reward.shape[0])) % cap
        data = jax.tree.map(lambda d, v: d.at[idx].set(v), b.data, x)
        return RingBuffer(data, (b.pos + idx.size) % cap, jnp.minimum(b.size + idx.size, cap))

    def ring_sample(b: RingBuffer, key: jax.Array) -> Transition:
        return jax.tree.map(lambda d: d[jax.random.randint(key, (batch,), 0, b.size)], b.data)

    rows = []
    fb_sample = lambda s, k: fb.sample(s, k).experience
    for name, init, add, sample in (
        ("flashbax item buffer", lambda: fb.init(item), fb.add, fb_sample),
        ("jnp ring buffer", ring_init, ring_add, ring_sample),
    ):

        def body(s, k, add=add, sample=sample):
            x = jax.tree.map(lambda v: jnp.broadcast_to(v, (1, *v.shape)), item)
            s = add(s, x._replace(reward=x.reward + 1))
            return s, sample(s, k).reward.sum()

        run = jax.jit(
            lambda s, k, body=body: jax.lax.scan(body, s, jax.random.split(k, args.buffer_steps))
        )
        state = jax.jit(init)()
        t0 = time.perf_counter()
        fn = run.lower(state, jax.random.key(0)).compile()
        compile_s = time.perf_counter() - t0
        run_s = _median_time(fn, state, jax.random.key(1), repeats=args.repeats)
        rows.append(
            {"buffer": name, "add_sample_per_s": args.buffer_steps / run_s, "compile_s": compile_s}
        )
    return rows


def main(args: Args) -> dict:
    sac_rows = [bench_sac(name, utd, args) for name in args.envs for utd in args.utds]
    print("| env | UTD | env steps/s | grad steps/s | bare learn/s | ratio | GFLOP/s | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sac_rows:
        print(
            f"| {r['env']} | {r['utd']} | {r['env_steps_per_s']:,.0f} | "
            f"{r['updates_per_s']:,.0f} | {r['bare_updates_per_s']:,.0f} | "
            f"{r['ratio_to_bare']:.2f} | {r['gflops']:.0f} | {r['compile_s']:.1f} |"
        )
    buffer_rows = bench_buffers(args)
    print("\n| buffer (1M capacity, add 1 + sample 256) | steps/s | compile s |\n|---|---|---|")
    for r in buffer_rows:
        print(f"| {r['buffer']} | {r['add_sample_per_s']:,.0f} | {r['compile_s']:.1f} |")
    ratio = buffer_rows[0]["add_sample_per_s"] / buffer_rows[1]["add_sample_per_s"]
    print(f"flashbax / ring buffer: {ratio:.2f}x")
    result = {"sac": sac_rows, "buffers": buffer_rows}
    return write_json(args.out, result)


if __name__ == "__main__":
    main(tyro.cli(Args))
