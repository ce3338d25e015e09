"""D4RL-style offline datasets, made here from our own SAC agents, saved in Minari format.

python -m experiments.make_datasets                                  # all three tasks
python -m experiments.make_datasets --tasks hopper --dataset-steps 1000000 --help

Per task (native MuJoCo backend, one seed): SAC trains for ``sac.total_timesteps`` env steps;
every ``snapshot_every`` steps its deterministic policy is evaluated on ``eval_episodes``
episodes and its parameters kept (in the checkpointed run state, so a stopped run resumes).
Then, as in D4RL:

- ``random``: uniformly random actions;
- ``expert``: the best snapshot by evaluation return (SAC's curve on Hopper and Walker2d is
  noisy, so the final policy can sit in a dip); ``medium``: the snapshot whose evaluation
  return is closest to a third of the expert's, among those up to the first that reaches it
  (a dip of a noisy learning curve late in training is not a medium policy); both sample
  actions from the stochastic policy, as D4RL did;
- ``medium-replay``: SAC's replay buffer up to the medium snapshot, random warm-up included;
- ``medium-expert``: the medium and expert data together.

Each is saved with ``agents.replay.datasets.save_dataset`` as ``skill-agents/<task>-<level>-v<N>``
with the measured random and expert reference returns (deterministic evaluation, mean over
``eval_episodes``), the SAC config, seed and training steps in its metadata. Tasks whose
datasets all exist are skipped; missing levels are regenerated from the trained run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs
from agents.evaluation import evaluate
from agents.hparams import to_dict
from agents.replay import Transition
from agents.replay.datasets import (
    D4RL_REF_SCORES,
    collect,
    dataset_path,
    episode_returns,
    normalized_score,
    save_dataset,
)
from agents.sac import SACConfig, SACState, export_policy, make_sac
from experiments.runner import RunFolder, plot_curves, run_chunked

TASKS = {"halfcheetah": "HalfCheetah", "hopper": "Hopper", "walker2d": "Walker2d"}
LEVELS = ("random", "medium", "expert", "medium-replay", "medium-expert")
ENV_KWARGS = {"backend": "native"}


def default_sac() -> SACConfig:
    """Published SAC settings; 120k env steps per task (about 12 min on 2 idle CPU cores)."""
    return SACConfig(total_timesteps=120_000, learning_starts=5_000, buffer_size=120_000)


@dataclasses.dataclass
class Args:
    tasks: tuple[str, ...] = tuple(TASKS)
    sac: SACConfig = dataclasses.field(default_factory=default_sac)
    snapshot_every: int = 5_000  # env steps between evaluations / policy snapshots
    eval_episodes: int = 10  # deterministic episodes per evaluation and reference return
    dataset_steps: int = 200_000  # transitions in each of random, medium and expert
    collect_envs: int = 10  # parallel envs when collecting random / medium / expert data
    seed: int = 0
    root: str | None = None  # dataset root; default $MINARI_DATASETS_PATH or ~/.minari/datasets
    version: int = 0  # dataset ids end in -v<version>
    out: str = "results/make_datasets"  # one run folder per task (checkpoints, curves, policies)
    progress: bool = True

    def validate(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown task(s) {sorted(unknown)}; choose from {list(TASKS)}")
        if self.sac.buffer_size < self.sac.total_timesteps:
            raise ValueError(
                f"sac.buffer_size={self.sac.buffer_size} < sac.total_timesteps="
                f"{self.sac.total_timesteps}: medium-replay needs every transition up to the "
                "medium snapshot, so the buffer must never wrap; raise sac.buffer_size"
            )
        stage = self.snapshot_every
        if stage % self.sac.steps_per_update or self.sac.num_updates % (
            stage // self.sac.steps_per_update or 1
        ):
            raise ValueError(
                f"snapshot_every={stage} must be a multiple of sac.num_envs * sac.num_steps = "
                f"{self.sac.steps_per_update} that divides the training steps after warm-up "
                f"({self.sac.num_updates * self.sac.steps_per_update})"
            )
        if self.eval_episodes < 10:
            raise ValueError(f"eval_episodes={self.eval_episodes}: reference returns need >= 10")
        if self.dataset_steps % self.collect_envs or self.dataset_steps < self.collect_envs:
            raise ValueError(
                f"dataset_steps={self.dataset_steps} must be a positive multiple of "
                f"collect_envs={self.collect_envs}"
            )


class Run(NamedTuple):
    """SAC's state plus what dataset generation keeps: a policy snapshot per stage."""

    sac: SACState
    snapshots: Any  # actor params stacked over stages [num_stages, ...]
    stage: jax.Array  # [] int32, stages done
    key: jax.Array  # evaluation randomness, apart from SAC's


