"""Train PPO (feed-forward or recurrent) on any registered environment over many seeds.

python -m experiments.ppo --env gymnax:CartPole-v1 --seeds 8
python -m experiments.ppo --env MemorySequence --ppo.recurrent --help
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import numpy as np

import envs
from agents.evaluation import evaluate
from agents.ppo import PPOConfig, make_ppo
from experiments.plots import plot_curves
from experiments.runner import final_score, fmt_ci, iqm_ci, md_table
from experiments.study import Study, StudyArgs, cli, parse_env_kwargs, train_policy


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
    # a seed whose losses or weights go non-finite: stop the run (its last good checkpoint kept)
    # or exclude that seed from the results and go on (a sweep over seeds)
    on_divergence: Literal["stop", "exclude"] = "stop"


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
        study.folder(), ppo, study.key("train"), args.seeds, args.updates_per_chunk,
        args.progress, exclude_diverged=args.on_divergence == "exclude",
        video=(env, env_params, args.video),
    )  # fmt: skip
    params = ppo.policy_params(state)
    greedy = lambda p, k: evaluate(k, env, env_params, ppo.policy, p, args.eval_envs)
    evals = jax.jit(jax.vmap(greedy))(params, study.seed_keys("evaluate"))
    eval_return = np.array(evals["return"].mean(axis=1))  # [S]
    kept = np.setdiff1d(np.arange(args.seeds), timing["diverged_seeds"])  # the seeds aggregated
    eval_return[timing["diverged_seeds"]] = np.nan
    env_steps = (np.arange(args.ppo.num_updates) + 1) * args.ppo.batch_size
    plot_curves(
        study.path / "learning_curve.png",
        env_steps,
        {"PPO": metrics["return"][kept]},
        "environment steps per seed",
        "episode return (training)",
        f"PPO on {args.env}",
    )
    results = {
        "train_return_iqm_ci": iqm_ci(final_score(metrics["return"])[kept]),
        "greedy_return_iqm_ci": iqm_ci(eval_return[kept]),
        "greedy_return_per_seed": eval_return.tolist(),
        **timing,
    }
    return study.finish(results, _summary(args, results))


def _summary(args: Args, r: dict) -> str:
    kind = "recurrent" if args.ppo.recurrent else "feed-forward"
    ci = lambda k: fmt_ci(r[k], 3)
    rows = [
        ["final training return (last 10% of updates)", ci("train_return_iqm_ci")],
        [f"greedy evaluation return ({args.eval_envs} episodes/seed)", ci("greedy_return_iqm_ci")],
    ]
    return (
        f"# PPO on {args.env} ({kind}), {args.seeds} seeds\n\n"
        + md_table(["metric", "IQM [95% CI]"], rows)
        + "\n\n"
        f"{args.ppo.num_updates * args.ppo.batch_size:,} env steps per seed; wall-clock "
        f"{r['wall_s']:.1f} s (compile {r['compile_s']:.1f} s), "
        f"{r['steps_per_s']:,.0f} env steps/s over all seeds.\n"
        + (
            f"\n**{len(r['diverged_seeds'])} of {args.seeds} seeds diverged** (seeds "
            f"{r['diverged_seeds']}) and are excluded from the figures above.\n"
            if r["diverged_seeds"]
            else ""
        )
    )


def paper() -> Args:
    """PureJaxRL's published PPO settings (the PPOConfig defaults: CartPole's 5e5 env steps,
    4 envs x 128 steps) over 64 seeds and 1,024 greedy evaluation episodes per seed."""
    return Args(seeds=64, eval_envs=1024)


PRESETS = {"cpu": Args, "paper": paper}


if __name__ == "__main__":
    main(cli(PRESETS))
