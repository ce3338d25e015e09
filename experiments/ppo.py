"""Train PPO (feed-forward or recurrent) on any registered environment over many seeds.

python -m experiments.ppo --env gymnax:CartPole-v1 --seeds 8
python -m experiments.ppo --env MemorySequence --ppo.recurrent --help
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import tyro

import envs
from agents.evaluation import evaluate
from agents.ppo import PPOConfig, make_ppo
from experiments.plots import plot_curves
from experiments.runner import final_score, fmt_ci, iqm_ci
from experiments.study import Study, StudyArgs, parse_env_kwargs, train_policy


@dataclasses.dataclass
class Args(StudyArgs):
    out: str = "results/ppo"
    seeds: int = 8
    env: str = "gymnax:CartPole-v1"
    env_kwargs: str = (
        "{}"  # JSON overrides of the env's default params, e.g. '{"reveal_skill": true}'
    )
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    updates_per_chunk: int = 50  # updates between checkpoints / progress refreshes
    eval_envs: int = 64  # greedy evaluation episodes per seed at the end


def main(args: Args) -> dict:
    """Train, evaluate, plot and summarise; returns the headline figures."""
    if args.eval_envs < 1:
        raise ValueError(f"--eval-envs {args.eval_envs}: evaluate at least one episode per seed")
    study = Study("ppo", args)
    if (done := study.finished()) is not None:
        return done
    env, env_params = envs.make(args.env, **parse_env_kwargs(args.env_kwargs))
    ppo = make_ppo(args.ppo, env, env_params)
    state, metrics, timing = train_policy(
        study.folder(), ppo, study.key("train"), args.seeds, args.updates_per_chunk, args.progress
    )
    params = ppo.policy_params(state)
    greedy = lambda p, k: evaluate(k, env, env_params, ppo.policy, p, args.eval_envs)
    evals = jax.jit(jax.vmap(greedy))(params, study.seed_keys("evaluate"))
    eval_return = np.asarray(evals["return"].mean(axis=1))  # [S]
    env_steps = (np.arange(args.ppo.num_updates) + 1) * args.ppo.batch_size
    plot_curves(
        study.path / "learning_curve.png",
        env_steps,
        {"PPO": metrics["return"]},
        "environment steps per seed",
        "episode return (training)",
        f"PPO on {args.env}",
    )
    results = {
        "train_return_iqm_ci": iqm_ci(final_score(metrics["return"])),
        "greedy_return_iqm_ci": iqm_ci(eval_return),
        "greedy_return_per_seed": eval_return.tolist(),
        **timing,
    }
    return study.finish(results, _summary(args, results))


def _summary(args: Args, r: dict) -> str:
    kind = "recurrent" if args.ppo.recurrent else "feed-forward"
    return (
        f"# PPO on {args.env} ({kind}), {args.seeds} seeds\n\n"
        "| metric | IQM [95% CI] |\n|---|---|\n"
        f"| final training return (last 10% of updates) | {fmt_ci(r['train_return_iqm_ci'], 3)} |\n"
        f"| greedy evaluation return ({args.eval_envs} episodes/seed) | "
        f"{fmt_ci(r['greedy_return_iqm_ci'], 3)} |\n\n"
        f"{args.ppo.num_updates * args.ppo.batch_size:,} env steps per seed; wall-clock "
        f"{r['wall_s']:.1f} s (compile {r['compile_s']:.1f} s), "
        f"{r['steps_per_s']:,.0f} env steps/s over all seeds.\n"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