def train_with_snapshots(args: Args, task: str, folder: RunFolder) -> tuple[Run, dict, dict]:
    """Run (or resume) SAC on ``task``; returns (Run [1, ...], metrics [1, num_stages], timing)."""
    env, env_params = envs.make(TASKS[task], **ENV_KWARGS)
    sac = make_sac(args.sac, env, env_params)
    updates_per_stage = args.snapshot_every // args.sac.steps_per_update
    num_stages = args.sac.num_updates // updates_per_stage

    def greedy_returns(params, key):
        act = lambda c, o, r, k: (c, sac.policy.act(params, o, k, deterministic=True))
        return evaluate(key, env, env_params, act, jnp.zeros((args.eval_episodes, 0)))["return"]

    def init(key: jax.Array) -> Run:
        k_sac, k_eval = jax.random.split(key)
        state = sac.init(k_sac)
        params = state.learner.actor.params
        snapshots = jax.tree.map(lambda x: jnp.zeros((num_stages, *x.shape), x.dtype), params)
        return Run(state, snapshots, jnp.zeros((), jnp.int32), k_eval)

    def stage(run: Run) -> tuple[Run, dict]:
        state, m = jax.lax.scan(lambda s, _: sac.update(s), run.sac, None, updates_per_stage)
        key, k_eval = jax.random.split(run.key)
        params = state.learner.actor.params
        returns = greedy_returns(params, k_eval)
        snapshots = jax.tree.map(lambda a, x: a.at[run.stage].set(x), run.snapshots, params)
        metrics = {k: m[k].mean() for k in ("critic_loss", "alpha", "entropy", "q")}
        metrics["return"] = jnp.nanmean(m["return"])  # training episodes, stochastic policy
        metrics["eval_return"] = returns.mean()
        metrics["eval_return_std"] = returns.std()
        return Run(state, snapshots, run.stage + 1, key), metrics

    return run_chunked(
        init,
        stage,
        num_stages,
        args.snapshot_every,
        jax.random.key(args.seed),
        1,
        folder,
        updates_per_chunk=1,
        progress=args.progress,
    )


def medium_snapshot(evals: np.ndarray, expert_return: float) -> int:
    """The stage closest to a third of ``expert_return`` up to the first stage that reaches it."""
    reached = np.flatnonzero(evals >= expert_return / 3)
    last = reached[0] if reached.size else evals.size - 1
    return int(np.argmin(np.abs(evals[: last + 1] - expert_return / 3)))


def uniform_actions(sac: Any):
    """``act(obs [E, D], key) -> action [E, act_dim]``, uniform within the action bounds."""
    low, high = sac.policy.low, sac.policy.high
    return lambda obs, key: jax.random.uniform(
        key, (obs.shape[0], *low.shape), minval=low, maxval=high
    )


