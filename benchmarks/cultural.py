"""Cultural accumulation: wall-clock per generation and env steps/s, in context and in weights.

In context: one test-time generation (frozen social learner, ``population`` copies on
``tasks`` task instances per seed, all seeds vmapped). In weights: one generation (train
``population`` fresh recurrent PPO agents per seed with the social channel, then evaluate them
alone and with the demonstrators). The peer is the same PPO program on the plain task (no
social channel, no evaluation), measured in the same run: the ratio is the cost of the social
channel and the generation's bookkeeping. ``--task goal`` measures Goal Sequence (whose
demonstrator moves a body in the same room), ``memory`` Memory Sequence.

    python -m benchmarks.cultural --task memory
    python -m benchmarks.cultural --task goal
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import tyro

import envs  # noqa: F401  (sets the XLA flags before any JAX program runs)
from agents.ppo import make_ppo
from benchmarks.timing import timed as _time
from benchmarks.timing import write_json
from envs.gridworlds.goal_sequence import GoalSequence
from envs.gridworlds.memory_sequence import MemorySequence
from skills.cultural import (
    VISIBILITY,
    GoalTask,
    InContextConfig,
    InWeightsConfig,
    MemoryTask,
    in_weights_ppo,
    make_in_context_generation,
    make_in_weights_lineage,
)


@dataclasses.dataclass
class Args:
    task: Literal["memory", "goal"] = "memory"
    seeds: int = 5
    repeats: int = 3
    # in context (the study's defaults)
    num_trials: int = 4
    population: int = 3
    tasks: int = 32
    # in weights: one generation = seeds x population agents x steps
    iw_population: int = 2
    iw_steps: int = 16_384
    out: str | None = None  # JSON file for the figures


def _tasks(args: Args) -> tuple[MemoryTask | GoalTask, MemoryTask | GoalTask]:
    """The in-context and in-weights task settings of the two studies' defaults."""
    if args.task == "memory":
        return MemoryTask(), MemoryTask(10, 24)
    return GoalTask(), GoalTask()


def in_context(args: Args) -> dict:
    task = _tasks(args)[0]
    env, params = task.social(args.num_trials)
    ppo = make_ppo(task.in_context_ppo(), env, params)
    agents = ppo.policy_params(jax.vmap(ppo.init)(jax.random.split(jax.random.key(0), args.seeds)))
    gen = make_in_context_generation(
        InContextConfig(population=args.population), ppo.policy, env, params
    )
    fn = jax.vmap(jax.vmap(gen, in_axes=(None, 0, 0, 0)))
    shape = (args.seeds, args.tasks)
    task_instances = task.draw_tasks(jax.random.key(1), shape, params)
    demos = task.random_demos(jax.random.key(2), shape, params)
    keys = jax.random.split(jax.random.key(3), args.seeds * args.tasks).reshape(shape)
    compile_s, run_s = _time(fn, agents, task_instances, demos, keys, repeats=args.repeats)
    # steps played (Memory Sequence: an upper bound, trials end at the first mistake)
    steps = args.seeds * args.tasks * args.population * params.num_trials * env.demo_spec(params)[0]
    return {"compile_s": compile_s, "generation_s": run_s, "env_steps_per_s": steps / run_s}


def in_weights(args: Args) -> dict:
    task = _tasks(args)[1]
    ppo_cfg = in_weights_ppo().replace(total_steps=args.iw_steps)
    config = InWeightsConfig(ppo_cfg, population=args.iw_population)
    env, params = task.in_weights(config.num_demos)
    lineage = make_in_weights_lineage(config, env, params, VISIBILITY["anneal"])
    # a generation past the first (which trains alone): the demonstrators are shown
    states = jax.vmap(lineage.init)(jax.random.split(jax.random.key(0), args.seeds))
    states = states._replace(generation=jnp.ones_like(states.generation))
    compile_s, run_s = _time(jax.vmap(lineage.update), states, repeats=args.repeats)
    agents = args.seeds * args.iw_population
    # the peer: the same PPO runs on the plain task, nothing else
    if args.task == "memory":
        peer_env, peer_params = (
            MemorySequence(),
            MemorySequence.in_weights_params(0, task.num_symbols, task.seq_len),
        )
    else:
        peer_env = GoalSequence()
        peer_params = peer_env.default_params.replace(
            size=task.size, num_goals=task.num_goals, trial_length=task.trial_length, num_trials=1
        )
    train = make_ppo(ppo_cfg, peer_env, peer_params).train
    peer_keys = jax.random.split(jax.random.key(0), agents)
    peer_compile_s, peer_run_s = _time(jax.vmap(train), peer_keys, repeats=args.repeats)
    steps = agents * ppo_cfg.num_updates * ppo_cfg.batch_size
    return {
        "compile_s": compile_s,
        "generation_s": run_s,
        "train_env_steps_per_s": steps / run_s,
        "peer_compile_s": peer_compile_s,
        "peer_run_s": peer_run_s,
        "peer_env_steps_per_s": steps / peer_run_s,
        "ratio_vs_peer": peer_run_s / run_s,
    }


def main(args: Args) -> dict:
    ic, iw = in_context(args), in_weights(args)
    name = {"memory": "Memory Sequence", "goal": "Goal Sequence"}[args.task]
    print(f"{name}")
    print("| setting | what one generation is | compile s | s / generation | env steps/s |")
    print("|---|---|---|---|---|")
    print(
        f"| in context | {args.seeds} seeds x {args.tasks} tasks x {args.population} agents x "
        f"{args.num_trials} trials | {ic['compile_s']:.1f} | {ic['generation_s']:.3f} | "
        f"{ic['env_steps_per_s']:,.0f} |"
    )
    print(
        f"| in weights | {args.seeds} seeds x {args.iw_population} agents x {args.iw_steps:,} "
        f"PPO steps + evaluation | {iw['compile_s']:.1f} | {iw['generation_s']:.2f} | "
        f"{iw['train_env_steps_per_s']:,.0f} |"
    )
    print(
        f"| peer: PPO alone, plain {name} | same agents and steps | "
        f"{iw['peer_compile_s']:.1f} | {iw['peer_run_s']:.2f} | "
        f"{iw['peer_env_steps_per_s']:,.0f} (ours/peer {iw['ratio_vs_peer']:.2f}x) |"
    )
    return write_json(
        args.out, {"in_context": ic, "in_weights": iw, "args": dataclasses.asdict(args)}
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
