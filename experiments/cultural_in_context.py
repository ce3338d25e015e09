"""In-context cultural accumulation on Memory Sequence or Goal Sequence against equal-experience
RL^2 baselines.

1. Train, over ``--seeds`` seeds each: the social learner (recurrent PPO with noisy oracles,
   visibility decaying over the trials), RL^2 on ``num_trials`` trials, and RL^2 on
   generations x ``num_trials`` trials (no social channel), with the same number of
   environment steps; with ``--ablations``, also social learners trained with the
   demonstrator always visible (visibility fixed at 1) and never visible (fixed at 0).
2. Freeze them. On ``--tasks`` fixed task instances per seed run ``--generations`` generations
   of each social learner (population ``--population``; generation k + 1 watches generation
   k's best member), checkpointed per generation. RL^2-4 plays generations x 4 trials in one
   lifetime (its memory kept across episodes of the same task), RL^2-long its own episode.
3. Report last-trial return per generation and per trial, IQM and 95% CI over seeds.

    python -m experiments.cultural_in_context memory --seeds 5
    python -m experiments.cultural_in_context goal --seeds 5 --ablations
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

import envs  # noqa: F401  (sets the XLA flags before any JAX program runs)
from agents.ppo import PPOConfig, make_ppo
from experiments.plots import plot_curves
from experiments.runner import ChunkClock, RunFolder, iqm_ci, iqm_ci_columns, md_table, run_loop
from experiments.study import Study, StudyArgs, cli, config_dict, train_policy
from skills.cultural import (
    TRAINED_VISIBILITY,
    GoalTask,
    InContextConfig,
    MemoryTask,
    in_context_generations,
    lifetime_returns,
    reference_ppo,
)


@dataclasses.dataclass
class Args(StudyArgs):
    num_trials: int = 4
    ppo: PPOConfig = dataclasses.field(default_factory=MemoryTask().in_context_ppo)
    generations: int = 8
    population: int = 3
    tasks: int = 32  # fixed task instances per seed
    # which trial of the previous best member a generation watches: its "last" (the
    # reference) or its "best"; one chain of generations each, the first is the headline
    demo_from: tuple[str, ...] = ("last", "best")
    ablations: bool = False  # also train with visibility fixed at 1 and at 0 (2 more agents)
    updates_per_chunk: int = 50


@dataclasses.dataclass
class MemoryArgs(Args):
    out: str = "results/cultural_in_context"
    task: MemoryTask = dataclasses.field(default_factory=MemoryTask)


@dataclasses.dataclass
class GoalArgs(Args):
    out: str = "results/cultural_in_context_goal"
    ppo: PPOConfig = dataclasses.field(default_factory=GoalTask().in_context_ppo)
    generations: int = 4
    demo_from: tuple[str, ...] = ("last",)
    task: GoalTask = dataclasses.field(default_factory=GoalTask)


def main(args: MemoryArgs | GoalArgs) -> dict:
    study, task = Study("cultural_in_context", args), args.task
    if (done := study.finished()) is not None:
        return done
    G, T, S = args.generations, args.num_trials, args.seeds
    for mode in args.demo_from:  # settings errors before any training
        InContextConfig(G, args.population, mode).validate()
    # agents resume whatever the generations' settings; adding --ablations resumes too
    config = {k: v for k, v in study.config.items() if k != "ablations"}

    def train(name, env_and_params, key, num_trials):
        """(policy, params [S], training return [S, num_updates], timing) of one PPO agent."""
        run = {"experiment": study.name, "agent": name, "ppo": args.ppo, "seed": args.seed}
        run = config_dict(run | {"task": task, "num_trials": num_trials})
        agent = make_ppo(args.ppo, *env_and_params)
        folder, chunk = RunFolder(study.path / name, run), args.updates_per_chunk
        state, metrics, timing = train_policy(
            folder, agent, key, S, chunk, args.progress, video=(*env_and_params, args.video)
        )
        return agent.policy, agent.policy_params(state), metrics["return"], timing

    conditions = list(TRAINED_VISIBILITY) if args.ablations else ["decay"]
    suffix = lambda c: "" if c == "decay" else f"_{c}"
    social = {}  # every social learner starts from the same key
    for c in conditions:
        social[c] = train(
            f"social{suffix(c)}", task.social(T, **TRAINED_VISIBILITY[c]), study.key("social"), T
        )
    rl2_env, rl2_params = task.rl2(T)
    rl2 = train("rl2", (rl2_env, rl2_params), study.key("rl2"), T)
    long_params = task.rl2(G * T)[1]
    long = train(f"rl2_{G * T}_trials", (rl2_env, long_params), study.key("rl2_long"), G * T)

    # one fixed task per (seed, task) lineage, used by every generation and baseline
    env, params = task.social(T)
    tasks = task.draw_tasks(study.key("tasks"), (S, args.tasks), params)
    random_demos = task.random_demos(study.key("random_demos"), (S, args.tasks), params)

    def chain(condition: str, mode: str) -> tuple[np.ndarray, np.ndarray, float]:
        """Generations of one social learner, each watching the previous best member's
        ``mode`` trial: (trial returns [S, G, T], best member's last trial [S, G], s/gen)."""
        ic = InContextConfig(G, args.population, mode)
        key = study.key("generations")  # common to every chain
        step = in_context_generations(ic, *social[condition][:2], env, params, tasks, key)

        def log(start, n, m):
            last = np.mean(m["trial_returns"][0, :, -1])
            print(f"{condition}, {mode} trial watched, generation {start}: last trial {last:.2f}")

        extra = {"demo_from": mode} | (
            {"trained_visibility": condition} if suffix(condition) else {}
        )
        folder = RunFolder(study.path / f"generations_{mode}{suffix(condition)}", config | extra)
        clock = ChunkClock(log)  # seconds per generation
        _, lines = run_loop(folder, random_demos, step, G, index="generation", on_chunk=clock)
        trials = np.array([m["trial_returns"] for m in lines], float).transpose(1, 0, 2)
        best = np.array([m["best_last_trial"] for m in lines], float).T
        return trials, best, clock.median_s

    chains = {mode: chain("decay", mode) for mode in args.demo_from}
    ablations = {c: chain(c, "last")[0][:, :, -1] for c in conditions if c != "decay"}  # [S, G]
    gen_trials, best_last, gen_s = chains[args.demo_from[0]]
    play = lambda agent, env_params, n, key: lifetime_returns(
        task, *agent[:2], rl2_env, env_params, tasks, key, args.population, n
    )
    lifetimes = {  # [S, G*T] returns per trial of one lifetime, per RL^2 baseline
        "rl2": play(rl2, rl2_params, G, study.key("rl2", "lifetime")),
        "rl2_long": play(long, long_params, 1, study.key("rl2_long", "lifetime")),
    }

    last = gen_trials[:, :, -1]  # [S, G]
    results = {
        "last_trial_return_per_generation": iqm_ci_columns(last),
        "best_member_last_trial_per_generation": iqm_ci_columns(best_last),
        "last_trial_return_per_generation_by_demo": {
            mode: iqm_ci_columns(c[0][:, :, -1]) for mode, c in chains.items()
        },
        "rl2_trained_trials": {"rl2": T, "rl2_long": G * T},
        "rl2_last_trial": {k: iqm_ci(v[:, -1]) for k, v in lifetimes.items()},
        "rl2_best_trial": {k: iqm_ci(v.max(axis=1)) for k, v in lifetimes.items()},
        "last_generation_minus": {"generation_0": iqm_ci(last[:, -1] - last[:, 0])}
        | {k: iqm_ci(last[:, -1] - v[:, -1]) for k, v in lifetimes.items()},
        "per_seed": {"generation_last_trial": last, **lifetimes},
    }
    if ablations:
        results["ablations_last_trial_per_generation"] = {
            c: iqm_ci_columns(a) for c, a in ablations.items()
        }
        results["ablations_last_generation_minus_generation_0"] = {
            c: iqm_ci(a[:, -1] - a[:, 0]) for c, a in ablations.items()
        }
        results["decay_minus_ablation_last_generation"] = {
            c: iqm_ci(last[:, -1] - a[:, -1]) for c, a in ablations.items()
        }
        results["per_seed"]["ablations_last_trial"] = ablations
    results["timing"] = {
        "train_wall_s": {name: s[3]["wall_s"] for name, s in social.items()},
        # NaN when the training was resumed from a finished run
        "train_env_steps_per_s": social["decay"][3]["steps_per_s"],
        "generation_wall_s": gen_s,
        "total_wall_s": time.perf_counter() - study.start,
    }
    _plots(study, args, chains, ablations, lifetimes, social, rl2, long, results)
    return study.finish(results, _summary(args, results))


def _plots(study, args, chains, ablations, lifetimes, social, rl2, long, r):
    G, T, S, name = args.generations, args.num_trials, args.seeds, args.task.name
    plot = lambda file, *rest: plot_curves(study.path / file, *rest)
    trained = {k: f"RL^2 {n} trials" for k, n in r["rl2_trained_trials"].items()}
    hlines = {f"{trained[k]}, trial {G * T}": ci for k, ci in r["rl2_last_trial"].items()}
    curves = {f"social learner, watching the {m} trial": c[0][:, :, -1] for m, c in chains.items()}
    curves |= {f"trained with visibility {c.replace('_', ' ')}": a for c, a in ablations.items()}
    labels = ("generation", "last-trial return", f"In-context accumulation, {name}")
    plot("return_per_generation.png", np.arange(G), curves, *labels, hlines)
    trials = {f"generations, {m} trial watched": c[0].reshape(S, G * T) for m, c in chains.items()}
    trials |= {trained[k]: v for k, v in lifetimes.items()}
    x, labels = np.arange(1, G * T + 1), ("trial (cumulative experience)", "trial return")
    plot("return_per_trial.png", x, trials, *labels, f"Return per trial, {name}")
    steps = (np.arange(args.ppo.num_updates) + 1) * args.ppo.batch_size / 1e6
    training = {f"social ({c.replace('_', ' ')})": s[2] for c, s in social.items()}
    training |= {f"RL^2 {T}": rl2[2], f"RL^2 {G * T}": long[2]}
    labels = ("env steps (millions)", "training episode return", f"Training, {name}")
    plot("training.png", steps, training, *labels)


def _summary(args: MemoryArgs | GoalArgs, r: dict) -> str:
    G, T, t = args.generations, args.num_trials, r["timing"]
    modes = list(r["last_trial_return_per_generation_by_demo"])
    ablations = r.get("ablations_last_trial_per_generation", {})
    columns = {
        f"watching {m} trial": v for m, v in r["last_trial_return_per_generation_by_demo"].items()
    }
    columns |= {f"trained with visibility {c[-1]}": a for c, a in ablations.items()}
    columns["best member"] = r["best_member_last_trial_per_generation"]
    rows = [[f"generation {g}", *(c[g] for c in columns.values())] for g in range(G)]
    who = {"generation_0": "generation 0"}
    who |= {k: f"RL^2 trained on {n} trials" for k, n in r["rl2_trained_trials"].items()}
    for k, ci in r["rl2_last_trial"].items():
        lifetime = " of one lifetime" if k == "rl2" else ""  # RL^2-long plays one episode
        rows.append([f"{who[k]}, trial {G * T}{lifetime}", ci])
    diffs = {f"last generation - {who[k]}": d for k, d in r["last_generation_minus"].items()}
    for c, d in r.get("ablations_last_generation_minus_generation_0", {}).items():
        diffs[f"visibility {c[-1]}: last generation - generation 0"] = d
    for c, d in r.get("decay_minus_ablation_last_generation", {}).items():
        diffs[f"last generation: decaying - visibility {c[-1]}"] = d
    accuracy = getattr(args.task, "oracle_accuracy", None)  # Goal Sequence's is fixed
    oracle = f"Social learners trained with oracles of accuracy {accuracy}.\n\n" if accuracy else ""
    return (
        f"# In-context cultural accumulation, {args.task.name} ({args.task.describe()}, "
        f"{T} trials), {args.seeds} seeds x {args.tasks} tasks\n\n{oracle}"
        "Last-trial return, IQM [95% CI] over seeds of the population mean, for generations "
        f"watching the previous best member's {' / '.join(modes)} trial"
        + (", for learners trained with visibility fixed" if ablations else "")
        + f", and the best member ({modes[0]}); differences use the {modes[0]} chain:\n\n"
        + md_table(["who", *columns], rows)
        + "\n\n"
        + md_table(["difference (per seed)", "IQM [95% CI]"], diffs.items())
        + f"\n\n{args.ppo.total_steps:,} training steps per agent and seed; training "
        f"{t['train_env_steps_per_s']:,.0f} env steps/s (social learner, all seeds); "
        f"{t['generation_wall_s']:.2f} s per generation after the first; "
        f"total {t['total_wall_s']:.0f} s.\n"
    )


def paper_memory() -> MemoryArgs:
    """The reference's Memory Sequence (3 symbols, 24 per trial, 4 trials) and its PPO
    (``skills.cultural.reference_ppo``: 8M steps), 128 task instances per seed."""
    task = MemoryTask(num_symbols=3, seq_len=24)
    return MemoryArgs(task=task, ppo=reference_ppo(task), tasks=128)


def paper_goal() -> GoalArgs:
    """The reference's Goal Sequence (7x7, 3 goals, 50 steps per trial) and its PPO
    (``skills.cultural.reference_ppo``: 15M steps at lr 1e-5), 128 task instances per seed."""
    task = GoalTask(size=7, trial_length=50)
    return GoalArgs(task=task, ppo=reference_ppo(task), tasks=128)


PRESETS = {
    "cpu": {"memory": MemoryArgs, "goal": GoalArgs},
    "paper": {"memory": paper_memory, "goal": paper_goal},
}


if __name__ == "__main__":
    main(cli(PRESETS))
