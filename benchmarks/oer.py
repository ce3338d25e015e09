"""Continual offline RL's costs: one task per method, the dynamics ensemble, MBES selection.

On HalfCheetah shapes (17-D observations, 6-D actions; synthetic data, 1000-step episodes):
seconds per task and gradient steps/s of each method of ``agents.oer`` (its update without
evaluation: ``steps_per_task`` steps, then what the method keeps), against plain TD3+BC's
steps/s (``agents.td3_bc``, same batch and networks) in the same run; the dynamics ensemble's
gradient steps/s; and model-based experience selection's throughput (transitions selected per
second) against the dataset's size.

    python -m benchmarks.oer
    python -m benchmarks.oer --methods finetune oer --sizes 10000 --repeats 2
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import tyro

import envs
from agents.dynamics import DynamicsConfig, make_dynamics, select_mbes
from agents.oer import ContinualConfig, make_continual
from agents.replay import Transition
from agents.td3_bc import TD3BCConfig, make_td3_bc
from benchmarks.timing import timed, write_json

OBS_DIM, ACT_DIM = 17, 6


@dataclasses.dataclass
class Args:
    steps_per_task: int = 2_000
    batch_size: int = 256
    tasks: int = 3
    task_size: int = 20_000  # transitions per task
    methods: tuple[str, ...] = ("finetune", "joint", "ewc", "replay", "oer")
    buffer_size: int = 1_000
    dynamics_steps: int = 500
    sizes: tuple[int, ...] = (10_000, 100_000)  # MBES: dataset sizes
    repeats: int = 3
    out: str | None = None


def synthetic(key: jax.Array, n: int) -> Transition:
    """n transitions of random HalfCheetah-shaped data in 1000-step episodes."""
    k_obs, k_act, k_next = jax.random.split(key, 3)
    obs = jax.random.normal(k_obs, (n, OBS_DIM))
    action = jax.random.uniform(k_act, (n, ACT_DIM), minval=-1.0, maxval=1.0)
    next_obs = obs + 0.1 * jax.random.normal(k_next, (n, OBS_DIM))
    end = jnp.arange(n) % 1000 == 999
    return Transition(obs, action, -jnp.abs(obs[:, 0]), next_obs, jnp.zeros(n, bool), end)


def main(args: Args) -> dict:
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform})")
    env, default = envs.make("HalfCheetah", backend="native")
    task_params = [default.replace(target_velocity=0.5 + i) for i in range(args.tasks)]
    datasets = [synthetic(jax.random.key(i), args.task_size) for i in range(args.tasks)]

    td3 = make_td3_bc(
        TD3BCConfig(
            total_steps=args.steps_per_task, eval_every=args.steps_per_task, eval_episodes=0,
            batch_size=args.batch_size,
        ),
        datasets[0], env, task_params[0],
    )  # fmt: skip
    _, run_s = timed(td3.update, jax.jit(td3.init)(jax.random.key(0)), repeats=args.repeats)
    peer = args.steps_per_task / run_s
    print(f"\n{args.steps_per_task} steps per task, batch {args.batch_size}, {args.tasks} tasks "
          f"of {args.task_size:,}; TD3+BC: {peer:,.0f} steps/s")  # fmt: skip
    print("| method | s per task | steps/s | vs TD3+BC | compile s |\n|---|---|---|---|---|")
    methods = {}
    for method in args.methods:
        config = ContinualConfig(
            method=method, steps_per_task=args.steps_per_task, batch_size=args.batch_size,
            buffer_size=args.buffer_size, eval_episodes=0,
            dynamics=DynamicsConfig(total_steps=args.dynamics_steps),
        )  # fmt: skip
        learner = make_continual(config, datasets, env, task_params)
        state = jax.jit(learner.init)(jax.random.key(1))
        compile_s, run_s = timed(learner.update, state, repeats=args.repeats)
        rate = args.steps_per_task / run_s
        methods[method] = {"s_per_task": run_s, "steps_per_s": rate, "compile_s": compile_s}
        print(f"| {method} | {run_s:.2f} | {rate:,.0f} | {rate / peer:.2f} | {compile_s:.1f} |")

    dynamics = make_dynamics(DynamicsConfig(total_steps=args.dynamics_steps), OBS_DIM, ACT_DIM)
    fit = lambda s, d: dynamics.train(s, d, args.task_size, jax.random.key(2))
    _, run_s = timed(fit, dynamics.init(jax.random.key(3)), datasets[0], repeats=args.repeats)
    dyn_rate = args.dynamics_steps / run_s
    print(f"\ndynamics ensemble (5 x 200x3, batch 256 each): {dyn_rate:,.0f} gradient steps/s")

    print("\n| dataset size | selected | s | transitions selected/s |\n|---|---|---|---|")
    state = dynamics.init(jax.random.key(4))
    act = lambda obs: jnp.tanh(obs[:, :ACT_DIM])
    selection = []
    for n in args.sizes:
        data = synthetic(jax.random.key(5), n)
        starts = jnp.concatenate([jnp.array([True]), data.truncated[:-1]])
        predict = lambda o, a: dynamics.predict(state.params, o, a)
        select = lambda d, s, n=n, predict=predict: select_mbes(
            jax.random.key(6), d, n, s, act, predict, args.buffer_size
        )[0]
        compile_s, run_s = timed(select, data, starts, repeats=args.repeats)
        selection.append({"size": n, "s": run_s, "per_s": args.buffer_size / run_s})
        print(f"| {n:,} | {args.buffer_size} | {run_s:.2f} | {args.buffer_size / run_s:,.0f} |")
    result = {"device": str(device), "td3_bc_steps_per_s": peer, "methods": methods}
    result |= {"dynamics_steps_per_s": dyn_rate, "mbes": selection}
    return write_json(args.out, result)


if __name__ == "__main__":
    main(tyro.cli(Args))