def make_levels(
    args: Args,
    env: Any,
    env_params: Any,
    sac: Any,
    run: Run,
    medium: int,
    expert: int,
    medium_steps: int,
) -> dict[str, Transition]:
    """Time-major ``[T, E]`` transitions of every level (deterministic given the seed)."""
    uniform = uniform_actions(sac)
    num_steps = args.dataset_steps // args.collect_envs
    rollout = lambda act, key: collect(key, env, env_params, act, num_steps, args.collect_envs)
    sampled = jax.jit(lambda params, key: rollout(partial(sac.policy.act, params), key))
    snapshot = lambda k: jax.tree.map(lambda x: x[k], run.snapshots)
    k_random, k_medium, k_expert = jax.random.split(jax.random.key(args.seed + 1), 3)
    data = {
        "random": jax.jit(lambda key: rollout(uniform, key))(k_random),
        "medium": sampled(snapshot(medium), k_medium),
        "expert": sampled(snapshot(expert), k_expert),
    }
    # [T, E] + [T, E] -> [T, 2E], so no episode is cut at the seam
    join = lambda m, e: jnp.concatenate([m, e], axis=1)
    data["medium-expert"] = jax.tree.map(join, data["medium"], data["expert"])
    # buffer items are step-major over SAC's envs: [steps * E] -> [steps, E]
    e = args.sac.num_envs
    replay = lambda x: x[0, :medium_steps].reshape(-1, e, *x.shape[2:])
    data["medium-replay"] = jax.tree.map(replay, run.sac.buffer.experience)
    return jax.tree.map(np.asarray, data)


def level_stats(task: str, data: Transition, random_return: float, expert_return: float):
    """Size and mean return of complete episodes (each env's trailing part is left out)."""
    columns = [jax.tree.map(lambda x, i=i: x[:, i], data) for i in range(data.reward.shape[1])]
    returns = np.concatenate([episode_returns(c) for c in columns])
    mean = float(returns.mean()) if returns.size else float("nan")
    return {
        "transitions": int(data.reward.size),
        "episodes": int(returns.size),
        "mean_return": mean,
        "normalized": normalized_score(task, mean, random_return, expert_return),
        "d4rl_normalized": normalized_score(task, mean),
    }


