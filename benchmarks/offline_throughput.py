"""TD3+BC and IQL gradient updates/s against a bare scanned TD3 step and a plain matmul.

Each learner (an ``agents.core.Agent``) runs exactly as ``run_chunked`` runs it:
``jit(vmap(scan(agent.update)))`` over 1 and 5 seeds, where an ``update`` is ``steps`` gradient
steps with uniform sampling from a HalfCheetah-sized dataset on device (17-dim observations, 6-dim
actions, 200k transitions) and metric averaging, batch 256, 256x256 networks (evaluation off). The
bare TD3 step is the same TD3 arithmetic on one fixed batch, with nothing else: no sampling, no
noise, no normalisation, no metrics (``platform.md`` measured about 294 updates/s and 110 GFLOP/s
for a scanned TD3 step on this CPU); "bare + sampling" adds only the per-step uniform sampling from
the dataset. The matmul probe times ``[256, 256] @ [256, 256]`` and ``[1024, 1024] @ [1024, 1024]``
in a scan, the ceiling for these networks. Effective GFLOP/s count matmul FLOPs only (backward = 2x
forward). Single-threaded Eigen (``envs/platform.py``) keeps each matmul on one core, but XLA runs
independent ops side by side, so on an idle 2-core machine a program uses about 1.8 cores. Besides
wall-clock figures the table therefore gives updates per CPU-second of the process, which stay
comparable when other jobs share the cores; the ratio to the bare step and the fraction of peak use
CPU-seconds.

    python -m benchmarks.offline_throughput
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

import envs
from agents.core import Agent
from agents.iql import IQLConfig, make_iql
from agents.networks import Critic, CriticEnsemble
from agents.offline import ensemble_member, sample
from agents.replay import Transition
from agents.td3_bc import Actor, TD3BCConfig, make_td3_bc
from benchmarks.timing import write_json


@dataclasses.dataclass
class Args:
    steps: int = 500  # gradient steps per timed call
    repeats: int = 3  # timed calls per figure (median)
    seeds: tuple[int, ...] = (1, 5)
    dataset_size: int = 200_000
    out: str | None = None  # write the figures as JSON here


OBS_DIM, ACT_DIM, HIDDEN, BATCH = 17, 6, (256, 256), 256


def _median_time(fn, *args, repeats: int) -> tuple[float, float]:
    """Median wall-clock and process CPU seconds of ``fn(*args)``."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def _macs(d_in: int, d_out: int) -> int:
    dims = (d_in, *HIDDEN, d_out)
    return sum(a * b for a, b in itertools.pairwise(dims))


def td3_flops(policy_freq: int) -> float:
    """Matmul FLOPs per critic step of TD3(+BC) with twin critics."""
    actor, critic = _macs(OBS_DIM, ACT_DIM), _macs(OBS_DIM + ACT_DIM, 1)
    critic_step = actor + 2 * critic + 3 * 2 * critic  # target actor + target twins + fwd/bwd
    actor_step = 3 * actor + 2 * critic  # actor fwd/bwd, one critic fwd + input gradient
    return 2.0 * BATCH * (critic_step + actor_step / policy_freq)


def iql_flops() -> float:
    """Matmul FLOPs per IQL gradient step (value, actor and twin critic each once)."""
    actor, critic, value = _macs(OBS_DIM, ACT_DIM), _macs(OBS_DIM + ACT_DIM, 1), _macs(OBS_DIM, 1)
    step = 2 * critic + 3 * value + 3 * actor + value + 3 * 2 * critic
    return 2.0 * BATCH * step


def synthetic_dataset(n: int) -> Transition:
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((n + 1, OBS_DIM), np.float32)
    return Transition(
        obs[:-1],
        rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        rng.standard_normal(n, np.float32),
        obs[1:],
        np.zeros(n, bool),
        (np.arange(n) % 1000) == 999,
    )


