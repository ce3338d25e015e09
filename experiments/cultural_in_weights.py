"""In-weights cultural accumulation on Memory Sequence or Goal Sequence against one agent
trained as long.

Every seed is a lineage with its own fixed task (a hidden sequence, or a layout with its
start and hidden order). Each generation trains ``--population`` fresh recurrent PPO agents
for ``--ppo.total-steps`` steps while the previous generation's best recorded episodes are
shown (visibility annealed 1 -> 0; generation 0 trains alone), then evaluates them alone.
Ablations run the same loop with visibility fixed at 1 and at 0 (all three in one vmapped
program); the baseline is one agent trained alone for generations x steps, evaluated after
every generation's worth of steps. Every loop is checkpointed per generation and resumes.

    python -m experiments.cultural_in_weights memory --seeds 5
    python -m experiments.cultural_in_weights goal --seeds 5
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

import envs  # noqa: F401  (sets the XLA flags before any JAX program runs)
from agents.core import export_policy
from agents.ppo import PPOConfig
from experiments.plots import plot_curves
from experiments.runner import ChunkClock, iqm_ci, iqm_ci_columns, md_table, run_loop
from experiments.study import Study, StudyArgs, cli
from skills.cultural import (
    VISIBILITY,
    GoalTask,
    InWeightsConfig,
    MemoryTask,
    in_weights_ppo,
    make_in_weights_lineage,
    make_single_lifetime,
    reference_ppo,
)

CONDITIONS = ("anneal", "one", "zero")


@dataclasses.dataclass
class Args(StudyArgs):
    ppo: PPOConfig = dataclasses.field(default_factory=in_weights_ppo)  # one generation's training
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


def _generations(study, name, state, update, total, log):
    """Run ``update`` (one generation of every lineage) ``total`` times, resumably, in
    ``out/name``: (final state, metrics lines, median seconds per generation after the first)."""

    def step(state, start, n):  # n = 1: a generation is a chunk
        state, metrics = update(state)
        return state, jax.tree.map(lambda x: x[None], metrics)

    clock = ChunkClock(lambda start, n, metrics: log(start, jax.tree.map(lambda x: x[0], metrics)))
    state, lines = run_loop(
        study.folder(name), state, step, total, index="generation", on_chunk=clock
    )
    return state, lines, clock.median_s


def main(args: MemoryArgs | GoalArgs) -> dict:
    study, task = Study("cultural_in_weights", args), args.task
    if (done := study.finished()) is not None:
        return done
    G, S, C = args.generations, args.seeds, len(CONDITIONS)
    cfg = InWeightsConfig(args.ppo, G, args.population, args.num_demos, args.eval_episodes)
    env, params = task.in_weights(args.num_demos)
    tasks = task.draw_tasks(study.key("tasks"), (S,), params)  # one per lineage

    # generations: conditions x seeds in one program, on one batch axis (compiles faster)
    lineage = lambda t, v: make_in_weights_lineage(cfg, env, task.with_task(params, t), v)
    lineages = jax.tree.map(lambda x: jnp.concatenate([x] * C), tasks)  # [C * S]
    schedules = jnp.repeat(jnp.array([VISIBILITY[c] for c in CONDITIONS]), S, axis=0)
    keys = jnp.concatenate([study.seed_keys("lineage", c) for c in CONDITIONS])
    init = jax.jit(jax.vmap(lambda k, t, v: lineage(t, v).init(k)))(keys, lineages, schedules)
    update = jax.jit(jax.vmap(lambda s, t, v: lineage(t, v).update(s)))
    by_condition = lambda m: jax.tree.map(lambda x: x.reshape((C, S) + x.shape[1:]), m)

    def log(g, m):
        alone = np.mean(m["return_alone"], axis=(1, 2))
        print(
            f"generation {g}: return alone "
            + ", ".join(f"{c} {a:.2f}" for c, a in zip(CONDITIONS, alone))
        )

    agent = make_in_weights_lineage(cfg, env, params)  # its policy and step counts
    run = lambda s: (lambda s, m: (s, by_condition(m)))(*update(s, lineages, schedules))
    state, lines, gen_s = _generations(study, "generations", init, run, G, log)
    policy_dir = study.path / "generations" / "policy"  # the annealed lineage of seed 0
    if not policy_dir.exists():
        best = jax.tree.map(lambda x: x[0], agent.policy_params(state))
        export_policy(policy_dir, agent.policy, best, {**study.config, "generation": G - 1})
    stack = lambda lines, k: np.moveaxis(np.array([m[k] for m in lines], float), 0, -1)
    alone = stack(lines, "return_alone")  # [C, S, P, G]
    social = stack(lines, "return_social")
    best_member, mean_member = alone.max(axis=2), alone.mean(axis=2)  # [C, S, G]

    # the baseline: one agent alone for generations x steps, evaluated every generation's steps
    single = lambda t: make_single_lifetime(cfg, env, task.with_task(params, t))
    base_init = jax.jit(jax.vmap(lambda k, t: single(t).init(k)))(study.seed_keys("single"), tasks)
    base_update = jax.jit(jax.vmap(lambda s, t: single(t).update(s)))
    base_log = lambda g, m: print(
        f"single agent after {g + 1} x steps: {m['return_alone'].mean():.2f}"
    )
    t_base = time.perf_counter()
    run = lambda s: base_update(s, tasks)
    _, base_lines, _ = _generations(study, "single_lifetime", base_init, run, G, base_log)
    base_s = time.perf_counter() - t_base
    single = stack(base_lines, "return_alone")  # [S, G]

    anneal = mean_member[0]
    results = {
        "return_alone_per_generation": {
            c: iqm_ci_columns(mean_member[i]) for i, c in enumerate(CONDITIONS)
        },
        "best_member_per_generation": {
            c: iqm_ci_columns(best_member[i]) for i, c in enumerate(CONDITIONS)
        },
        "return_with_demonstrators_visible_anneal": iqm_ci_columns(social[0].mean(axis=1)),
        "single_agent_per_block": iqm_ci_columns(single),
        "last_generation_minus_generation_0": iqm_ci(anneal[:, -1] - anneal[:, 0]),
        "last_generation_minus_single_agent": iqm_ci(anneal[:, -1] - single[:, -1]),
        "anneal_minus_zero_last_generation": iqm_ci(anneal[:, -1] - mean_member[2, :, -1]),
        "per_seed": {"return_alone": mean_member, "single_agent": single},
        "timing": {
            "generation_wall_s": gen_s,
            "generation_env_steps_per_s": C * S * args.population * agent.steps_per_update / gen_s,
            "single_agent_wall_s": base_s,
            "total_wall_s": time.perf_counter() - study.start,
        },
    }
    curves = {
        "visibility 1 -> 0": anneal,
        "visibility 1": mean_member[1],
        "visibility 0": mean_member[2],
        "single agent, (g + 1) x steps": single,
    }
    labels = ("generation (single agent: (g + 1) x steps)", "return alone (mean of population)")
    title = f"In-weights accumulation, {task.name}"
    plot_curves(study.path / "return_per_generation.png", np.arange(G), curves, *labels, title)
    train = np.array([m["train_return"] for m in lines], float)[:, 0].mean(axis=2)  # [G, S, U]
    steps = (np.arange(args.ppo.num_updates) + 1) * args.ppo.batch_size / 1e3
    labels = ("env steps per agent (thousands)", "training episode return")
    curves = {f"generation {g}": train[g] for g in range(G)}  # gaps where no episode ended
    plot_curves(study.path / "training.png", steps, curves, *labels, "Training, visibility 1 -> 0")
    return study.finish(results, _summary(args, results))


def _summary(args: MemoryArgs | GoalArgs, r: dict) -> str:
    G, t = args.generations, r["timing"]
    per_gen = r["return_alone_per_generation"]
    cells = lambda g: [per_gen[c][g] for c in ("anneal", "one", "zero")]
    rows = [[g, *cells(g), r["single_agent_per_block"][g]] for g in range(G)]
    diffs = [
        ["last generation - generation 0", r["last_generation_minus_generation_0"]],
        [f"last generation - single agent ({G} x steps)", r["last_generation_minus_single_agent"]],
        ["visibility 1 -> 0 - fixed 0, last generation", r["anneal_minus_zero_last_generation"]],
    ]
    return (
        f"# In-weights cultural accumulation, {args.task.name} ({args.task.describe()}), "
        f"{args.seeds} seeds, population {args.population}\n\n"
        "Return playing alone; IQM [95% CI] over seeds of the population "
        f"mean; the single agent is evaluated after (g + 1) x {args.ppo.total_steps:,} "
        "steps.\n\n"
        + md_table(["generation", "visibility 1 -> 0", "fixed 1", "fixed 0", "single agent"], rows)
        + "\n\n"
        + md_table(["difference (per seed)", "IQM [95% CI]"], diffs)
        + "\n\n"
        f"{t['generation_wall_s']:.1f} s per generation after the first "
        f"(3 conditions x {args.seeds} seeds x "
        f"{args.population} agents, {t['generation_env_steps_per_s']:,.0f} env steps/s); "
        f"total {t['total_wall_s']:.0f} s.\n"
    )


def paper_memory() -> MemoryArgs:
    """The reference's in-weights setting: Memory Sequence of 10 symbols and length 24, 8
    generations of 5 agents, each trained for 1e5 steps by the reference's in-weights PPO."""
    task = MemoryTask(num_symbols=10, seq_len=24)
    return MemoryArgs(task=task, ppo=reference_ppo(task, in_weights=True), population=5,
                      eval_episodes=128)  # fmt: skip


def paper_goal() -> GoalArgs:
    """The reference's Goal Sequence (7x7, 50 steps per trial) under the in-weights setting
    of the paper's Memory Sequence (8 generations of 5 agents, 1e5 steps each)."""
    task = GoalTask(size=7, trial_length=50)
    return GoalArgs(task=task, ppo=reference_ppo(task, in_weights=True), population=5,
                    eval_episodes=128)  # fmt: skip


PRESETS = {
    "cpu": {"memory": MemoryArgs, "goal": GoalArgs},
    "paper": {"memory": paper_memory, "goal": paper_goal},
}


if __name__ == "__main__":
    main(cli(PRESETS))
