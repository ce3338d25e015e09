"""Continual offline RL with offline experience replay (OER): a task sequence, dataset after
dataset, learned by every method of ``agents.oer``, with forgetting measured.

    python -m experiments.oer                                   # cheetah-vel, medium datasets
    python -m experiments.oer --sequence walker-dir --sac.total-steps 120000 \\
        --sac.buffer-size 120000                                # Walker2d needs longer SAC
    python -m experiments.oer --buffer-sizes 100 1000 5000      # the buffer-size sweep
    python -m experiments.oer --heads single multi              # multi-head variants too

Each task's offline dataset is made here (``experiments.study.task_datasets``: SAC on the
task's params, D4RL-style levels, stored as Minari datasets) and reused. Every arm learns the
tasks in order, all seeds in one vmapped program per task, checkpointed after every task (a
stopped run resumes). After each task every arm is evaluated on every task: the normalised
return matrix R (per task: 0 = uniformly random actions, 100 = the SAC expert that made its
data), from which the summary reports average performance after the last task, backward
transfer, forgetting and forward transfer (against single-task TD3+BC from scratch), and, for the
replaying arms, the squared MMD between each past task's buffer and the final policy's own
states on that task, next to a uniformly drawn buffer of the same size.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import numpy as np

import envs
from agents.dynamics import DynamicsConfig
from agents.evaluation import transfer_metrics
from agents.oer import ContinualConfig, buffer_distances, make_continual
from agents.sac import SACConfig
from envs.mujoco.variants import SEQUENCES
from experiments.plots import plot_curves, plot_heatmaps, plot_intervals
from experiments.runner import RunFolder, fmt_ci, iqm, iqm_ci, run_chunked
from experiments.study import Study, StudyArgs, cli, config_dict, task_datasets

#: arm -> (method, selection)
ARMS = {
    "fine-tuning": ("finetune", "random"),
    "EWC": ("ewc", "random"),
    "ER (random)": ("replay", "random"),
    "ER (MBES)": ("replay", "mbes"),
    "OER (MBES + DBC)": ("oer", "mbes"),
    "joint": ("joint", "random"),
    "single-task": ("scratch", "random"),
}


class Run(NamedTuple):
    """One arm at one head setting and buffer size; ``family`` labels it over buffer sizes."""

    label: str
    arm: str
    heads: str
    size: int
    family: str

    @property
    def replays(self) -> bool:
        return replays(self.arm)


def replays(arm: str) -> bool:
    """Whether ``arm`` keeps a replay buffer (so it runs at every buffer size)."""
    return ARMS[arm][0] in ("replay", "oer")


@dataclasses.dataclass
class Args(StudyArgs):
    out: str = "results/oer"
    sequence: Literal["cheetah-vel", "walker-dir", "mixed"] = "cheetah-vel"
    level: Literal["medium", "medium-random", "expert", "random"] = "medium"
    datasets: str = "results/oer/datasets"  # the SAC runs that make the datasets
    dataset_root: str | None = None  # Minari root; default $MINARI_DATASETS_PATH or ~/.minari
    dataset_steps: int = 50_000  # transitions per task (the reference: 1M)
    sac: SACConfig = dataclasses.field(
        default_factory=lambda: SACConfig(
            total_steps=60_000, learning_starts=5_000, buffer_size=60_000
        )
    )  # about 55 min for five tasks on 2 cores; 30k steps were too few (see the README)
    snapshot_every: int = 5_000  # env steps between the SAC snapshots the levels come from
    episode_steps: int = 1000
    arms: tuple[str, ...] = tuple(ARMS)
    heads: tuple[Literal["single", "multi"], ...] = ("single",)
    buffer_sizes: tuple[int, ...] = (1_000,)  # replaying arms run at each size
    continual: ContinualConfig = dataclasses.field(
        default_factory=lambda: ContinualConfig(
            steps_per_task=3_000,
            batch_size=256,
            eval_episodes=5,
            dynamics=DynamicsConfig(total_steps=2_000),
            alpha=0.1,
        )
    )  # CPU scale; the reference: 150k steps per task at batch 1024, 500k dynamics steps,
    # alpha 2.5. At 3k steps TD3+BC's Q term (weight alpha / mean|Q|, |Q| still small) swamps
    # its BC term and no task is learned; alpha 0.1 learns each within 3k steps (README).
    mmd_samples: int = 1_000  # states per side of each MMD


def main(args: Args) -> dict:
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arm(s) {sorted(unknown)}; choose from {list(ARMS)}")
    env_name, tasks = SEQUENCES[args.sequence]
    names = list(tasks)
    study = Study("oer", args)
    if (done := study.finished()) is not None:
        return done
    data = task_datasets(
        args.datasets, args.sequence, env_name, tasks, args.level, args.sac, args.dataset_steps,
        args.snapshot_every, 10, args.episode_steps, args.seed, args.progress, args.dataset_root,
    )  # fmt: skip
    env, default = envs.make(env_name, max_steps_in_episode=args.episode_steps)
    task_params = [default.replace(**tasks[n]) for n in names]
    datasets, refs = [data[n][0] for n in names], [data[n][1] for n in names]

    runs = []
    for heads in args.heads:
        for arm in args.arms:
            suffix = "" if heads == "single" else ", multi-head"
            for size in args.buffer_sizes if replays(arm) else (args.continual.buffer_size,):
                at = f", buffer {size}" if replays(arm) and len(args.buffer_sizes) > 1 else ""
                runs.append(Run(f"{arm}{suffix}{at}", arm, heads, size, f"{arm}{suffix}"))

    scores, returns, states, walls, learners = {}, {}, {}, {}, {}
    for label, arm, heads, size, _ in runs:
        method, selection = ARMS[arm]
        config = args.continual.replace(
            method=method, selection=selection, heads=heads, buffer_size=size
        )
        learner = make_continual(config, datasets, env, task_params, refs, names)
        slug = label.lower().replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")
        keep = ("seed", "seeds", "sequence", "level", "dataset_steps", "sac", "episode_steps")
        run_config = {k: config_dict(getattr(args, k)) for k in keep}
        folder = RunFolder(
            study.path / "runs" / slug, run_config | {"continual": config_dict(config)}
        )
        state, metrics, timing = run_chunked(
            learner, study.key("continual", label), args.seeds, folder, 1, args.progress
        )
        scores[label], returns[label] = metrics["score"], metrics["return"]  # [S, T, T]
        states[label], learners[label] = state, learner
        walls[label] = timing["train_s"]  # over every process that trained it

    single = next((s for k, s in scores.items() if k.startswith("single-task")), None)
    single_diag = None if single is None else np.diagonal(single, axis1=1, axis2=2)
    summary = {}
    for label, r in scores.items():
        m = transfer_metrics(r, single_diag)
        m["new task"] = np.diagonal(r, axis1=1, axis2=2).mean(-1)  # right after learning each
        summary[label] = {k: iqm_ci(v) for k, v in m.items()} | {"per_seed": m}
    replaying = [run.label for run in runs if run.replays]
    distances = {
        k: buffer_distances(learners[k], states[k], env, task_params, datasets, args.mmd_samples)
        for k in replaying
    }
    results = {
        "sequence": args.sequence,
        "env": env_name,
        "tasks": tasks,
        "level": args.level,
        "ref_scores": dict(zip(names, refs)),
        "R": {
            k: [[iqm(v[:, i, j]) for j in range(len(names))] for i in range(len(names))]
            for k, v in scores.items()
        },
        "summary": {k: {m: v for m, v in s.items() if m != "per_seed"} for k, s in summary.items()},
        "buffers": {k: {m: iqm_ci(v) for m, v in d.items()} for k, d in distances.items()},
        "wall_s_per_arm": walls,
        "per_seed": {"score": scores, "return": returns, "buffers": distances},
    }
    plot_heatmaps(study.path / "R.png", results["R"], names)
    plot_intervals(
        study.path / "average.png",
        {k: s["per_seed"]["average"] for k, s in summary.items()},
        "average normalised score after the last task",
    )
    swept: dict[str, list[str]] = {}  # replaying arm -> its labels, one per buffer size
    for run in runs:
        if len(args.buffer_sizes) > 1 and run.replays:
            swept.setdefault(run.family, []).append(run.label)
    for metric in ("average", "forgetting") if swept else ():
        curves = {
            arm: np.stack([summary[k]["per_seed"][metric] for k in labels], 1)
            for arm, labels in swept.items()
        }  # [S, sizes]
        plot_curves(
            study.path / f"buffer_{metric}.png", np.log10(args.buffer_sizes), curves,
            "log10 buffer size per task", metric, f"{args.sequence}: {metric} over buffer size",
        )  # fmt: skip
    for j, name in enumerate(names):
        curves = {k: v[:, :, j] for k, v in scores.items()}
        plot_curves(
            study.path / f"task_{j}.png", np.arange(1, len(names) + 1), curves,
            "tasks learned", f"normalised score on {name}", f"{args.sequence}: task {j} ({name})",
        )  # fmt: skip
    return study.finish(results, _summary(args, names, results))


def _summary(args: Args, names: list[str], r: dict) -> str:
    lines = [
        f"# OER: continual offline RL on {args.sequence} ({args.level}; {args.seeds} seeds, IQM "
        "[95% CI])\n",
        f"Tasks in order: {', '.join(names)}; {args.continual.steps_per_task} TD3+BC steps per "
        f"task at batch {args.continual.batch_size}; {args.dataset_steps} transitions per task.\n",
        "| arm | average after the last task | backward transfer | forgetting | forward transfer"
        " | score right after learning |",
        "|---|---|---|---|---|---|",
    ]
    for label, s in r["summary"].items():
        cell = lambda k, s=s: fmt_ci(s[k], 1) if k in s else "-"
        lines.append(
            f"| {label} | {cell('average')} | {cell('bwt')} | {cell('forgetting')} | "
            f"{cell('fwt')} | {cell('new task')} |"
        )
    if r["buffers"]:
        lines += [
            "\nEach past task's kept buffer against a uniformly drawn one of the same size: the "
            "squared MMD to the final policy's states on the task (lower: closer to the policy's "
            "own distribution) and the mean distance from a dataset state to its nearest buffer "
            "state (lower: covers more of the task's data):\n",
            "| arm | MMD, kept | MMD, uniform | coverage distance, kept | coverage distance, "
            "uniform |",
            "|---|---|---|---|---|",
            *(
                f"| {k} | {fmt_ci(d['buffer'], 3)} | {fmt_ci(d['random'], 3)} | "
                f"{fmt_ci(d['coverage'], 2)} | {fmt_ci(d['coverage_random'], 2)} |"
                for k, d in r["buffers"].items()
            ),
        ]
    return "\n".join(lines) + "\n"


def paper() -> Args:
    """The reference's launcher: 1M transitions per task from SAC trained for 1M env steps,
    150k TD3+BC steps per task at batch 1024, 500k dynamics-model steps, buffers of 1,000 and
    10,000 transitions per task, 100 evaluation episodes."""
    return Args(
        dataset_steps=1_000_000,
        sac=SACConfig(),  # the published 1M env steps
        buffer_sizes=(1_000, 10_000),
        continual=ContinualConfig(
            steps_per_task=150_000,
            batch_size=1024,
            eval_episodes=100,
            dynamics=DynamicsConfig(total_steps=500_000),
        ),
        mmd_samples=5_000,
    )


PRESETS = {"cpu": Args, "paper": paper}


if __name__ == "__main__":
    main(cli(PRESETS))