def bench_learner(name: str, agent: Agent, num_seeds: int, args: Args) -> dict:
    """Compile and time ``jit(vmap(scan(agent.update, 1)))`` as run_chunked does."""
    states = jax.jit(jax.vmap(agent.init))(jax.random.split(jax.random.key(0), num_seeds))
    chunk = jax.vmap(lambda s: jax.lax.scan(lambda s, _: agent.update(s), s, None, 1))
    t0 = time.perf_counter()
    compiled = jax.jit(chunk).lower(states).compile()
    compile_s = time.perf_counter() - t0
    run_s, cpu_s = _median_time(compiled, states, repeats=args.repeats)
    return {
        "learner": name,
        "seeds": num_seeds,
        "compile_s": compile_s,
        "updates_per_s": num_seeds * args.steps / run_s,
        "updates_per_s_per_seed": args.steps / run_s,
        "updates_per_cpu_s": num_seeds * args.steps / cpu_s,
    }


def bare_td3(policy_freq: int, args: Args, dataset: Transition | None = None) -> dict:
    """TD3's losses: policy_freq critic steps, then actor and targets, on one fixed batch.

    Given ``dataset`` (on device), every step instead draws its batch with ``offline.sample``,
    which isolates what uniform sampling costs.
    """
    actor, critic = Actor(ACT_DIM, HIDDEN), CriticEnsemble(2, HIDDEN, "relu")
    fixed = synthetic_dataset(BATCH)
    k1, k2 = jax.random.split(jax.random.key(0))
    a_params, c_params = (
        actor.init(k1, fixed.obs[0]),
        critic.init(k2, fixed.obs[0], fixed.action[0]),
    )
    tx = optax.adam(3e-4)
    state = (a_params, c_params, a_params, c_params, tx.init(a_params), tx.init(c_params))
    state = (jax.tree.map(jnp.copy, state), jax.random.key(1))

    def batch(key, data):  # -> (batch, key); the bare step draws no random numbers
        if data is None:
            return fixed, key
        key, k = jax.random.split(key)
        return sample(data, k, BATCH), key

    def critic_step(carry, data):
        (a, c, ta, tc, oa, oc), key = carry
        b, key = batch(key, data)
        next_q = critic.apply(tc, b.next_obs, actor.apply(ta, b.next_obs)).min(0)
        target = b.reward + 0.99 * next_q

        def loss(p):
            return jnp.square(critic.apply(p, b.obs, b.action) - target).mean(1).sum()

        updates, oc = tx.update(jax.grad(loss)(c), oc)
        return ((a, optax.apply_updates(c, updates), ta, tc, oa, oc), key)

    def step(carry, data):
        carry = jax.lax.scan(lambda c, _: (critic_step(c, data), None), carry, None, policy_freq)[0]
        (a, c, ta, tc, oa, oc), key = carry
        b, key = batch(key, data)

        def loss(p):
            pi = actor.apply(p, b.obs)
            q1 = Critic(HIDDEN, "relu").apply(ensemble_member(c, 0), b.obs, pi)
            return -q1.mean() + jnp.square(pi - b.action).mean()

        updates, oa = tx.update(jax.grad(loss)(a), oa)
        a = optax.apply_updates(a, updates)
        ta, tc = optax.incremental_update(a, ta, 0.005), optax.incremental_update(c, tc, 0.005)
        return ((a, c, ta, tc, oa, oc), key)

    def run(state, data):
        return jax.lax.scan(
            lambda s, _: (step(s, data), None), state, None, args.steps // policy_freq
        )[0]

    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(state, dataset).compile()
    compile_s = time.perf_counter() - t0
    run_s, cpu_s = _median_time(compiled, state, dataset, repeats=args.repeats)
    name = f"bare TD3 step (policy_freq {policy_freq})"
    return {
        "learner": name if dataset is None else f"{name} + sampling",
        "seeds": 1,
        "compile_s": compile_s,
        "updates_per_s": args.steps / run_s,
        "updates_per_s_per_seed": args.steps / run_s,
        "updates_per_cpu_s": args.steps / cpu_s,
    }


def matmul_gflops(n: int, repeats: int) -> tuple[float, float]:
    """GFLOP/s (per wall and per CPU second) of a scanned ``[n, n] @ [n, n]`` chain."""
    iters = max(10, int(2e10 / (2 * n**3)))  # about 20 GFLOP per call
    a = jax.random.normal(jax.random.key(0), (n, n)) / np.sqrt(n)
    b = jax.random.normal(jax.random.key(1), (n, n)) / np.sqrt(n)
    run = jax.jit(lambda x: jax.lax.scan(lambda x, _: (jnp.tanh(x @ b), None), x, None, iters)[0])
    run(a).block_until_ready()
    wall, cpu = _median_time(run, a, repeats=repeats)
    return 2 * n**3 * iters / wall / 1e9, 2 * n**3 * iters / cpu / 1e9


