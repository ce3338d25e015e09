"""Train PPO (feed-forward or recurrent) on any registered environment over many seeds.

python -m experiments.ppo --env gymnax:CartPole-v1 --seeds 8
python -m experiments.ppo --env MemorySequence --ppo.recurrent True --help
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import tyro

import envs
from agents.evaluation import evaluate
from agents.hparams import to_dict
from agents.ppo import PPOConfig, export_policy, make_ppo
from experiments.runner import RunFolder, final_score, iqm_ci, plot_curves, run_chunked


@dataclasses.dataclass
class Args:
    env: str = "gymnax:CartPole-v1"
    env_kwargs: str = (
        "{}"  # JSON overrides of the env's default params, e.g. '{"reveal_skill": true}'
    )
    seeds: int = 8
    seed: int = 0
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    out: str = "results/ppo"  # the run folder; an existing one is resumed
    updates_per_chunk: int = 50  # updates between checkpoints / progress refreshes
    eval_envs: int = 64  # greedy evaluation episodes per seed at the end
    progress: bool = True


def main(args: Args) -> dict:
    """Train, evaluate, plot and summarise; returns the headline figures."""
    env_kwargs = json.loads(args.env_kwargs)
    env, env_params = envs.make(args.env, **env_kwargs)
    ppo = make_ppo(args.ppo, env, env_params)
    config = {
        "experiment": "ppo",
        **{k: v for k, v in dataclasses.asdict(args).items() if k != "ppo"},
    }
    config["ppo"] = to_dict(args.ppo)
    folder = RunFolder(args.out, config)
    state, metrics, timing = run_chunked(
        ppo.init,
        ppo.update,
        args.ppo.num_updates,
        args.ppo.batch_size,
        jax.random.key(args.seed),
        args.seeds,
        folder,
        args.updates_per_chunk,
        args.progress,
    )

    def greedy_eval(params, key):
        act = lambda c, o, r, k: ppo.policy.act(params, c, o, r, k, deterministic=True)
        return evaluate(key, env, env_params, act, ppo.policy.initial_carry(args.eval_envs))

    params = state.train_state.params
    keys = jax.random.split(jax.random.key(args.seed + 1), args.seeds)
    evals = jax.jit(jax.vmap(greedy_eval))(params, keys)
    eval_return = np.asarray(evals["return"].mean(axis=1))  # [S]
    train_return = final_score(metrics["return"])

    env_steps = (np.arange(args.ppo.num_updates) + 1) * args.ppo.batch_size
    plot_curves(
        folder.path / "learning_curve.png",
        env_steps,
        {"PPO": metrics["return"]},
        "episode return (training)",
        f"PPO on {args.env}",
    )
    export_policy(
        folder.path / "policy",
        args.ppo,
        env.action_space(env_params),
        jax.tree.map(lambda x: x[0], params),
        env=args.env,
        env_kwargs=env_kwargs,
        seed=args.seed,
    )
    results = {
        "train_return_iqm_ci": iqm_ci(train_return),
        "greedy_return_iqm_ci": iqm_ci(eval_return),
        "greedy_return_per_seed": eval_return.tolist(),
        **timing,
    }
    (folder.path / "results.json").write_text(json.dumps(results, indent=2))
    (folder.path / "summary.md").write_text(_summary(args, results))
    print(_summary(args, results))
    return results


def _summary(args: Args, r: dict) -> str:
    tr, gr = r["train_return_iqm_ci"], r["greedy_return_iqm_ci"]
    return (
        f"# PPO on {args.env} ({'recurrent' if args.ppo.recurrent else 'feed-forward'}), "
        f"{args.seeds} seeds\n\n"
        f"| metric | IQM | 95% CI |\n|---|---|---|\n"
        f"| final training return (last 10% of updates) | {tr[0]:.3f} | "
        f"[{tr[1]:.3f}, {tr[2]:.3f}] |\n"
        f"| greedy evaluation return ({args.eval_envs} episodes/seed) | {gr[0]:.3f} | "
        f"[{gr[1]:.3f}, {gr[2]:.3f}] |\n\n"
        f"{args.ppo.num_updates * args.ppo.batch_size:,} env steps per seed; wall-clock "
        f"{r['wall_s']:.1f} s (compile {r['compile_s']:.1f} s), "
        f"{r['env_steps_per_s']:,.0f} env steps/s over all seeds.\n"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
