"""SynthER studies: synthetic-data quality, offline upsampling of a small subset, online SAC.

    python -m experiments.synther --study quality                  # diffusion fit + checks
    python -m experiments.synther --study offline --seeds 5        # subset vs upsampled vs full
    python -m experiments.synther --study online --seeds 5         # SAC UTD 20 +/- synthetic, UTD 1
    python -m experiments.synther --help

Quality and offline use one Minari dataset (default: our walker2d medium-replay, made by
``python -m experiments.make_datasets --tasks walker2d``). A random ``subset_fraction`` of its
episodes is the small dataset; a diffusion model (``--diffusion``, the CPU preset by default)
fits it and ``num_synthetic`` samples are drawn. Quality: per-dimension moments of synthetic vs
real data, and dynamics consistency (the simulator's reward and next state for each synthetic
(s, a), against randomly re-paired rows). Offline: the learner (IQL by default) on the subset,
on the upsampled subset (synthetic data only, as in the paper), and on the full dataset, each
``seeds`` seeds vmapped; final normalised scores (mean of the last evaluations) as IQM with 95%
bootstrap CIs. Online: SynthER vs SAC at the same update-to-data ratio vs SAC at UTD 1, equal
environment steps, learning curves of the training-episode return.

Everything lands in ``--out``: ``config.json``, one run folder per arm (``metrics.jsonl``,
checkpoints: a stopped run resumes), PNG plots, ``results.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
import tyro

import envs
from agents import iql, offline, td3_bc
from agents.diffusion import PRESETS, DiffusionConfig
from agents.hparams import to_dict
from agents.replay import Transition
from agents.replay.datasets import D4RL_REF_SCORES, load_dataset
from agents.replay.synthetic import (
    SynthERConfig,
    dynamics_consistency,
    fit_synthesizer,
    make_synther,
    moments,
    upsample,
)
from agents.sac import SACConfig, make_sac
from experiments.runner import RunFolder, final_score, iqm_ci, plot_curves, run_chunked


def cpu_online() -> SynthERConfig:
    """Online SynthER scaled to this CPU: UTD 20, 64x64 SAC, 12k env steps, refit every 2k."""
    sac = SACConfig(
        num_steps=1000,
        total_timesteps=12_000,
        learning_starts=2_000,
        utd=20,
        batch_size=128,
        buffer_size=12_000,
        hidden=(64, 64),
    )
    diffusion = PRESETS["cpu"].replace(num_train_steps=3_000)
    return SynthERConfig(sac, diffusion, retrain_every=2_000, num_synthetic=50_000)


@dataclasses.dataclass
class Args:
    study: Literal["quality", "offline", "online", "all"] = "all"
    dataset: str = "skill-agents/walker2d-medium-replay-v0"
    root: str | None = None  # dataset root (default $MINARI_DATASETS_PATH or Minari's)
    subset_fraction: float = 0.15  # of the dataset's episodes
    diffusion: DiffusionConfig = PRESETS["cpu"]
    num_synthetic: int = 200_000  # upsampled dataset size (reference: 5M)
    quality_samples: int = 20_000  # synthetic transitions checked against the simulator
    learner: Literal["iql", "td3_bc"] = "iql"
    offline_steps: int = 50_000  # gradient steps per offline run (reference: 1M)
    eval_every: int = 5_000
    eval_episodes: int = 10
    online_env: str = "HalfCheetah"
    online: SynthERConfig = dataclasses.field(default_factory=cpu_online)
    seeds: int = 5
    seed: int = 0
    out: str = "results/synther"
    progress: bool = True


def episode_subset(data: Transition, fraction: float, seed: int) -> Transition:
    """Whole episodes, in random order, until they hold ``fraction`` of the transitions."""
    ends = np.flatnonzero(np.asarray(data.terminated) | np.asarray(data.truncated))
    starts = np.concatenate([[0], ends[:-1] + 1])
    order = np.random.default_rng(seed).permutation(len(ends))
    lengths = (ends - starts + 1)[order]
    keep = order[: int(np.searchsorted(np.cumsum(lengths), fraction * data.reward.shape[0])) + 1]
    idx = np.concatenate([np.arange(starts[i], ends[i] + 1) for i in np.sort(keep)])
    return jax.tree.map(lambda x: np.asarray(x)[idx], data)


def ref_scores(meta: dict) -> tuple[float, float]:
    """(random, expert) returns recorded with the dataset, else D4RL's for its task."""
    if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
        return float(meta["ref_min_score"]), float(meta["ref_max_score"])
    return D4RL_REF_SCORES[str(meta["env_name"]).lower()]