def make_task_datasets(args: Args, task: str) -> dict:
    """Train (or resume) SAC on ``task`` and save its missing datasets; returns the summary."""
    ids = {level: f"skill-agents/{task}-{level}-v{args.version}" for level in LEVELS}
    missing = [lvl for lvl, i in ids.items() if not dataset_path(i, args.root).exists()]
    summary_file = Path(args.out) / task / "results.json"
    if not missing and summary_file.exists():
        print(f"{task}: all datasets exist, skipping")
        return json.loads(summary_file.read_text())
    t0 = time.perf_counter()
    config = {
        "experiment": "make_datasets",
        "task": task,
        "sac": to_dict(args.sac),
        "snapshot_every": args.snapshot_every,
        "eval_episodes": args.eval_episodes,
        "seed": args.seed,
    }
    folder = RunFolder(Path(args.out) / task, config)
    run, metrics, timing = train_with_snapshots(args, task, folder)
    run = jax.tree.map(lambda x: x[0], run)  # the one seed
    env, env_params = envs.make(TASKS[task], **ENV_KWARGS)
    sac = make_sac(args.sac, env, env_params)

    # Stage k ends after learning_starts + (k + 1) * snapshot_every env steps.
    evals = metrics["eval_return"][0]
    stage_steps = args.sac.learning_starts + args.snapshot_every * (np.arange(evals.size) + 1)
    expert = int(np.argmax(evals))
    expert_return = float(evals[expert])
    medium = medium_snapshot(evals, expert_return)
    medium_steps = int(stage_steps[medium])
    uniform = uniform_actions(sac)
    random_act = lambda c, o, r, k: (c, uniform(o, k))
    no_memory = jnp.zeros((args.eval_episodes, 0))
    random_returns = jax.jit(lambda k: evaluate(k, env, env_params, random_act, no_memory))(
        jax.random.key(args.seed + 2)
    )["return"]
    random_return = float(random_returns.mean())
    data = make_levels(args, env, env_params, sac, run, medium, expert, medium_steps)

    common = {
        "task": task,
        "seed": args.seed,
        "sac": to_dict(args.sac),
        "training_env_steps": args.sac.total_timesteps,
        "snapshot_every": args.snapshot_every,
        "eval_env_steps": stage_steps.tolist(),
        "eval_returns": evals.tolist(),
        "random_return": random_return,
        "expert_return": expert_return,
        "medium_env_steps": medium_steps,
        "medium_return": float(evals[medium]),
        "expert_env_steps": int(stage_steps[expert]),
        "d4rl_ref_scores": list(D4RL_REF_SCORES[task]),
    }
    policies = {
        "random": "uniformly random actions",
        "medium": f"SAC actor after {medium_steps} env steps, sampled",
        "expert": f"SAC actor after {int(stage_steps[expert])} env steps (best), sampled",
        "medium-replay": f"SAC replay buffer, first {medium_steps} transitions",
        "medium-expert": "medium and expert data together",
    }
    for level in missing:
        save_dataset(
            data[level],
            ids[level],
            env_name=TASKS[task],
            env_kwargs=ENV_KWARGS,
            ref_min_score=random_return,
            ref_max_score=expert_return,
            root=args.root,
            metadata={**common, "level": level, "policy": policies[level]},
        )
        print(f"saved {dataset_path(ids[level], args.root)}")
    for name, k in (("medium", medium), ("expert", expert)):
        if not (folder.path / "policies" / name).exists():
            export_policy(
                folder.path / "policies" / name,
                args.sac,
                env.action_space(env_params),
                jax.tree.map(lambda x, k=k: x[k], run.snapshots),
                env=TASKS[task],
                env_kwargs=ENV_KWARGS,
                env_steps=int(stage_steps[k]),
            )
    plot_curves(
        folder.path / "learning_curve.png",
        stage_steps,
        {"training (stochastic)": metrics["return"], "evaluation (deterministic)": evals[None]},
        "episode return",
        f"SAC on {TASKS[task]} (native), dataset generation",
    )
    results = {
        **{k: common[k] for k in ("random_return", "expert_return", "d4rl_ref_scores")},
        "medium_env_steps": medium_steps,
        "medium_return": common["medium_return"],
        "levels": {
            level: level_stats(task, data[level], random_return, expert_return) for level in LEVELS
        },
        "wall_s": time.perf_counter() - t0,
        "sac_env_steps_per_s": timing["env_steps_per_s"] if timing["run_s"] > 0 else None,
        "compile_s": timing["compile_s"],
    }
    summary_file.write_text(json.dumps(results, indent=2))
    (folder.path / "summary.md").write_text(_summary(task, results))
    print(_summary(task, results))
    return results


def _summary(task: str, r: dict) -> str:
    lines = [
        f"# {task}: D4RL-style datasets from SAC\n",
        f"random return {r['random_return']:.1f}, expert (deterministic) {r['expert_return']:.1f}; "
        f"medium snapshot at {r['medium_env_steps']} env steps scores {r['medium_return']:.1f}. "
        f"D4RL's references: {r['d4rl_ref_scores']}.\n",
        "| level | transitions | episodes | mean return | normalized | normalized (D4RL refs) |",
        "|---|---|---|---|---|---|",
    ]
    for level, v in r["levels"].items():
        lines.append(
            f"| {level} | {v['transitions']:,} | {v['episodes']} | {v['mean_return']:.1f} | "
            f"{v['normalized']:.1f} | {v['d4rl_normalized']:.1f} |"
        )
    trained = (
        f"SAC trained at {r['sac_env_steps_per_s']:.0f} env steps/s "
        f"(compile {r['compile_s']:.1f} s)"
        if r["sac_env_steps_per_s"] is not None
        else "SAC resumed from its final checkpoint"
    )
    lines.append(f"\nwall-clock {r['wall_s']:.0f} s this call; {trained}.\n")
    return "\n".join(lines)


def main(args: Args) -> dict[str, dict]:
    """Make the datasets of every task in ``args.tasks``; returns their summaries."""
    args.validate()
    return {task: make_task_datasets(args, task) for task in args.tasks}


if __name__ == "__main__":
    main(tyro.cli(Args))
