"""In-weights cultural accumulation on Memory Sequence or Goal Sequence against one agent
trained as long.

Every seed is a lineage with its own fixed task (a hidden sequence, or a layout with its
start and hidden order). Each generation trains
``--population`` fresh recurrent PPO agents for ``--ppo.total-timesteps`` steps while the
previous generation's best recorded episodes are shown (visibility annealed 1 -> 0; generation
0 trains alone), then evaluates them alone. Ablations run the same loop with visibility fixed
at 1 and at 0 (all three in one vmapped program); the baseline is one agent trained alone for
generations x steps, evaluated after every generation's worth of steps. Every loop is
checkpointed per generation and resumes.

    python -m experiments.cultural_in_weights memory --seeds 5
    python -m experiments.cultural_in_weights goal --seeds 5
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated

import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs  # noqa: F401  (sets the XLA flags before any JAX program runs)
from agents.cultural import (
    VISIBILITY,
    InWeightsConfig,
    make_in_weights_generation,
    make_single_lifetime_block,
    run_generations,
)
from agents.ppo import PPOConfig
from envs.gridworlds.social import demo_spec
from experiments.cultural_tasks import (
    GoalTask,
    MemoryTask,
    StudyArgs,
    generation_timer,
    median_s,
    plot_iqm,
    write_config,
)
from experiments.runner import fmt_ci, iqm_ci

CONDITIONS = ("anneal", "one", "zero")


def default_ppo() -> PPOConfig:
    return PPOConfig(
        num_envs=16,
        num_steps=32,
        total_timesteps=102_400,  # the reference: 1e5 steps per generation
        update_epochs=4,
        num_minibatches=4,
        recurrent=True,
        hidden=(64,),
        embed=(64,),
        gru_hidden=64,
        lr=3e-3,
        ent_coef=0.01,
    )


@dataclasses.dataclass
class Args(StudyArgs):
    ppo: PPOConfig = dataclasses.field(default_factory=default_ppo)  # one generation's training
    generations: int = 8  # the reference's
    population: int = 2
    num_demos: int = 8
    eval_episodes: int = 32


@dataclasses.dataclass
class MemoryArgs(Args):
    out: str = "results/cultural_in_weights"
    # the reference's sequence: 10 symbols, length 24
    task: MemoryTask = dataclasses.field(default_factory=lambda: MemoryTask(10, 24))


@dataclasses.dataclass
class GoalArgs(Args):
    out: str = "results/cultural_in_weights_goal"
    task: GoalTask = dataclasses.field(default_factory=GoalTask)


def main(args: MemoryArgs | GoalArgs) -> dict:
    out, task = Path(args.out), args.task
    config = write_config(out, "cultural_in_weights", args)
    t0 = time.perf_counter()
    G, S, C = args.generations, args.seeds, len(CONDITIONS)
    cfg = InWeightsConfig(args.ppo, G, args.population, args.num_demos, args.eval_episodes)
    k_seq, k_gen, k_base = jax.random.split(jax.random.key(args.seed), 3)

    env, params = task.in_weights(None)
    L, none = demo_spec(params)
    placeholder = jnp.full((args.num_demos, L), none, jnp.int32)
    params = params.replace(demos=placeholder)
    tasks = task.draw_tasks(k_seq, (S,), params)  # one per lineage

    # generations: conditions x seeds in one program; carry = demonstrations [C, S, D, L]
    one = make_in_weights_generation(cfg, env, params)
    lineage = lambda key, t, demos, vis: one(key, env.with_task(params, t), demos, vis)
    over_seeds = jax.vmap(lineage, in_axes=(0, 0, 0, None))
    step = jax.jit(jax.vmap(over_seeds, in_axes=(0, None, 0, 0)))
    schedules = jnp.array([VISIBILITY[c] for c in CONDITIONS], jnp.float32)  # [C, 2]

    def generation(demos, g):
        keys = jax.random.split(jax.random.fold_in(k_gen, g), C * S).reshape(C, S)
        visibility = schedules if g > 0 else jnp.zeros_like(schedules)  # gen 0 trains alone
        return step(keys, tasks, demos, visibility)

    stamps, tick = generation_timer()

    def log(g, m):
        tick()
        alone = np.mean(m["return_alone"], axis=(1, 2))
        print(
            f"generation {g}: return alone "
            + ", ".join(f"{c} {a:.2f}" for c, a in zip(CONDITIONS, alone))
        )

    demos0 = jnp.broadcast_to(placeholder, (C, S) + placeholder.shape)
    _, lines = run_generations(generation, demos0, G, out / "generations", config, log)
    gen_s = median_s(stamps)
    alone = np.stack([np.array(m["return_alone"]) for m in lines], axis=-1)  # [C, S, P, G]
    social = np.stack([np.array(m["return_social"]) for m in lines], axis=-1)
    best_member = alone.max(axis=2)  # [C, S, G]
    mean_member = alone.mean(axis=2)

    # the baseline: one agent alone for generations x steps, evaluated every generation's steps
    init, block = make_single_lifetime_block(cfg, env, params)
    run_block = jax.jit(jax.vmap(lambda rs, t: block(rs, env.with_task(params, t))))
    t_base = time.perf_counter()
    _, base_lines = run_generations(
        lambda rs, g: run_block(rs, tasks),
        jax.jit(jax.vmap(init))(jax.random.split(k_base, S)),
        G,
        out / "single_lifetime",
        config,
        lambda g, m: print(f"single agent after {g + 1} x steps: {np.mean(m['return_alone']):.2f}"),
    )
    base_s = time.perf_counter() - t_base
    single = np.stack([np.array(m["return_alone"]) for m in base_lines], axis=-1)  # [S, G]

    anneal = mean_member[0]
    results = {
        "return_alone_per_generation": {
            c: [iqm_ci(mean_member[i, :, g]) for g in range(G)] for i, c in enumerate(CONDITIONS)
        },
        "best_member_per_generation": {
            c: [iqm_ci(best_member[i, :, g]) for g in range(G)] for i, c in enumerate(CONDITIONS)
        },
        "return_with_demonstrators_visible_anneal": [
            iqm_ci(social[0, :, :, g].mean(axis=1)) for g in range(G)
        ],
        "single_agent_per_block": [iqm_ci(single[:, g]) for g in range(G)],
        "last_generation_minus_generation_0": iqm_ci(anneal[:, -1] - anneal[:, 0]),
        "last_generation_minus_single_agent": iqm_ci(anneal[:, -1] - single[:, -1]),
        "anneal_minus_zero_last_generation": iqm_ci(anneal[:, -1] - mean_member[2, :, -1]),
        "per_seed": {"return_alone": mean_member.tolist(), "single_agent": single.tolist()},
        "timing": {
            "generation_wall_s": gen_s,
            "generation_env_steps_per_s": C
            * S
            * args.population
            * args.ppo.total_timesteps
            / gen_s,
            "single_agent_wall_s": base_s,
            "total_wall_s": time.perf_counter() - t0,
        },
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    x = np.arange(G)
    plot_iqm(
        out / "return_per_generation.png",
        x,
        {
            "visibility 1 -> 0": anneal,
            "visibility 1": mean_member[1],
            "visibility 0": mean_member[2],
            "single agent, (g + 1) x steps": single,
        },
        "generation (single agent: (g + 1) x steps)",
        "return alone (mean of population)",
        f"In-weights accumulation, {task.name}",
    )
    curves = {
        f"generation {g}": np.array(lines[g]["train_return"])[0].mean(axis=1) for g in range(G)
    }
    steps = (np.arange(args.ppo.num_updates) + 1) * args.ppo.batch_size
    plot_iqm(
        out / "training.png",
        steps / 1e3,
        curves,  # gaps where no episode ended in an update
        "env steps per agent (thousands)",
        "training episode return",
        "Training, visibility 1 -> 0",
    )
    summary = _summary(args, results)
    (out / "summary.md").write_text(summary)
    print(summary)
    return results


def _summary(args: MemoryArgs | GoalArgs, r: dict) -> str:
    G = args.generations
    per_gen = r["return_alone_per_generation"]
    rows = "\n".join(
        f"| {g} | {fmt_ci(per_gen['anneal'][g])} | {fmt_ci(per_gen['one'][g])} | "
        f"{fmt_ci(per_gen['zero'][g])} | {fmt_ci(r['single_agent_per_block'][g])} |"
        for g in range(G)
    )
    t = r["timing"]
    return (
        f"# In-weights cultural accumulation, {args.task.name} ({args.task.describe()}), "
        f"{args.seeds} seeds, population {args.population}\n\n"
        "Return playing alone; IQM [95% CI] over seeds of the population "
        f"mean; the single agent is evaluated after (g + 1) x {args.ppo.total_timesteps:,} "
        "steps.\n\n"
        f"| generation | visibility 1 -> 0 | fixed 1 | fixed 0 | single agent |\n"
        f"|---|---|---|---|---|\n{rows}\n\n"
        f"| difference (per seed) | IQM [95% CI] |\n|---|---|\n"
        f"| last generation - generation 0 | {fmt_ci(r['last_generation_minus_generation_0'])} |\n"
        f"| last generation - single agent ({G} x steps) | "
        f"{fmt_ci(r['last_generation_minus_single_agent'])} |\n"
        f"| visibility 1 -> 0 - fixed 0, last generation | "
        f"{fmt_ci(r['anneal_minus_zero_last_generation'])} |\n\n"
        f"{t['generation_wall_s']:.1f} s per generation after the first "
        f"(3 conditions x {args.seeds} seeds x "
        f"{args.population} agents, {t['generation_env_steps_per_s']:,.0f} env steps/s); "
        f"total {t['total_wall_s']:.0f} s.\n"
    )


Cli = (
    Annotated[MemoryArgs, tyro.conf.subcommand("memory")]
    | Annotated[GoalArgs, tyro.conf.subcommand("goal")]
)

if __name__ == "__main__":
    main(tyro.cli(Cli, default=MemoryArgs()))
