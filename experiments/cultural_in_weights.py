"""In-weights cultural accumulation on Memory Sequence against one agent trained as long.

Every seed is a lineage with its own fixed hidden sequence. Each generation trains
``--population`` fresh recurrent PPO agents for ``--ppo.total-timesteps`` steps while the
previous generation's best recorded episodes are shown (visibility annealed 1 -> 0; generation
0 trains alone), then evaluates them alone. Ablations run the same loop with visibility fixed
at 1 and at 0 (all three in one vmapped program); the baseline is one agent trained alone for
generations x steps, evaluated after every generation's worth of steps. Every loop is
checkpointed per generation and resumes.

    python -m experiments.cultural_in_weights --seeds 5
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

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
from agents.hparams import to_dict
from agents.ppo import PPOConfig
from envs.gridworlds.social import SocialMemorySequence
from experiments.cultural_in_context import plot_iqm
from experiments.runner import iqm_ci

CONDITIONS = ("anneal", "one", "zero")


def default_ppo() -> PPOConfig:
    return PPOConfig(
        num_envs=16,
        num_steps=32,
        total_timesteps=16_384,
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
class Args:
    out: str = "results/cultural_in_weights"  # an existing folder is resumed
    seeds: int = 5
    seed: int = 0
    num_symbols: int = 10  # the reference's sequence: 10 symbols, length 24
    seq_len: int = 24
    ppo: PPOConfig = dataclasses.field(default_factory=default_ppo)  # one generation's training
    generations: int = 4
    population: int = 2
    num_demos: int = 8
    eval_episodes: int = 32
    progress: bool = True


def main(args: Args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"experiment": "cultural_in_weights", **dataclasses.asdict(args)}
    config["ppo"] = to_dict(args.ppo)
    for k in ("out", "progress"):
        config.pop(k)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    t0 = time.perf_counter()
    G, S, C, L = args.generations, args.seeds, len(CONDITIONS), args.seq_len
    cfg = InWeightsConfig(args.ppo, G, args.population, args.num_demos, args.eval_episodes)
    k_seq, k_gen, k_base = jax.random.split(jax.random.key(args.seed), 3)

    env = SocialMemorySequence()
    placeholder = jnp.full((args.num_demos, L), args.num_symbols, jnp.int32)
    params = env.in_weights_params(0, args.num_symbols, L, demos=placeholder)
    sequences = jax.random.randint(k_seq, (S, L), 0, args.num_symbols)  # one per lineage

    # generations: conditions x seeds in one program; carry = demonstrations [C, S, D, L]
    one = make_in_weights_generation(cfg, env, params)
    lineage = lambda key, seq, demos, vis: one(key, params.replace(sequence=seq), demos, vis)
    over_seeds = jax.vmap(lineage, in_axes=(0, 0, 0, None))
    step = jax.jit(jax.vmap(over_seeds, in_axes=(0, None, 0, 0)))
    schedules = jnp.array([VISIBILITY[c] for c in CONDITIONS], jnp.float32)  # [C, 2]

    def generation(demos, g):
        keys = jax.random.split(jax.random.fold_in(k_gen, g), C * S).reshape(C, S)
        visibility = schedules if g > 0 else jnp.zeros_like(schedules)  # gen 0 trains alone
        return step(keys, sequences, demos, visibility)

    stamps = [time.perf_counter()]

    def log(g, m):
        stamps.append(time.perf_counter())
        alone = np.mean(m["return_alone"], axis=(1, 2))
        print(
            f"generation {g}: return alone "
            + ", ".join(f"{c} {a:.2f}" for c, a in zip(CONDITIONS, alone))
        )

    demos0 = jnp.broadcast_to(placeholder, (C, S) + placeholder.shape)
    _, lines = run_generations(generation, demos0, G, out / "generations", config, log)
    seconds = np.diff(stamps)[1:]  # the first generation (which compiles) left out
    gen_s = float(np.median(seconds)) if seconds.size else float("nan")  # NaN when resumed
    alone = np.stack([np.array(m["return_alone"]) for m in lines], axis=-1)  # [C, S, P, G]
    social = np.stack([np.array(m["return_social"]) for m in lines], axis=-1)
    best_member = alone.max(axis=2)  # [C, S, G]
    mean_member = alone.mean(axis=2)

    # the baseline: one agent alone for generations x steps, evaluated every generation's steps
    init, block = make_single_lifetime_block(cfg, env, params)
    run_block = jax.jit(jax.vmap(lambda rs, seq: block(rs, params.replace(sequence=seq))))
    t_base = time.perf_counter()
    _, base_lines = run_generations(
        lambda rs, g: run_block(rs, sequences),
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
        "In-weights accumulation, Memory Sequence",
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


def _fmt(x) -> str:
    return f"{x[0]:.2f} [{x[1]:.2f}, {x[2]:.2f}]"


def _summary(args: Args, r: dict) -> str:
    G = args.generations
    per_gen = r["return_alone_per_generation"]
    rows = "\n".join(
        f"| {g} | {_fmt(per_gen['anneal'][g])} | {_fmt(per_gen['one'][g])} | "
        f"{_fmt(per_gen['zero'][g])} | {_fmt(r['single_agent_per_block'][g])} |"
        for g in range(G)
    )
    t = r["timing"]
    return (
        f"# In-weights cultural accumulation, Memory Sequence ({args.num_symbols} symbols, "
        f"length {args.seq_len}), {args.seeds} seeds, population {args.population}\n\n"
        f"Return playing alone (max {args.seq_len}); IQM [95% CI] over seeds of the population "
        f"mean; the single agent is evaluated after (g + 1) x {args.ppo.total_timesteps:,} "
        "steps.\n\n"
        f"| generation | visibility 1 -> 0 | fixed 1 | fixed 0 | single agent |\n"
        f"|---|---|---|---|---|\n{rows}\n\n"
        f"| difference (per seed) | IQM [95% CI] |\n|---|---|\n"
        f"| last generation - generation 0 | {_fmt(r['last_generation_minus_generation_0'])} |\n"
        f"| last generation - single agent ({G} x steps) | "
        f"{_fmt(r['last_generation_minus_single_agent'])} |\n"
        f"| visibility 1 -> 0 - fixed 0, last generation | "
        f"{_fmt(r['anneal_minus_zero_last_generation'])} |\n\n"
        f"{t['generation_wall_s']:.1f} s per generation after the first "
        f"(3 conditions x {args.seeds} seeds x "
        f"{args.population} agents, {t['generation_env_steps_per_s']:,.0f} env steps/s); "
        f"total {t['total_wall_s']:.0f} s.\n"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
