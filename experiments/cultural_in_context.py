"""In-context cultural accumulation on Memory Sequence against equal-experience RL^2 baselines.

1. Train, over ``--seeds`` seeds each: the social learner (recurrent PPO with noisy oracles,
   visibility decaying over the 4 trials), RL^2 on 4 trials, and RL^2 on generations x 4
   trials (no social channel), with the same number of environment steps.
2. Freeze them. On ``--tasks`` fixed sequences per seed run ``--generations`` generations of
   the social learner (population ``--population``; generation k + 1 watches generation k's
   best member), checkpointed per generation. RL^2-4 plays generations x 4 trials in one
   lifetime (its memory kept across episodes of the same task), RL^2-long its own episode.
3. Report last-trial return per generation and per trial, IQM and 95% CI over seeds.

    python -m experiments.cultural_in_context --seeds 5
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
import tyro

import envs  # noqa: F401  (sets the XLA flags before any JAX program runs)
from agents.cultural import (
    InContextConfig,
    make_in_context_generation,
    record_play,
    run_generations,
)
from agents.hparams import to_dict
from agents.ppo import PPOConfig, make_ppo
from envs.gridworlds.memory_sequence import MemorySequence
from envs.gridworlds.social import SocialMemorySequence
from experiments.runner import RunFolder, iqm_ci, run_chunked


def default_ppo() -> PPOConfig:
    return PPOConfig(
        num_envs=32,
        num_steps=64,
        total_timesteps=300_000,
        update_epochs=2,
        num_minibatches=4,
        recurrent=True,
        hidden=(64,),
        embed=(64,),
        gru_hidden=128,
        lr=2e-3,
        ent_coef=0.02,
    )


@dataclasses.dataclass
class Args:
    out: str = "results/cultural_in_context"  # an existing folder is resumed
    seeds: int = 5
    seed: int = 0
    num_symbols: int = 3
    seq_len: int = 6
    num_trials: int = 4
    ppo: PPOConfig = dataclasses.field(default_factory=default_ppo)
    generations: int = 8
    population: int = 3
    tasks: int = 32  # fixed task instances (sequences) per seed
    # which trial of the previous best member a generation watches: its "last" (the
    # reference) or its "best"; one chain of generations each, the first is the headline
    demo_from: tuple[str, ...] = ("last", "best")
    updates_per_chunk: int = 50
    progress: bool = True


def plot_iqm(
    path: Path,
    x: np.ndarray,
    curves: Mapping[str, np.ndarray],
    xlabel: str,
    ylabel: str,
    title: str,
    hlines: Mapping[str, tuple[float, float, float]] | None = None,
) -> None:
    """PNG of the IQM (line) and 95% bootstrap CI (band) over seeds of each [S, N] curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, y in curves.items():
        stats = np.array([iqm_ci(y[:, i], reps=500) for i in range(y.shape[1])])
        (line,) = ax.plot(x, stats[:, 0], marker="o", ms=3, label=f"{name} ({y.shape[0]} seeds)")
        ax.fill_between(x, stats[:, 1], stats[:, 2], alpha=0.2, color=line.get_color())
    for i, (name, (point, lo, hi)) in enumerate((hlines or {}).items()):
        colour = f"C{len(curves) + i}"
        ax.axhline(point, ls="--", color=colour, label=name)
        ax.axhspan(lo, hi, alpha=0.12, color=colour)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train(name: str, env, env_params, args: Args, key: jax.Array, out: Path):
    """Recurrent PPO on ``env`` over ``args.seeds`` seeds, resumable; (policy, params [S])."""
    ppo = make_ppo(args.ppo, env, env_params)
    folder = RunFolder(
        out / name,
        {
            "experiment": "cultural_in_context",
            "agent": name,
            "ppo": to_dict(args.ppo),
            "seed": args.seed,
        },
    )
    state, metrics, timing = run_chunked(
        ppo.init,
        ppo.update,
        args.ppo.num_updates,
        args.ppo.batch_size,
        key,
        args.seeds,
        folder,
        args.updates_per_chunk,
        args.progress,
    )
    return ppo.policy, state.train_state.params, metrics["return"], timing


