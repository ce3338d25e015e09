"""TD3+BC and IQL on the project's D4RL-style datasets: normalised scores next to CORL's.

python -m experiments.offline                                    # the README table (CPU budget)
python -m experiments.offline --algos iql --tasks hopper --levels medium --total-steps 1000000

For every (algorithm, task, level) the dataset ``skill-agents/<task>-<level>-v<version>`` (made
by ``experiments.make_datasets``) is loaded from the local Minari root, the env it names in its
metadata is built, and ``seeds`` seeds train in one vmapped program through ``run_chunked``
(progress, a checkpoint per chunk, resumable) into ``<out>/<algo>/<task>-<level>/``, which also
gets the first seed's policy (``policy/``, ``agents.core.load_policy`` acts with it without the
dataset). A run whose ``results.json`` exists is skipped. Each seed's score is its last
evaluation (``eval_episodes`` greedy episodes), normalised with the dataset's own measured
random/expert returns and with D4RL's; the table (``<out>/results.md``) reports the IQM and its
95% bootstrap CI over seeds beside CORL's published D4RL figures (1M gradient steps on D4RL's
-v2 datasets).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

import envs
from agents.iql import IQLConfig, make_iql
from agents.replay.datasets import episode_returns, load_dataset, normalized_score
from agents.td3_bc import TD3BCConfig, make_td3_bc
from experiments.plots import plot_curves
from experiments.runner import RunFolder, fmt_ci, iqm_ci, md_table, stored_results, write_atomic
from experiments.study import Study, StudyArgs, cli, config_dict, train_policy

ALGOS = {"td3_bc": ("TD3+BC", make_td3_bc), "iql": ("IQL", make_iql)}
TASKS = ("halfcheetah", "hopper", "walker2d")
LEVELS = ("medium", "medium-replay", "medium-expert")

# CORL's D4RL -v2 results (normalised score, final evaluation, mean over seeds; peers.md).
CORL = {
    "td3_bc": {
        ("halfcheetah", "medium"): 48.1,
        ("halfcheetah", "medium-replay"): 44.8,
        ("halfcheetah", "medium-expert"): 90.8,
        ("hopper", "medium"): 60.4,
        ("hopper", "medium-replay"): 64.4,
        ("hopper", "medium-expert"): 101.2,
        ("walker2d", "medium"): 82.7,
        ("walker2d", "medium-replay"): 85.6,
        ("walker2d", "medium-expert"): 110.0,
    },
    "iql": {
        ("halfcheetah", "medium"): 48.3,
        ("halfcheetah", "medium-replay"): 44.5,
        ("halfcheetah", "medium-expert"): 94.7,
        ("hopper", "medium"): 67.5,
        ("hopper", "medium-replay"): 97.4,
        ("hopper", "medium-expert"): 107.4,
        ("walker2d", "medium"): 80.9,
        ("walker2d", "medium-replay"): 82.2,
        ("walker2d", "medium-expert"): 111.7,
    },
}


@dataclasses.dataclass
class Args(StudyArgs):
    out: str = "results/offline"
    algos: tuple[str, ...] = tuple(ALGOS)
    tasks: tuple[str, ...] = TASKS
    levels: tuple[str, ...] = LEVELS
    # Gradient steps per run. Published: 1,000,000. This CPU default fits the 18-run table
    # (2 algos x 3 tasks x 3 levels, 5 vmapped seeds) in about 45 min of one core: 5 seeds run
    # about 130 (TD3+BC) / 100 (IQL) updates per CPU-second, plus compiles and evaluations.
    total_steps: int = 5_000
    eval_every: int = 2_500  # gradient steps between evaluations
    eval_episodes: int = 10  # greedy episodes per evaluation and seed
    td3_bc: TD3BCConfig = dataclasses.field(default_factory=TD3BCConfig)
    iql: IQLConfig = dataclasses.field(default_factory=IQLConfig)
    root: str | None = None  # dataset root; default $MINARI_DATASETS_PATH or ~/.minari/datasets
    version: int = 0  # dataset ids end in -v<version>
    updates_per_chunk: int = 1  # evaluations between checkpoints / progress refreshes

    def validate(self) -> None:
        for name, values, known in (
            ("algos", self.algos, ALGOS),
            ("tasks", self.tasks, TASKS),
            ("levels", self.levels, (*LEVELS, "random", "expert")),
        ):
            unknown = set(values) - set(known)
            if unknown:
                raise ValueError(f"unknown {name} {sorted(unknown)}; choose from {list(known)}")
        if self.total_steps % self.eval_every:
            raise ValueError(
                f"total_steps={self.total_steps} must be a multiple of eval_every={self.eval_every}"
            )

    def config(self, algo: str) -> Any:
        """The algorithm's config with this run's budget."""
        return getattr(self, algo).replace(
            total_steps=self.total_steps,
            eval_every=self.eval_every,
            eval_episodes=self.eval_episodes,
        )


def run_one(study: Study, args: Args, algo: str, task: str, level: str) -> dict:
    """Train ``args.seeds`` seeds of ``algo`` on one dataset (or read its finished results)."""
    path = study.path / algo / f"{task}-{level}"
    done = stored_results(path / "results.json")
    if done is not None:
        print(f"{algo} {task}-{level}: done, skipping")
        return done
    dataset_id = f"skill-agents/{task}-{level}-v{args.version}"
    transitions, meta = load_dataset(dataset_id, args.root)
    if meta["env_name"] is None:
        raise ValueError(
            f"{meta['path']} records no env_name (a Minari dataset made elsewhere): this study "
            "evaluates in an env built with envs.make(env_name, **env_kwargs); store them with "
            "agents.replay.datasets.save_dataset(..., env_name=..., env_kwargs=...)"
        )
    env, env_params = envs.make(meta["env_name"], **(meta["env_kwargs"] or {}))
    refs = (meta["ref_min_score"], meta["ref_max_score"])
    config = args.config(algo)
    name = ALGOS[algo][0]
    agent = ALGOS[algo][1](config, transitions, env, env_params, ref_scores=refs)
    # A run's folder records only what changes its results, so a resumed run matches it
    # whatever else the command line selects.
    run_config = {"experiment": "offline", "algo": algo, "dataset": dataset_id}
    run_config |= {"seeds": args.seeds, "seed": args.seed, algo: config_dict(config)}
    folder = RunFolder(path, run_config)
    print(f"{algo} {task}-{level}: {transitions.reward.shape[0]:,} transitions")
    _, metrics, timing = train_policy(
        folder,
        agent,
        study.key(algo, task, level),
        args.seeds,
        args.updates_per_chunk,
        args.progress,
        metadata={"env_name": meta["env_name"], "env_kwargs": meta["env_kwargs"]},
        video=(env, env_params, args.video),
    )
    final = metrics["return"][:, -1]  # [S] last evaluation of each seed
    # Scores are increasing affine maps of returns, so their IQM and bootstrap CI are the
    # returns' mapped (one bootstrap for both normalisations).
    return_ci = iqm_ci(final)
    behaviour = float(episode_returns(transitions).mean())
    steps = (np.arange(config.num_updates) + 1) * config.eval_every
    plot_curves(
        path / "learning_curve.png",
        steps,
        {name: normalized_score(task, metrics["return"], *refs)},
        "gradient steps per seed",
        "normalised score (dataset's references)",
        f"{name} on {dataset_id}",
    )
    results = {
        "algo": algo,
        "task": task,
        "level": level,
        "dataset": dataset_id,
        "transitions": int(transitions.reward.shape[0]),
        "ref_scores": list(refs),
        "final_return_per_seed": final.tolist(),
        "score_iqm_ci": normalized_score(task, np.array(return_ci), *refs).tolist(),
        "d4rl_score_iqm_ci": normalized_score(task, np.array(return_ci)).tolist(),
        "behaviour_score": normalized_score(task, behaviour, *refs),
        "gradient_steps": args.total_steps,
        "updates_per_s": timing["steps_per_s"],  # over all seeds, including evaluations
        **timing,
    }
    if (task, level) in CORL[algo]:
        results["corl"] = CORL[algo][task, level]
    write_atomic(path / "results.json", json.dumps(results, indent=2))
    write_atomic(path / "summary.md", table([results]))
    return results


def table(rows: list[dict]) -> str:
    """The results table: our scores beside the dataset's behaviour and CORL's figures."""
    header = ["algorithm", "dataset", "score IQM [95% CI]", "with D4RL refs", "dataset's own"]
    header += ["CORL (D4RL)", "steps", "updates/s (incl. eval)"]
    row = lambda r: [
        ALGOS[r["algo"]][0],
        f"{r['task']}-{r['level']}",
        fmt_ci(r["score_iqm_ci"], 1),
        fmt_ci(r["d4rl_score_iqm_ci"], 1),
        f"{r['behaviour_score']:.1f}",
        f"{r['corl']:.1f}" if r.get("corl") is not None else "",
        f"{r['gradient_steps']:,}",
        f"{r['updates_per_s']:.0f}",
    ]
    return md_table(header, map(row, rows)) + "\n"


def main(args: Args) -> dict:
    """Run every (algo, task, level); write ``<out>/results.md``, ``results.json``, summary."""
    args.validate()
    study = Study("offline", args)
    if (done := study.finished()) is not None:
        return done
    rows = [
        run_one(study, args, algo, task, level)
        for task in args.tasks
        for level in args.levels
        for algo in args.algos
    ]
    text = table(rows)
    write_atomic(study.path / "results.md", text)
    return study.finish({"runs": rows}, text)


def paper() -> Args:
    """D4RL's protocol: 1M gradient steps per run (batch 256), 10 episodes every 5,000 steps,
    on ``make_datasets``' paper-scale datasets (version 1: 1M transitions per level)."""
    return Args(total_steps=1_000_000, eval_every=5_000, version=1, updates_per_chunk=10)


PRESETS = {"cpu": Args, "paper": paper}


if __name__ == "__main__":
    main(cli(PRESETS))
