"""The quickstart: the whole pipeline at small scale on a CPU in a few minutes.

1. Feed-forward PPO on the multi-skill gridworld with the commanded skill visible
   (goal-conditioned navigation), 5 seeds in one vmapped program, against the scripted expert.
2. Memory Sequence (in-weights, a sequence a memoryless policy cannot reproduce):
   recurrent vs feed-forward PPO, 3 seeds each.
Each run writes its folder (config, metrics, checkpoints, learning curve, an exported policy)
under ``--out``; the combined ``summary.md`` and ``results.json`` sit at the top.

    python -m experiments.quickstart
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

import envs
from agents.evaluation import evaluate
from agents.ppo import PPOConfig, make_ppo
from envs.gridworlds.multi_skill import rollout_expert
from experiments.plots import plot_curves
from experiments.runner import iqm_ci, md_table
from experiments.study import Study, StudyArgs, cli, train_policy

# A sequence whose next symbol is not a function of the previous one: memory is required.
MEMORY_SEQUENCE = [0, 1, 0, 2, 0, 1, 0, 2]
MEMORY = {"num_symbols": 3, "seq_len": 8, "num_trials": 1, "fixed_sequence": True}
MULTI_SKILL = {"reveal_skill": True, "min_skill_len": 64, "max_skill_len": 64}


@dataclasses.dataclass
class Args(StudyArgs):
    out: str = "results/quickstart"
    gridworld_steps: int = 250_000
    memory_seeds: int = 3
    memory_steps: int = 300_000
    eval_episodes: int = 64  # greedy episodes per seed


def gridworld_config(total_steps: int) -> PPOConfig:
    return PPOConfig(
        num_envs=64,
        num_steps=32,
        total_steps=total_steps,
        num_minibatches=4,
        hidden=(128, 128),
        lr=1e-3,
        gamma=0.95,
    )


def memory_config(total_steps: int, recurrent: bool) -> PPOConfig:
    return PPOConfig(
        num_envs=16,
        num_steps=32,
        total_steps=total_steps,
        num_minibatches=4,
        recurrent=recurrent,
        hidden=(64,),
        embed=(64,),
        gru_hidden=64,
        lr=3e-3,
    )


def expert_return(env_name: str, env_kwargs: dict, episodes: int = 256) -> float:
    """Mean return of the multi-skill gridworld's scripted expert."""
    env, params = envs.make(env_name, **env_kwargs)
    steps = int(params.max_steps_in_episode)
    demos = jax.jit(jax.vmap(lambda k: rollout_expert(k, env, params, steps)))(
        jax.random.split(jax.random.key(0), episodes)
    )
    return float(demos.reward.sum(axis=1).mean())


def run(study: Study, name: str, config: PPOConfig, env_name: str, env_kwargs: dict, seeds: int):
    """PPO on one env over ``seeds`` seeds: training curve plot, greedy returns [S] per seed."""
    env, params = envs.make(env_name, **env_kwargs)
    ppo = make_ppo(config, env, params)
    folder = study.folder(name, env=env_name, env_kwargs=env_kwargs, ppo=config, seeds=seeds)
    key = study.key(name, "train")
    video = (env, params, study.args.video)
    state, metrics, _ = train_policy(
        folder, ppo, key, seeds, progress=study.args.progress, video=video
    )
    greedy = lambda p, k: evaluate(k, env, params, ppo.policy, p, study.args.eval_episodes)
    keys = jax.random.split(study.key(name, "evaluate"), seeds)
    returns = jax.jit(jax.vmap(greedy))(ppo.policy_params(state), keys)["return"].mean(axis=1)
    steps = (np.arange(config.num_updates) + 1) * config.batch_size
    plot_curves(
        folder.path / "learning_curve.png",
        steps,
        {name: metrics["return"]},
        "environment steps per seed",
        "episode return (training)",
        f"PPO on {env_name}",
    )
    return iqm_ci(np.asarray(returns))


def main(args: Args) -> dict:
    study = Study("quickstart", args)
    if (done := study.finished()) is not None:
        return done
    memory_env = {**MEMORY, "sequence": MEMORY_SEQUENCE}
    grid = gridworld_config(args.gridworld_steps)
    results = {
        "multiskill": run(study, "multiskill_ppo", grid, "MultiSkill", MULTI_SKILL, args.seeds),
        "expert": expert_return("MultiSkill", MULTI_SKILL),
    }
    for recurrent, name in ((True, "recurrent"), (False, "feedforward")):
        config = memory_config(args.memory_steps, recurrent)
        results[name] = run(
            study, f"memory_{name}", config, "MemorySequence", memory_env, args.memory_seeds
        )
    memory = f"PPO, Memory Sequence {MEMORY_SEQUENCE} ({args.memory_seeds} seeds)"
    rows = [
        [f"PPO, multi-skill gridworld, command visible ({args.seeds} seeds)",
         results["multiskill"], f"scripted expert {results['expert']:.2f}"],
        *([f"{name} {memory}", results[name], f"perfect {len(MEMORY_SEQUENCE)}"]
          for name in ("recurrent", "feedforward")),
    ]  # fmt: skip
    table = md_table(["study", "greedy return IQM [95% CI]", "reference"], rows)
    wall = f"Total wall-clock {time.perf_counter() - study.start:.0f} s."
    return study.finish(results, f"# Quickstart results\n\n{table}\n\n{wall}\n")


def paper() -> Args:
    """The same pipeline at accelerator scale: 20x the gridworld budget, Memory Sequence
    trained for the cultural-accumulation paper's 8M steps, 5 seeds, 1,024 episodes each."""
    return Args(
        seeds=5, gridworld_steps=5_000_000, memory_seeds=5, memory_steps=8_000_000,
        eval_episodes=1024,
    )  # fmt: skip


PRESETS = {"cpu": Args, "paper": paper}


if __name__ == "__main__":
    main(cli(PRESETS))
