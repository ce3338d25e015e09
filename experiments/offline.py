"""TD3+BC and IQL on the project's D4RL-style datasets: normalised scores next to CORL's.

python -m experiments.offline                                    # the README table (CPU budget)
python -m experiments.offline --algos iql --tasks hopper --levels medium --steps 1000000

For every (algorithm, task, level) the dataset ``skill-agents/<task>-<level>-v<version>`` (made
by ``experiments.make_datasets``) is loaded from the local Minari root, the env it names in its
metadata is built, and ``seeds`` seeds train in one vmapped program through ``run_chunked``
(progress, a checkpoint per chunk, resumable) into ``<out>/<algo>/<task>-<level>/``. A run whose
``results.json`` exists is skipped. Each seed's score is its last evaluation (``eval_episodes``
greedy episodes), normalised with the dataset's own measured random/expert returns and with
D4RL's; the table reports the IQM and its 95% bootstrap CI over seeds beside CORL's published
D4RL figures (1M gradient steps on D4RL's -v2 datasets).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tyro

import envs
from agents.hparams import to_dict
from agents.iql import IQLConfig, make_iql
from agents.replay.datasets import episode_returns, load_dataset, normalized_score
from agents.td3_bc import TD3BCConfig, make_td3_bc
from experiments.runner import RunFolder, fmt_ci, iqm_ci, plot_curves, run_chunked

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
class Args:
    algos: tuple[str, ...] = tuple(ALGOS)
    tasks: tuple[str, ...] = TASKS
    levels: tuple[str, ...] = LEVELS
    # Gradient steps per run. Published: 1,000,000. This CPU default fits the 18-run table
    # (2 algos x 3 tasks x 3 levels, 5 vmapped seeds) in about 45 min of one core: 5 seeds run
    # about 130 (TD3+BC) / 100 (IQL) updates per CPU-second, plus compiles and evaluations.
    steps: int = 5_000
    eval_every: int = 2_500  # gradient steps between evaluations
    eval_episodes: int = 10  # greedy episodes per evaluation and seed
    seeds: int = 5
    seed: int = 0
    td3_bc: TD3BCConfig = dataclasses.field(default_factory=TD3BCConfig)
    iql: IQLConfig = dataclasses.field(default_factory=IQLConfig)
    root: str | None = None  # dataset root; default $MINARI_DATASETS_PATH or ~/.minari/datasets
    version: int = 0  # dataset ids end in -v<version>
    out: str = "results/offline"
    updates_per_chunk: int = 1  # evaluations between checkpoints / progress refreshes
    progress: bool = True

    def validate(self) -> None:
        for name, values, known in (
            ("algos", self.algos, ALGOS),
            ("tasks", self.tasks, TASKS),
            ("levels", self.levels, (*LEVELS, "random", "expert")),
        ):
            unknown = set(values) - set(known)
            if unknown:
                raise ValueError(f"unknown {name} {sorted(unknown)}; choose from {list(known)}")
        if self.steps % self.eval_every:
            raise ValueError(
                f"steps={self.steps} must be a multiple of eval_every={self.eval_every}"
            )

    def config(self, algo: str) -> Any:
        """The algorithm's config with this run's budget."""
        return getattr(self, algo).replace(
            total_steps=self.steps, eval_every=self.eval_every, eval_episodes=self.eval_episodes
        )


def run_one(args: Args, algo: str, task: str, level: str) -> dict:
    """Train ``args.seeds`` seeds of ``algo`` on one dataset (or read its finished results)."""
    folder_path = Path(args.out) / algo / f"{task}-{level}"
    results_file = folder_path / "results.json"
    if results_file.exists():
        print(f"{algo} {task}-{level}: done, skipping")
        return json.loads(results_file.read_text())
    dataset_id = f"skill-agents/{task}-{level}-v{args.version}"
    transitions, meta = load_dataset(dataset_id, args.root)
    env, env_params = envs.make(meta["env_name"], **meta["env_kwargs"])
    refs = (meta["ref_min_score"], meta["ref_max_score"])
    config = args.config(algo)
    learner = ALGOS[algo][1](config, transitions, env, env_params, ref_scores=refs)
    run_config = {
        "experiment": "offline",
        "algo": algo,
        "dataset": dataset_id,
        "seeds": args.seeds,
        "seed": args.seed,
        algo: to_dict(config),
    }
    folder = RunFolder(folder_path, run_config)
    print(f"{algo} {task}-{level}: {transitions.reward.shape[0]:,} transitions")
    _, metrics, timing = run_chunked(
        learner.init,
        learner.update,
        config.num_updates,
        config.eval_every,
        jax.random.key(args.seed),
        args.seeds,
        folder,
        args.updates_per_chunk,
        args.progress,
    )
    final = metrics["return"][:, -1]  # [S] last evaluation of each seed
    own = normalized_score(task, final, *refs)
    d4rl = normalized_score(task, final)
    behaviour = float(episode_returns(transitions).mean())
    steps = (np.arange(config.num_updates) + 1) * config.eval_every
    plot_curves(
        folder.path / "learning_curve.png",
        steps,
        {ALGOS[algo][0]: normalized_score(task, metrics["return"], *refs)},
        "normalised score (dataset's references)",
        f"{ALGOS[algo][0]} on {dataset_id}",
    )
    results = {
        "algo": algo,
        "task": task,
        "level": level,
        "dataset": dataset_id,
        "transitions": int(transitions.reward.shape[0]),
        "ref_scores": list(refs),
        "final_return_per_seed": final.tolist(),
        "score_iqm_ci": iqm_ci(own),
        "d4rl_score_iqm_ci": iqm_ci(d4rl),
        "behaviour_score": normalized_score(task, behaviour, *refs),
        "corl": CORL[algo].get((task, level)),
        "gradient_steps": args.steps,
        "updates_per_s": args.seeds * args.steps / max(timing["run_s"], 1e-9),
        **timing,
    }
    results_file.write_text(json.dumps(results, indent=2))
    (folder.path / "summary.md").write_text(_table([results]))
    return results


def _table(rows: list[dict]) -> str:
    lines = [
        "| algorithm | dataset | score IQM [95% CI] | with D4RL refs | dataset's own | CORL (D4RL) "
        "| steps | updates/s (incl. eval) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        corl = "" if r["corl"] is None else f"{r['corl']:.1f}"
        lines.append(
            f"| {ALGOS[r['algo']][0]} | {r['task']}-{r['level']} | "
            f"{fmt_ci(r['score_iqm_ci'], 1)} | "
            f"{fmt_ci(r['d4rl_score_iqm_ci'], 1)} | {r['behaviour_score']:.1f} | {corl} | "
            f"{r['gradient_steps']:,} | {r['updates_per_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(args: Args) -> list[dict]:
    """Run every (algo, task, level); write ``<out>/results.md`` and ``results.json``."""
    args.validate()
    rows = [
        run_one(args, algo, task, level)
        for task in args.tasks
        for level in args.levels
        for algo in args.algos
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    table = _table(rows)
    (out / "results.md").write_text(table)
    print(table)
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