def main(args: Args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"experiment": "cultural_in_context", **dataclasses.asdict(args)}
    config["ppo"] = to_dict(args.ppo)
    for k in ("out", "progress", "updates_per_chunk"):
        config.pop(k)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    t0 = time.perf_counter()
    key = jax.random.key(args.seed)
    k_social, k_rl2, k_long, k_tasks, k_gen, k_base = jax.random.split(key, 6)
    sizes = dict(num_symbols=args.num_symbols, seq_len=args.seq_len)
    G, T, L = args.generations, args.num_trials, args.seq_len

    social_env = SocialMemorySequence()
    social_params = social_env.in_context_params(num_trials=T, **sizes)
    plain_env = MemorySequence()
    rl2_params = plain_env.in_context_params(num_trials=T, **sizes)
    long_params = plain_env.in_context_params(num_trials=G * T, **sizes)

    social_policy, social_agents, social_curve, social_t = train(
        "social", social_env, social_params, args, k_social, out
    )
    rl2_policy, rl2_agents, rl2_curve, rl2_t = train("rl2", plain_env, rl2_params, args, k_rl2, out)
    long_policy, long_agents, long_curve, long_t = train(
        f"rl2_{G * T}_trials", plain_env, long_params, args, k_long, out
    )

    # one fixed task per (seed, task) lineage, used by every generation and baseline
    sequences = jax.random.randint(k_tasks, (args.seeds, args.tasks, L), 0, args.num_symbols)
    random_demos = jax.random.randint(
        jax.random.fold_in(k_gen, G), (args.seeds, args.tasks, L), 0, args.num_symbols
    )

    def chain(mode: str) -> tuple[np.ndarray, np.ndarray, float]:
        """Generations where each watches the previous best member's ``mode`` trial:
        (trial returns [S, G, T], best member's last trial [S, G], s per generation)."""
        ic = InContextConfig(G, args.population, mode)
        one_generation = make_in_context_generation(ic, social_policy, social_env, social_params)
        over_seeds = jax.jit(jax.vmap(jax.vmap(one_generation, in_axes=(None, 0, 0, 0))))

        def generation(demos, g):  # demos int32 [S, tasks, L]
            keys = jax.random.split(jax.random.fold_in(k_gen, g), args.seeds * args.tasks)
            keys = keys.reshape(args.seeds, args.tasks)
            demos, record = over_seeds(social_agents, sequences, demos, keys)
            returns = record.trial_returns  # [S, tasks, population, T]
            return demos, {
                "trial_returns": returns.mean(axis=(1, 2)),  # [S, T]
                "best_last_trial": returns[..., -1].max(axis=2).mean(axis=1),  # [S]
            }

        stamps = [time.perf_counter()]

        def log(g: int, m: dict) -> None:
            stamps.append(time.perf_counter())
            print(
                f"demo from {mode} trial, generation {g}: last-trial return "
                f"{np.mean(m['trial_returns'], axis=0)[-1]:.2f}"
            )

        _, lines = run_generations(
            generation,
            random_demos,
            G,
            out / f"generations_{mode}",
            {**config, "demo_from": mode},
            log,
        )
        trials = np.stack([np.array(m["trial_returns"]) for m in lines], axis=1)
        best = np.stack([np.array(m["best_last_trial"]) for m in lines], axis=1)
        # seconds per generation, the first (which compiles) left out; NaN when resumed
        seconds = np.diff(stamps)[1:]
        return trials, best, float(np.median(seconds)) if seconds.size else float("nan")

    chains = {mode: chain(mode) for mode in args.demo_from}
    gen_trials, best_last, gen_s = chains[args.demo_from[0]]

    def lifetime(policy, agents, params, lifetimes, key):
        def one(agent, seqs, key):
            def task(seq, key):
                p = params.replace(fixed_sequence=True, sequence=seq)
                r = record_play(policy, agent, plain_env, p, key, args.population, lifetimes)
                return r.trial_returns.mean(axis=0)  # [trials]

            return jax.vmap(task)(seqs, jax.random.split(key, args.tasks)).mean(axis=0)

        keys = jax.random.split(key, args.seeds)
        return np.asarray(jax.jit(jax.vmap(one))(agents, sequences, keys))  # [S, G*T]

    k1, k2 = jax.random.split(k_base)
    rl2_trials = lifetime(rl2_policy, rl2_agents, rl2_params, G, k1)
    long_trials = lifetime(long_policy, long_agents, long_params, 1, k2)

    # ------------------------------------------------------------------ figures
    last = gen_trials[:, :, -1]  # [S, G]
    results = {
        "last_trial_return_per_generation": [iqm_ci(last[:, g]) for g in range(G)],
        "best_member_last_trial_per_generation": [iqm_ci(best_last[:, g]) for g in range(G)],
        "last_trial_return_per_generation_by_demo": {
            mode: [iqm_ci(c[0][:, g, -1]) for g in range(G)] for mode, c in chains.items()
        },
        "rl2_4_trials_last_trial": iqm_ci(rl2_trials[:, -1]),
        "rl2_4_trials_best_trial": iqm_ci(rl2_trials.max(axis=1)),
        f"rl2_{G * T}_trials_last_trial": iqm_ci(long_trials[:, -1]),
        f"rl2_{G * T}_trials_best_trial": iqm_ci(long_trials.max(axis=1)),
        "last_generation_minus_generation_0": iqm_ci(last[:, -1] - last[:, 0]),
        "last_generation_minus_rl2_4": iqm_ci(last[:, -1] - rl2_trials[:, -1]),
        f"last_generation_minus_rl2_{G * T}": iqm_ci(last[:, -1] - long_trials[:, -1]),
        "per_seed": {
            "generation_last_trial": last.tolist(),
            "rl2_4_trials": rl2_trials.tolist(),
            f"rl2_{G * T}_trials": long_trials.tolist(),
        },
        "timing": {
            "train_wall_s": {
                "social": social_t["wall_s"],
                "rl2": rl2_t["wall_s"],
                "rl2_long": long_t["wall_s"],
            },
            # NaN when the training was resumed from a finished run
            "train_env_steps_per_s": social_t["env_steps_per_s"]
            if social_t["run_s"] > 1e-3
            else float("nan"),
            "generation_wall_s": gen_s,
            "total_wall_s": time.perf_counter() - t0,
        },
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    hlines = {
        f"RL^2 4 trials, trial {G * T}": results["rl2_4_trials_last_trial"],
        f"RL^2 {G * T} trials, trial {G * T}": results[f"rl2_{G * T}_trials_last_trial"],
    }
    plot_iqm(
        out / "return_per_generation.png",
        np.arange(G),
        {f"social learner, watching the {m} trial": c[0][:, :, -1] for m, c in chains.items()},
        "generation",
        "last-trial return",
        "In-context accumulation, Memory Sequence",
        hlines,
    )
    plot_iqm(
        out / "return_per_trial.png",
        np.arange(1, G * T + 1),
        {
            **{
                f"generations, {m} trial watched": c[0].reshape(args.seeds, G * T)
                for m, c in chains.items()
            },
            "RL^2 4 trials, one lifetime": rl2_trials,
            f"RL^2 {G * T} trials": long_trials,
        },
        "trial (cumulative experience)",
        "trial return",
        "Return per trial",
    )
    steps = (np.arange(args.ppo.num_updates) + 1) * args.ppo.batch_size
    plot_iqm(
        out / "training.png",
        steps[9::10] / 1e6,
        {
            "social": social_curve[:, 9::10],
            "RL^2 4": rl2_curve[:, 9::10],
            f"RL^2 {G * T}": long_curve[:, 9::10],
        },
        "env steps (millions)",
        "training episode return",
        "Training",
    )
    summary = _summary(args, results)
    (out / "summary.md").write_text(summary)
    print(summary)
    return results


def _fmt(x: tuple[float, float, float]) -> str:
    return f"{x[0]:.2f} [{x[1]:.2f}, {x[2]:.2f}]"


def _summary(args: Args, r: dict) -> str:
    G, T = args.generations, args.num_trials
    by_demo = r["last_trial_return_per_generation_by_demo"]
    modes = list(by_demo)
    rows = "\n".join(
        f"| generation {g} | "
        + " | ".join(_fmt(by_demo[m][g]) for m in modes)
        + f" | {_fmt(r['best_member_last_trial_per_generation'][g])} |"
        for g in range(G)
    )
    blank = " |" * (len(modes) + 1)
    t = r["timing"]
    return (
        f"# In-context cultural accumulation, Memory Sequence ({args.num_symbols} symbols, "
        f"length {args.seq_len}, {T} trials), {args.seeds} seeds x {args.tasks} tasks\n\n"
        "Last-trial return, IQM [95% CI] over seeds of the population mean, for generations "
        "watching the previous best member's " + " / ".join(modes) + " trial, and the best "
        f"member ({modes[0]}); differences use the {modes[0]} chain:\n\n"
        "| who | "
        + " | ".join(f"watching {m} trial" for m in modes)
        + " | best member |\n"
        + "|---" * (len(modes) + 2)
        + f"|\n{rows}\n"
        f"| RL^2 trained on {T} trials, trial {G * T} of one lifetime | "
        f"{_fmt(r['rl2_4_trials_last_trial'])}{blank}\n"
        f"| RL^2 trained on {G * T} trials, trial {G * T} | "
        f"{_fmt(r[f'rl2_{G * T}_trials_last_trial'])}{blank}\n\n"
        f"| difference (per seed) | IQM [95% CI] |\n|---|---|\n"
        f"| last generation - generation 0 | "
        f"{_fmt(r['last_generation_minus_generation_0'])} |\n"
        f"| last generation - RL^2 {T} trials | {_fmt(r['last_generation_minus_rl2_4'])} |\n"
        f"| last generation - RL^2 {G * T} trials | "
        f"{_fmt(r[f'last_generation_minus_rl2_{G * T}'])} |\n\n"
        f"{args.ppo.total_timesteps:,} training steps per agent and seed; training "
        f"{t['train_env_steps_per_s']:,.0f} env steps/s (social learner, all seeds); "
        f"{t['generation_wall_s']:.2f} s per generation after the first; "
        f"total {t['total_wall_s']:.0f} s.\n"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
