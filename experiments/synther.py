"""SynthER studies: synthetic-data quality, offline upsampling of a small subset, online SAC.

    python -m experiments.synther --study quality                  # diffusion fit + checks
    python -m experiments.synther --study offline --seeds 5        # subset vs upsampled vs full
    python -m experiments.synther --study online --seeds 5         # SAC UTD 20 +/- synthetic, UTD 1

Quality and offline use one Minari dataset (default: our walker2d medium-replay, made by
``python -m experiments.make_datasets --tasks walker2d``). A random ``subset_fraction`` of its
episodes is the small dataset; a diffusion model (``--diffusion``, the CPU preset by default)
fits it and ``num_synthetic`` samples are drawn. Quality: ``agents.synther.quality`` (moments;
the simulator's reward and next state for each synthetic (s, a), against re-paired rows).
Offline: the learner (IQL by default) on the subset, on the upsampled subset (synthetic data
only, as in the paper) and on the full dataset; final normalised scores (mean of the last
evaluations), IQM with 95% bootstrap CIs over vmapped seeds. Online: SynthER vs SAC at the same
update-to-data ratio vs SAC at UTD 1, equal env steps, training-episode returns. Every arm has
its own resumable run folder (and exported policy) under ``--out``, beside the plots,
``results.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

import envs
from agents import offline
from agents.core import Agent
from agents.diffusion import PRESETS as DENOISERS
from agents.diffusion import DiffusionConfig
from agents.iql import IQLConfig, make_iql
from agents.replay.datasets import D4RL_REF_SCORES, episode_subset, load_dataset
from agents.sac import SACConfig, make_sac
from agents.synther import SynthERConfig, fit_synthesizer, make_synther, quality, upsample
from agents.td3_bc import TD3BCConfig, make_td3_bc
from experiments.plots import plot_curves, plot_intervals, plot_moments
from experiments.runner import Laps, RunFolder, final_score, fmt_ci, iqm_ci, md_table
from experiments.study import Study, StudyArgs, cli, config_dict, parse_env_kwargs, train_policy


def cpu_online() -> SynthERConfig:
    """Online SynthER scaled to this CPU: UTD 20, 64x64 SAC, 12k env steps, refit every 2k."""
    sac = SACConfig(
        total_steps=12_000,
        learning_starts=2_000,
        utd=20,
        batch_size=128,
        buffer_size=12_000,
        hidden=(64, 64),
    )
    diffusion = DENOISERS["cpu"].replace(total_steps=3_000)
    return SynthERConfig(sac, diffusion, retrain_every=2_000, num_synthetic=50_000)


@dataclasses.dataclass
class Args(StudyArgs):
    out: str = "results/synther"
    study: Literal["quality", "offline", "online", "all"] = "all"
    dataset: str = "skill-agents/walker2d-medium-replay-v0"
    root: str | None = None  # dataset root (default $MINARI_DATASETS_PATH or Minari's)
    subset_fraction: float = 0.15  # of the dataset's episodes
    diffusion: DiffusionConfig = DENOISERS["cpu"]
    num_synthetic: int = 200_000  # upsampled dataset size (reference: 5M)
    quality_samples: int = 20_000  # synthetic transitions checked against the simulator
    learner: Literal["iql", "td3_bc"] = "iql"
    iql: IQLConfig = dataclasses.field(default_factory=IQLConfig)  # budget from the next three
    td3_bc: TD3BCConfig = dataclasses.field(default_factory=TD3BCConfig)
    offline_steps: int = 50_000  # gradient steps per offline run (reference: 1M)
    eval_every: int = 5_000
    eval_episodes: int = 10
    online_env: str = "HalfCheetah"
    online_env_kwargs: str = "{}"  # JSON envs.make arguments of the online env
    online: SynthERConfig = dataclasses.field(default_factory=cpu_online)

    def validate(self) -> None:
        if not 0 < self.subset_fraction <= 1:
            raise ValueError(f"subset_fraction={self.subset_fraction} must be in (0, 1]")
        if self.offline_steps % self.eval_every:
            raise ValueError(f"offline_steps={self.offline_steps} must be a multiple of eval_every")
        self.online.validate()
        self.diffusion.validate()


def train_arm(
    study: Study, args: Args, path: tuple[str, ...], agent: Agent, config, key, metric, fraction
) -> tuple[dict, np.ndarray]:
    """``args.seeds`` vmapped seeds of one arm in its own (resumable) run folder, its policy
    exported. Returns its row (IQM, 95% CI and per-seed final ``metric``: the mean of the last
    ``fraction`` of updates; timing) and the ``metric`` curves [S, num_updates]."""
    folder = RunFolder(study.path.joinpath(*path), {"arm": path[-1], **config_dict(config)})
    _, metrics, timing = train_policy(folder, agent, key, args.seeds, 1, args.progress)
    scores = final_score(metrics[metric], fraction)
    row = {"iqm_ci": iqm_ci(scores), "per_seed": scores.tolist(), **timing}
    print(f"{' '.join(path)}: {fmt_ci(row['iqm_ci'], 1)}")
    return row, metrics[metric]


def offline_and_quality(study: Study, args: Args, studies: set[str]) -> dict:
    data, meta = load_dataset(args.dataset, args.root)
    env, params = envs.make(meta["env_name"], **(meta.get("env_kwargs") or {}))
    refs = (meta.get("ref_min_score"), meta.get("ref_max_score"))
    if None in refs:  # a dataset without measured references: D4RL's for its task
        refs = D4RL_REF_SCORES[str(meta["env_name"]).lower()]
    subset = episode_subset(data, args.subset_fraction, args.seed)
    n, n_sub = int(data.reward.shape[0]), int(subset.reward.shape[0])
    results: dict = {"dataset": args.dataset, "transitions": n, "subset_transitions": n_sub}
    print(f"{args.dataset}: {n} transitions, subset {n_sub}")
    lap = Laps()
    synth, losses = fit_synthesizer(subset, args.diffusion, study.key("diffusion"), args.progress)
    lap("fit_s")
    synthetic = upsample(synth, args.num_synthetic, study.key("upsample"), chunk_size=50_000)
    lap("sample_s")
    final_loss = float(losses[-max(1, len(losses) // 20) :].mean())
    lo, hi = synth.action_range  # rows with an action clipped into the data's range:
    clipped = float(((synthetic.action == lo) | (synthetic.action == hi)).any(axis=1).mean())
    results["diffusion"] = {**lap.timing, "final_loss": final_loss, "clipped_action_rows": clipped}
    if "quality" in studies:
        q = quality(env, params, subset, synthetic, study.key("quality"), args.quality_samples)
        plot_moments(study.path / "quality_moments.png", q["per_dimension"])
        results["quality"] = q
    if "offline" in studies:
        scale = offline.locomotion_reward_scale(subset) if args.learner == "iql" else None
        arms = {"subset": subset, "upsampled subset": synthetic, "full": data}
        rows = {}
        budget = {"total_steps": args.offline_steps, "eval_every": args.eval_every}
        config = getattr(args, args.learner).replace(**budget, eval_episodes=args.eval_episodes)
        for name, arm in arms.items():
            if args.learner == "iql":  # synthetic data has no episodes: the subset's scale
                config = config.replace(normalize_reward=name != "upsampled subset")
                if name == "upsampled subset":
                    arm = arm._replace(reward=np.asarray(arm.reward) * scale)
                agent = make_iql(config, arm, env, params, refs)
            else:
                agent = make_td3_bc(config, arm, env, params, refs)
            path, key = ("offline", name.replace(" ", "_")), study.key("offline")
            rows[name], _ = train_arm(
                study, args, path, agent, config, key, "normalized_score", 0.2
            )
        title = f"{args.learner.upper()} on {args.dataset.split('/')[-1]}"
        scores = {name: np.array(row["per_seed"]) for name, row in rows.items()}
        plot_intervals(study.path / "offline_scores.png", scores, "normalised score", title)
        results["offline"] = rows
    return results


def online(study: Study, args: Args) -> dict:
    cfg = args.online
    kwargs = parse_env_kwargs(args.online_env_kwargs, "--online-env-kwargs")
    env, params = envs.make(args.online_env, **kwargs)
    sac = cfg.sac_config  # one update per refit period, as SynthER's
    synther = make_synther(cfg, env, params)
    arms = {
        f"SynthER UTD {cfg.sac.utd}": (synther, cfg),
        f"SAC UTD {cfg.sac.utd}": (make_sac(sac, env, params), sac),
        "SAC UTD 1": (make_sac(sac.replace(utd=1), env, params), sac.replace(utd=1)),
    }
    rows, curves = {}, {}
    for name, (agent, config) in arms.items():
        path, key = ("online", name.replace(" ", "_")), study.key("online")
        rows[name], curves[name] = train_arm(study, args, path, agent, config, key, "return", 0.34)
    steps = synther.steps_at(1 + np.arange(synther.num_updates))  # every arm's x-axis
    title = f"{args.online_env}: SynthER vs SAC ({args.seeds} seeds)"
    plot_curves(study.path / "online_curves.png", steps, curves, "env steps", "return", title)
    return {"env": args.online_env, "arms": rows}


def summary(args: Args, r: dict) -> str:
    lines = [f"# SynthER studies ({args.study})", ""]
    if "diffusion" in r:
        d = r["diffusion"]
        lines += [
            f"Dataset `{args.dataset}`: {r['transitions']} transitions; subset "
            f"{r['subset_transitions']}; diffusion width {args.diffusion.width}, "
            f"{args.diffusion.total_steps} steps, {args.diffusion.num_sample_steps} sampler "
            f"steps (fit {d['fit_s']:.0f} s, {args.num_synthetic} samples in "
            f"{d['sample_s']:.0f} s; {d['clipped_action_rows']:.1%} of them with an action "
            "clipped into the data's range).",
            "",
        ]
    if "quality" in r:
        q = r["quality"]
        moment = lambda g, v: [
            g,
            f"{v['max_abs_mean_gap_in_std']:.3f}",
            f"{v['std_ratio_min']:.2f}-{v['std_ratio_max']:.2f}",
        ]
        header = ["part", "max abs mean gap (real stds)", "synthetic / real std"]
        lines += [md_table(header, [moment(g, v) for g, v in q["moments"].items()]), ""]
        consistency = lambda name, c, prefix: [
            name,
            f"{c[prefix + 'reward_mae']:.4f}",
            f"{c[prefix + 'next_obs_mse']:.4f}",
            f"{c[prefix + 'terminal_agreement']:.3f}",
        ]
        rows = [
            consistency("real", q["consistency_real"], ""),
            consistency("synthetic", q["consistency_synthetic"], ""),
            consistency("synthetic, shuffled pairs", q["consistency_synthetic"], "shuffled_"),
        ]
        header = ["data", "reward MAE vs simulator", "next-state MSE (real std^2)"]
        lines += [md_table([*header, "terminal agreement"], rows)]
        t = q["terminal_rate"]
        lines += ["", f"Terminal rate: real {t['real']:.4f}, synthetic {t['synthetic']:.4f}.", ""]
    for study, label in (("offline", "normalised score"), ("online", "final training return")):
        rows = r.get("offline", {}) if study == "offline" else r.get("online", {}).get("arms", {})
        if rows:
            lines += [f"## {study} ({label}, IQM over {args.seeds} seeds, 95% CI)", ""]
            per_seed = lambda v: ", ".join(f"{x:.1f}" for x in v["per_seed"])
            cells = [[n, fmt_ci(v["iqm_ci"], 1), per_seed(v)] for n, v in rows.items()]
            lines += [md_table(["arm", "IQM [95% CI]", "per seed"], cells), ""]
    return "\n".join(lines)


def main(args: Args) -> dict:
    """Run the selected studies; returns (and writes) their results."""
    args.validate()
    study = Study("synther", args)
    if (done := study.finished()) is not None:
        return done
    studies = {"quality", "offline", "online"} if args.study == "all" else {args.study}
    results: dict = {}
    if studies & {"quality", "offline"}:
        results |= offline_and_quality(study, args, studies)
    if "online" in studies:
        results["online"] = online(study, args)
    return study.finish(results, summary(args, results))


def paper() -> Args:
    """SynthER's published scale: the reference denoiser (width 2048 x 6 blocks, 100k steps,
    128 Heun steps), 5M synthetic samples, TD3+BC for 1M steps on version-1 (1M-transition)
    data; online: SAC 256x256 at UTD 20 for 100k env steps, a fresh width-1024 denoiser
    trained for 100k steps every 10k env steps, 1M synthetic samples, half of each batch."""
    online = SynthERConfig(
        SACConfig(total_steps=100_000, learning_starts=5_000, utd=20, buffer_size=100_000),
        DENOISERS["reference_online"],
        retrain_every=10_000,
        num_synthetic=1_000_000,
        sample_chunk=50_000,
    )
    return Args(
        dataset="skill-agents/walker2d-medium-replay-v1",
        diffusion=DENOISERS["reference"],
        num_synthetic=5_000_000,
        quality_samples=100_000,
        learner="td3_bc",
        offline_steps=1_000_000,
        online=online,
    )


PRESETS = {"cpu": Args, "paper": paper}


if __name__ == "__main__":
    main(cli(PRESETS))
