"""The quickstart: the whole pipeline at small scale on a CPU in a few minutes.

1. Feed-forward PPO on the multi-skill gridworld with the commanded skill visible
   (goal-conditioned navigation), 5 seeds in one vmapped program, against the scripted expert.
2. Memory Sequence (in-weights, a sequence a memoryless policy cannot reproduce):
   recurrent vs feed-forward PPO, 3 seeds each.
Each study writes its run folder (config, metrics, checkpoints, learning curve, summary,
an exported policy) under ``--out``; a combined ``summary.md`` sits at the top.

    python -m experiments.quickstart
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import tyro

import envs
from agents.ppo import PPOConfig
from envs.gridworlds.multi_skill import rollout_expert
from experiments import ppo as ppo_experiment

# A sequence whose next symbol is not a function of the previous one: memory is required.
MEMORY_SEQUENCE = [0, 1, 0, 2, 0, 1, 0, 2]
MULTI_SKILL = {"reveal_skill": True, "min_skill_len": 64, "max_skill_len": 64}


@dataclasses.dataclass
class Args:
    out: str = "results/quickstart"
    seeds: int = 5
    gridworld_steps: int = 250_000
    memory_seeds: int = 3
    memory_steps: int = 300_000
    progress: bool = True


def gridworld_config(total_timesteps: int) -> PPOConfig:
    return PPOConfig(
        num_envs=64,
        num_steps=32,
        total_timesteps=total_timesteps,
        num_minibatches=4,
        hidden=(128, 128),
        lr=1e-3,
        gamma=0.95,
    )


def memory_config(total_timesteps: int, recurrent: bool) -> PPOConfig:
    return PPOConfig(
        num_envs=16,
        num_steps=32,
        total_timesteps=total_timesteps,
        num_minibatches=4,
        recurrent=recurrent,
        hidden=(64,),
        embed=(64,),
        gru_hidden=64,
        lr=3e-3,
    )


def expert_return(env_name: str, env_kwargs: dict, episodes: int = 256) -> float:
    env, params = envs.make(env_name, **env_kwargs)
    steps = int(params.max_steps_in_episode)
    demos = jax.jit(jax.vmap(lambda k: rollout_expert(k, env, params, steps)))(
        jax.random.split(jax.random.key(0), episodes)
    )
    return float(demos.reward.sum(axis=1).mean())


def main(args: Args) -> dict:
    out = Path(args.out)
    t0 = time.perf_counter()
    grid = ppo_experiment.main(
        ppo_experiment.Args(
            env="MultiSkill",
            env_kwargs=json.dumps(MULTI_SKILL),
            seeds=args.seeds,
            ppo=gridworld_config(args.gridworld_steps),
            out=str(out / "multiskill_ppo"),
            progress=args.progress,
        )
    )
    expert = expert_return("MultiSkill", MULTI_SKILL)
    memory = {}
    for recurrent in (True, False):
        name = "recurrent" if recurrent else "feedforward"
        memory[name] = ppo_experiment.main(
            ppo_experiment.Args(
                env="MemorySequence",
                env_kwargs=json.dumps(
                    {
                        "num_symbols": 3,
                        "seq_len": len(MEMORY_SEQUENCE),
                        "num_trials": 1,
                        "fixed_sequence": True,
                        "sequence": MEMORY_SEQUENCE,
                    }
                ),
                seeds=args.memory_seeds,
                ppo=memory_config(args.memory_steps, recurrent),
                out=str(out / f"memory_{name}"),
                progress=args.progress,
            )
        )
    g = grid["greedy_return_iqm_ci"]
    lines = [
        "# Quickstart results",
        "",
        "| study | greedy return IQM | 95% CI | reference |",
        "|---|---|---|---|",
        f"| PPO, multi-skill gridworld, command visible | {g[0]:.2f} | [{g[1]:.2f}, {g[2]:.2f}] "
        f"| scripted expert {expert:.2f} |",
    ]
    for name, r in memory.items():
        m = r["greedy_return_iqm_ci"]
        lines.append(
            f"| {name} PPO, Memory Sequence {MEMORY_SEQUENCE} | {m[0]:.2f} | "
            f"[{m[1]:.2f}, {m[2]:.2f}] | perfect {len(MEMORY_SEQUENCE)} |"
        )
    lines += ["", f"Total wall-clock {time.perf_counter() - t0:.0f} s."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"gridworld": grid, "expert": expert, "memory": memory}


if __name__ == "__main__":
    main(tyro.cli(Args))