def quality(args: Args, real: Transition, synthetic: Transition, env, params) -> dict:
    """Moments of synthetic vs real vectors; simulator agreement of real/synthetic/shuffled."""
    m = moments(real, synthetic)
    obs_dim = real.obs.shape[1]
    scale = np.asarray(real.next_obs).std(0) + 1e-6
    key = jax.random.key(args.seed + 3)
    n = min(args.quality_samples, synthetic.reward.shape[0])
    syn = dynamics_consistency(env, params, jax.tree.map(lambda x: x[:n], synthetic), key, scale)
    n_real = min(args.quality_samples, real.reward.shape[0])
    real_c = dynamics_consistency(env, params, jax.tree.map(lambda x: x[:n_real], real), key, scale)
    groups = {"obs": obs_dim, "action": real.action.shape[1], "reward": 1, "next_obs": obs_dim}
    bounds = np.cumsum([0, *groups.values()])
    per_group = {
        g: {
            "max_abs_mean_gap_in_std": float(np.abs(m["mean_gap_in_std"][lo:hi]).max()),
            "std_ratio_min": float(m["std_ratio"][lo:hi].min()),
            "std_ratio_max": float(m["std_ratio"][lo:hi].max()),
        }
        for g, lo, hi in zip(groups, bounds[:-1], bounds[1:])
    }
    term = {
        "real": float(np.asarray(real.terminated).mean()),
        "synthetic": float(synthetic.terminated.mean()),
    }
    return {
        "moments": per_group,
        "terminal_rate": term,
        "consistency_synthetic": syn,
        "consistency_real": real_c,
        "per_dimension": {k: v.tolist() for k, v in m.items()},
    }


