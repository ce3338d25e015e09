"""D4RL-style offline datasets, made here from our own SAC agents, saved in Minari format.

python -m experiments.make_datasets                                  # all three tasks
python -m experiments.make_datasets --tasks hopper --dataset-steps 1000000 --help

Per task (one seed): SAC trains for ``sac.total_steps`` env steps; every ``snapshot_every``
steps its deterministic policy is evaluated on ``eval_episodes`` episodes and its parameters kept
(in the checkpointed run state, so a stopped run resumes). Then, as in D4RL: ``random`` (uniform
actions); ``expert``, the best snapshot by evaluation return (SAC's curve on Hopper and Walker2d
is noisy, so the final policy can sit in a dip); ``medium``, the snapshot whose evaluation
return is closest to a third of the expert's, among those up to the first that reaches it; both
sample the stochastic policy, as D4RL did; ``medium-replay``, SAC's replay buffer up to the
medium snapshot, random warm-up included; ``medium-expert``, both together. Each is saved as
``skill-agents/<task>-<level>-v<N>`` with the measured random and expert reference returns and
the SAC config, seed and training steps in its metadata; the medium and expert policies go to
``<out>/<task>/policies/`` (``agents.core.load_policy``). Tasks whose datasets all exist are
skipped; missing levels are regenerated from the trained run.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np

import envs
from agents.core import export_policy
from agents.evaluation import evaluate
from agents.replay.datasets import D4RL_REF_SCORES, dataset_complete, dataset_path, save_dataset
from agents.replay.levels import (
    LEVELS,
    level_stats,
    make_levels,
    medium_snapshot,
    uniform_policy,
    with_snapshots,
)
from agents.sac import SACConfig, make_sac, replay_contents
from experiments.plots import plot_curves
from experiments.runner import RunFolder, stored_results, write_atomic
from experiments.study import Study, StudyArgs, cli, config_dict, parse_env_kwargs, train_policy

TASKS = {"halfcheetah": "HalfCheetah", "hopper": "Hopper", "walker2d": "Walker2d"}


def default_sac() -> SACConfig:
    """Published SAC settings; 120k env steps per task (about 12 min on 2 idle CPU cores)."""
    return SACConfig(total_steps=120_000, learning_starts=5_000, buffer_size=120_000)


@dataclasses.dataclass
class Args(StudyArgs):
    out: str = "results/make_datasets"  # one run folder per task (checkpoints, curves, policies)
    seeds: int = 1  # one SAC run makes a task's datasets
    tasks: tuple[str, ...] = tuple(TASKS)
    env_kwargs: str = '{"backend": "native"}'  # JSON envs.make arguments, kept in the datasets
    sac: SACConfig = dataclasses.field(default_factory=default_sac)
    snapshot_every: int = 5_000  # env steps between evaluations / policy snapshots
    eval_episodes: int = 10  # deterministic episodes per evaluation and reference return
    dataset_steps: int = 200_000  # transitions in each of random, medium and expert
    collect_envs: int = 10  # parallel envs when collecting random / medium / expert data
    root: str | None = None  # dataset root; default $MINARI_DATASETS_PATH or ~/.minari/datasets
    version: int = 0  # dataset ids end in -v<version>

    def validate(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown task(s) {sorted(unknown)}; choose from {list(TASKS)}")
        if self.seeds != 1:
            raise ValueError(f"seeds={self.seeds}: one SAC run makes a task's datasets; use 1")
        self.sac.validate()
        if self.sac.buffer_size < self.sac.total_steps:
            raise ValueError(
                f"sac.buffer_size={self.sac.buffer_size} < sac.total_steps="
                f"{self.sac.total_steps}: medium-replay needs every transition up to the "
                "medium snapshot, so the buffer must never wrap; raise sac.buffer_size"
            )
        per_update = self.sac.steps_per_update
        stage = self.snapshot_every
        if stage % per_update or self.sac.num_updates % (stage // per_update or 1):
            raise ValueError(
                f"snapshot_every={stage} must be a multiple of sac.num_envs * sac.num_steps = "
                f"{per_update} that divides the training steps after warm-up "
                f"({self.sac.num_updates * per_update})"
            )
        if self.eval_episodes < 10:
            raise ValueError(f"eval_episodes={self.eval_episodes}: reference returns need >= 10")
        if self.dataset_steps % self.collect_envs or self.dataset_steps < self.collect_envs:
            raise ValueError(
                f"dataset_steps={self.dataset_steps} must be a positive multiple of "
                f"collect_envs={self.collect_envs}"
            )


def make_task_datasets(study: Study, args: Args, task: str) -> dict:
    """Train (or resume) SAC on ``task`` and save its missing datasets; returns the summary."""
    ids = {level: f"skill-agents/{task}-{level}-v{args.version}" for level in LEVELS}
    missing = [lvl for lvl, i in ids.items() if not dataset_complete(i, args.root)]
    # the run folder records only what changes the training, so any level can be remade
    keep = ("seed", "env_kwargs", "sac", "snapshot_every", "eval_episodes")
    config = {"experiment": "make_datasets", "task": task}
    folder = RunFolder(study.path / task, config | {k: config_dict(getattr(args, k)) for k in keep})
    done = stored_results(folder.path / "results.json")
    if not missing and done is not None:
        print(f"{task}: all datasets exist, skipping")
        return done
    env_kwargs = parse_env_kwargs(args.env_kwargs)
    env, env_params = envs.make(TASKS[task], **env_kwargs)
    sac = make_sac(args.sac, env, env_params)
    per_stage = args.snapshot_every // args.sac.steps_per_update
    agent = with_snapshots(sac, env, env_params, per_stage, args.eval_episodes)
    meta = {"env": TASKS[task], "env_kwargs": env_kwargs}
    run, metrics, timing = train_policy(
        folder, agent, study.key(task, "sac"), 1, 1, args.progress, metadata=meta,
        video=(env, env_params, args.video),
    )  # fmt: skip
    run = jax.tree.map(lambda x: x[0], run)  # the one seed

    evals = metrics["eval_return"][0]
    stage_steps = agent.steps_at(np.arange(evals.size) + 1)  # the warm-up included
    expert = int(np.argmax(evals))
    expert_return = float(evals[expert])
    medium = medium_snapshot(evals, expert_return)
    steps = {"medium": int(stage_steps[medium]), "expert": int(stage_steps[expert])}
    snapshot = lambda k: jax.tree.map(lambda x: x[k], run.params)
    space = env.action_space(env_params)
    uniform = uniform_policy(space.low, space.high)
    random_evaluation = lambda key: evaluate(key, env, env_params, uniform, (), args.eval_episodes)
    random_return = float(
        jax.jit(random_evaluation)(study.key(task, "random return"))["return"].mean()
    )
    # buffer rows are step-major over SAC's envs: [steps * E] -> [steps, E]
    rows = jax.tree.map(lambda x: x[: steps["medium"]], replay_contents(run.state.buffer)[0])
    replay = jax.tree.map(lambda x: x.reshape(-1, args.sac.num_envs, *x.shape[1:]), rows)
    data = make_levels(
        study.key(task, "levels"),
        env,
        env_params,
        sac.policy,
        snapshot(medium),
        snapshot(expert),
        replay,
        args.dataset_steps // args.collect_envs,
        args.collect_envs,
    )

    common = {
        "task": task,
        "seed": args.seed,
        "sac": config_dict(args.sac),
        "training_env_steps": args.sac.total_steps,
        "snapshot_every": args.snapshot_every,
        "eval_env_steps": stage_steps.tolist(),
        "eval_returns": evals.tolist(),
        "random_return": random_return,
        "expert_return": expert_return,
        "medium_env_steps": steps["medium"],
        "medium_return": float(evals[medium]),
        "expert_env_steps": steps["expert"],
        "d4rl_ref_scores": list(D4RL_REF_SCORES[task]),
    }
    policies = {
        "random": "uniformly random actions",
        "medium": f"SAC actor after {steps['medium']} env steps, sampled",
        "expert": f"SAC actor after {steps['expert']} env steps (best), sampled",
        "medium-replay": f"SAC replay buffer, first {steps['medium']} transitions",
        "medium-expert": "medium and expert data together",
    }
    for level in missing:
        save_dataset(
            data[level],
            ids[level],
            env_name=TASKS[task],
            env_kwargs=env_kwargs,
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
                sac.policy,
                snapshot(k),
                {**meta, "env_steps": steps[name]},
            )
    plot_curves(
        folder.path / "learning_curve.png",
        stage_steps,
        {"training (stochastic)": metrics["return"], "evaluation (deterministic)": evals[None]},
        "environment steps",
        "episode return",
        f"SAC on {TASKS[task]}, dataset generation",
    )
    results = {
        **{k: common[k] for k in ("random_return", "expert_return", "d4rl_ref_scores")},
        "medium_env_steps": steps["medium"],
        "medium_return": common["medium_return"],
        "levels": {
            lvl: level_stats(task, data[lvl], random_return, expert_return) for lvl in LEVELS
        },
        "sac_compile_s": timing["compile_s"],
        "sac_env_steps_per_s": timing["steps_per_s"] if timing["run_s"] else 0.0,
    }
    write_atomic(folder.path / "results.json", json.dumps(results, indent=2))
    write_atomic(folder.path / "summary.md", _summary(task, results))
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
    rate = r["sac_env_steps_per_s"]
    trained = f"at {rate:.0f} env steps/s" if rate else "resumed from its final checkpoint"
    lines.append(f"\nSAC trained {trained} (compile {r['sac_compile_s']:.1f} s).\n")
    return "\n".join(lines)


def main(args: Args) -> dict:
    """Make the datasets of every task in ``args.tasks``; returns their summaries."""
    args.validate()
    study = Study("make_datasets", args)
    if (done := study.finished()) is not None:
        return done
    results = {task: make_task_datasets(study, args, task) for task in args.tasks}
    return study.finish(results, "\n".join(_summary(t, r) for t, r in results.items()))


def paper() -> Args:
    """D4RL's scale: SAC for 1M env steps per task, 1M transitions per level, written as
    version 1 beside the CPU datasets; the default MuJoCo backend (MJX on accelerators)."""
    return Args(
        env_kwargs="{}",
        sac=SACConfig(),  # the published 1M env steps
        dataset_steps=1_000_000,
        collect_envs=100,
        version=1,
    )


PRESETS = {"cpu": Args, "paper": paper}


if __name__ == "__main__":
    main(cli(PRESETS))