def sampling_us(data: Transition, repeats: int, steps: int = 5000) -> float:
    """Microseconds per ``offline.sample`` of a batch (key split included), alone in a scan."""

    def body(carry, _):
        key, acc = carry
        key, k = jax.random.split(key)
        batch = sample(data, k, BATCH)
        return (key, acc + sum(jnp.sum(x.astype(jnp.float32)) for x in batch)), None

    run = jax.jit(lambda key, d: jax.lax.scan(body, (key, 0.0), None, steps)[0][1])
    key = jax.random.key(0)
    run(key, data).block_until_ready()
    wall, _ = _median_time(run, key, data, repeats=repeats)
    return 1e6 * wall / steps


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def main(args: Args) -> list[dict]:
    env, params = envs.make("HalfCheetah", backend="native")
    data = synthetic_dataset(args.dataset_size)
    common = {"total_steps": args.steps, "eval_every": args.steps, "eval_episodes": 0}
    learners = {
        "TD3+BC": (make_td3_bc(TD3BCConfig(**common), data, env, params), td3_flops(2)),
        "TD3+BC (policy_freq 1)": (
            make_td3_bc(TD3BCConfig(**common, policy_freq=1), data, env, params),
            td3_flops(1),
        ),
        "IQL": (make_iql(IQLConfig(**common), data, env, params), iql_flops()),
    }
    probes = [matmul_gflops(n, args.repeats) for n in (256, 1024)]
    peak, peak_cpu = max(p[0] for p in probes), max(p[1] for p in probes)
    print(f"matmul probe: {probes}", flush=True)
    device_data = jax.tree.map(jnp.asarray, data)
    sample_us = sampling_us(device_data, args.repeats)
    print(f"offline.sample alone: {sample_us:.1f} us per batch of {BATCH}", flush=True)
    rows = [bare_td3(1, args), bare_td3(2, args), bare_td3(2, args, device_data)]
    flops = {r["learner"]: td3_flops(2) for r in rows[1:]} | {rows[0]["learner"]: td3_flops(1)}
    print(f"bare: {rows}", flush=True)
    for name, (learner, f) in learners.items():
        flops[name] = f
        for s in args.seeds:
            rows.append(bench_learner(name, learner, s, args))
            print(rows[-1], flush=True)
    bare = {1: rows[0], 2: rows[1]}
    print(
        f"load average {os.getloadavg()[0]:.1f} (2 cores); matmul peak {peak:.1f} GFLOP/s "
        f"wall-clock, {peak_cpu:.1f} per CPU-second"
    )
    print(
        "| learner | seeds | updates/s | per seed | updates/CPU-s | compile s | GFLOP/CPU-s "
        "| of matmul peak | vs bare (CPU-s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["gflops_per_cpu_s"] = flops[r["learner"]] * r["updates_per_cpu_s"] / 1e9
        r["fraction_of_peak"] = r["gflops_per_cpu_s"] / peak_cpu
        r["vs_bare"] = None
        if (r["learner"].startswith("TD3+BC") or "sampling" in r["learner"]) and r["seeds"] == 1:
            ref = bare[1 if "policy_freq 1" in r["learner"] else 2]
            r["vs_bare"] = r["updates_per_cpu_s"] / ref["updates_per_cpu_s"]
        print(
            f"| {r['learner']} | {r['seeds']} | {r['updates_per_s']:.0f} | "
            f"{r['updates_per_s_per_seed']:.0f} | {r['updates_per_cpu_s']:.0f} | "
            f"{r['compile_s']:.1f} | {r['gflops_per_cpu_s']:.1f} | "
            f"{100 * r['fraction_of_peak']:.0f}% | "
            f"{_ratio(r['vs_bare'])} |"
        )
    summary = {
        "matmul_peak_gflops": peak,
        "matmul_peak_gflops_per_cpu_s": peak_cpu,
        "sampling_us_per_batch": sample_us,
        "rows": rows,
    }
    write_json(args.out, summary)
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