def plot_moments(path: Path, m: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = m["per_dimension"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, stat in zip(axes, ("mean", "std")):
        x, y = np.array(d[f"real_{stat}"]), np.array(d[f"synthetic_{stat}"])
        ax.scatter(x, y, s=12)
        lim = [min(x.min(), y.min()), max(x.max(), y.max())]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xlabel(f"real {stat}")
        ax.set_ylabel(f"synthetic {stat}")
        ax.set_title(f"per-dimension {stat} of [s, a, r, s', done]")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bars(path: Path, rows: dict, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(rows)
    iqm = np.array([rows[n]["iqm"] for n in names])
    err = np.array(
        [[iqm[i] - rows[n]["ci"][0], rows[n]["ci"][1] - iqm[i]] for i, n in enumerate(names)]
    ).T
    ax.bar(names, iqm, yerr=err, capsize=6)
    for i, n in enumerate(names):
        ax.scatter([i] * len(rows[n]["per_seed"]), rows[n]["per_seed"], color="k", s=10, zorder=3)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_offline(args: Args, name: str, data: Transition, env, params, refs, reward_scale=None):
    """``seeds`` vmapped runs of the offline learner on ``data``; per-seed final scores."""
    if args.learner == "iql":
        config = iql.IQLConfig(
            total_steps=args.offline_steps,
            eval_every=args.eval_every,
            eval_episodes=args.eval_episodes,
            normalize_reward=reward_scale is None,
        )
        if reward_scale is not None:  # synthetic data has no episodes: the real data's scale
            data = data._replace(reward=np.asarray(data.reward) * reward_scale)
        agent = iql.make_iql(config, data, env, params, refs)
    else:
        config = td3_bc.TD3BCConfig(
            total_steps=args.offline_steps,
            eval_every=args.eval_every,
            eval_episodes=args.eval_episodes,
        )
        agent = td3_bc.make_td3_bc(config, data, env, params, refs)
    folder = RunFolder(Path(args.out) / "offline" / name, {"arm": name, **to_dict(config)})
    metrics, timing = run_arm(args, agent, folder, config.num_updates, config.eval_every)
    scores = final_score(metrics["normalized_score"], fraction=0.2)
    return scores, metrics["normalized_score"], timing


def run_arm(args: Args, agent: Any, folder: RunFolder, num_updates: int, steps: int):
    """``args.seeds`` vmapped runs of ``agent`` (init/update) -> (metrics [S, U], timing)."""
    _, metrics, timing = run_chunked(
        agent.init,
        agent.update,
        num_updates,
        steps,
        jax.random.key(args.seed),
        args.seeds,
        folder,
        updates_per_chunk=1,
        progress=args.progress,
    )
    return metrics, timing


def score_row(scores: np.ndarray, timing: dict) -> dict:
    """IQM, 95% CI and per-seed values of final ``scores`` [S], with the run's timing."""
    point, lo, hi = iqm_ci(scores)
    return {"iqm": point, "ci": [lo, hi], "per_seed": scores.tolist(), **timing}


def offline_and_quality(args: Args, studies: set[str], out: Path) -> dict:
    data, meta = load_dataset(args.dataset, args.root)
    env, params = envs.make(meta["env_name"], **(meta.get("env_kwargs") or {}))
    refs = ref_scores(meta)
    subset = episode_subset(data, args.subset_fraction, args.seed)
    results: dict = {
        "dataset": args.dataset,
        "transitions": int(data.reward.shape[0]),
        "subset_transitions": int(subset.reward.shape[0]),
        "ref_scores": refs,
    }
    n, n_sub = results["transitions"], results["subset_transitions"]
    print(f"{args.dataset}: {n} transitions, subset {n_sub}")
    t0 = time.perf_counter()
    key = jax.random.key(args.seed + 1)
    synth, losses = fit_synthesizer(subset, args.diffusion, key, progress=args.progress)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    synthetic = upsample(
        synth, args.num_synthetic, jax.random.key(args.seed + 2), chunk_size=50_000
    )
    sample_s = time.perf_counter() - t0
    results["diffusion"] = {
        "fit_s": fit_s,
        "sample_s": sample_s,
        "final_loss": float(losses[-max(1, len(losses) // 20) :].mean()),
    }
    if "quality" in studies:
        q = quality(args, subset, synthetic, env, params)
        plot_moments(out / "quality_moments.png", q)
        results["quality"] = q
    if "offline" in studies:
        scale = offline.locomotion_reward_scale(subset) if args.learner == "iql" else None
        arms = {
            "subset": (subset, None),
            "upsampled subset": (synthetic, scale),
            "full": (data, None),
        }
        rows, curves = {}, {}
        for name, (arm_data, arm_scale) in arms.items():
            scores, curve, timing = run_offline(
                args, name.replace(" ", "_"), arm_data, env, params, refs, arm_scale
            )
            rows[name] = score_row(scores, timing)
            curves[name] = curve
            print(f"offline {name}: IQM {rows[name]['iqm']:.1f} {rows[name]['ci']}")
        plot_bars(
            out / "offline_scores.png",
            rows,
            "normalised score (IQM, 95% CI)",
            f"{args.learner.upper()} on {args.dataset.split('/')[-1]}",
        )
        results["offline"] = rows
    return results


def online(args: Args, out: Path) -> dict:
    cfg = args.online
    env, params = envs.make(args.online_env)
    sac_steps = cfg.sac.replace(num_steps=cfg.retrain_every // cfg.sac.num_envs)
    arms = {
        f"SynthER UTD {cfg.sac.utd}": make_synther(cfg, env, params),
        f"SAC UTD {cfg.sac.utd}": make_sac(sac_steps, env, params),
        "SAC UTD 1": make_sac(sac_steps.replace(utd=1), env, params),
    }
    rows, curves = {}, {}
    for name, agent in arms.items():
        folder = RunFolder(out / "online" / name.replace(" ", "_"), {"arm": name})
        metrics, timing = run_arm(args, agent, folder, cfg.num_updates, cfg.retrain_every)
        rows[name] = score_row(final_score(metrics["return"], fraction=0.34), timing)
        curves[name] = metrics["return"]
        print(f"online {name}: IQM {rows[name]['iqm']:.1f} {rows[name]['ci']}")
    steps = cfg.sac.learning_starts + cfg.retrain_every * (1 + np.arange(cfg.num_updates))
    plot_curves(
        out / "online_curves.png",
        steps,
        curves,
        "training episode return",
        f"{args.online_env}: SynthER vs SAC ({args.seeds} seeds)",
    )
    return {"env": args.online_env, "arms": rows}


def summary(args: Args, r: dict) -> str:
    lines = [f"# SynthER studies ({args.study})", ""]
    if "quality" in r:
        q = r["quality"]
        lines += [
            f"Dataset `{args.dataset}`: {r['transitions']} transitions; subset "
            f"{r['subset_transitions']}; diffusion width {args.diffusion.width}, "
            f"{args.diffusion.num_train_steps} steps, {args.diffusion.num_sample_steps} sampler "
            f"steps (fit {r['diffusion']['fit_s']:.0f} s, {args.num_synthetic} samples in "
            f"{r['diffusion']['sample_s']:.0f} s).",
            "",
            "| part | max abs mean gap (real stds) | synthetic / real std |",
            "|---|---|---|",
        ]
        for g, v in q["moments"].items():
            lines.append(
                f"| {g} | {v['max_abs_mean_gap_in_std']:.3f} | "
                f"{v['std_ratio_min']:.2f}-{v['std_ratio_max']:.2f} |"
            )
        lines += [
            "",
            "| data | reward MAE vs simulator | next-state MSE (real std^2) | terminal agreement |",
            "|---|---|---|---|",
        ]
        for name, c, prefix in (
            ("real", q["consistency_real"], ""),
            ("synthetic", q["consistency_synthetic"], ""),
            ("synthetic, shuffled pairs", q["consistency_synthetic"], "shuffled_"),
        ):
            lines.append(
                f"| {name} | {c[prefix + 'reward_mae']:.4f} | {c[prefix + 'next_obs_mse']:.4f} | "
                f"{c[prefix + 'terminal_agreement']:.3f} |"
            )
        t = q["terminal_rate"]
        lines += ["", f"Terminal rate: real {t['real']:.4f}, synthetic {t['synthetic']:.4f}.", ""]
    for study, label in (("offline", "normalised score"), ("online", "final training return")):
        rows = r.get(study, {}) if study == "offline" else r.get("online", {}).get("arms", {})
        if rows:
            lines += [f"## {study} ({label}, IQM over {args.seeds} seeds, 95% CI)", ""]
            lines += ["| arm | IQM | 95% CI | per seed |", "|---|---|---|---|"]
            for name, v in rows.items():
                per_seed = ", ".join(f"{x:.1f}" for x in v["per_seed"])
                lo, hi = v["ci"]
                lines.append(f"| {name} | {v['iqm']:.1f} | [{lo:.1f}, {hi:.1f}] | {per_seed} |")
            lines.append("")
    return "\n".join(lines)


def main(args: Args) -> dict:
    if not 0 < args.subset_fraction <= 1:
        raise ValueError(f"subset_fraction={args.subset_fraction} must be in (0, 1]")
    args.online.validate()
    args.diffusion.validate()
    studies = {"quality", "offline", "online"} if args.study == "all" else {args.study}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in dataclasses.asdict(args).items() if k not in ("diffusion", "online")}
    config["diffusion"] = to_dict(args.diffusion)
    config["online"] = {
        "sac": to_dict(args.online.sac),
        "diffusion": to_dict(args.online.diffusion),
    }
    config["online"] |= {
        k: getattr(args.online, k)
        for k in ("retrain_every", "num_synthetic", "sample_chunk", "synthetic_ratio")
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    results: dict = {}
    if studies & {"quality", "offline"}:
        results |= offline_and_quality(args, studies, out)
    if "online" in studies:
        results["online"] = online(args, out)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    text = summary(args, results)
    (out / "summary.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
