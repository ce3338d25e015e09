"""Skill-boundary detection on HalfCheetah demonstrations that switch behaviour at known times.

Behaviour policies trained by SAC (native backend), each a resumable run folder under
``<policies>/<name>`` with its exported policy: run forward (``experiments.make_datasets``'s
expert when it exists), run backward (``direction=-1``), jump in place (velocity target 0 plus
the root-height term). ``skills.switching.detect_switches`` then switches between them at random
known times, trains the action models and scores SBD against the true switches (+-2 and +-5
steps) over a sweep of the gap, beside the baselines and the negative control; all seeds at once.

    python -m experiments.sbd_mujoco     # 6.5 min with trained policies, on 2 busy CPU cores
    python -m experiments.sbd_mujoco --seed 100 --seeds 2 --num-demos 32 --out /tmp/pilot

The first run also trains the backward and jump policies (30k SAC steps each, about 13 min
apiece on the busy 2-core machine); later runs load them. The default gap (12 nats) was chosen
on the pilot run of the second line (other seeds), not on the reported ones.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import envs
from agents.core import Policy, load_policy
from agents.hparams import require
from agents.sac import SACConfig, make_sac
from envs.mujoco import variants
from experiments.plots import plot_curves, plot_detection, plot_segmented, segment_video
from experiments.runner import Laps, RunFolder, fmt_ci, iqm_ci, md_table
from experiments.study import (
    Study,
    StudyArgs,
    cannot_render,
    cli,
    config_dict,
    detection_table,
    loss_lines,
    named_key,
    per_seed,
    spike_table,
    train_policy,
)
from skills.action_model import ActionModelConfig
from skills.boundary import BoundaryConfig
from skills.switching import STAGES, SwitchingConfig, behaviour_stats, detect_switches

ENV = "HalfCheetah"
#: behaviour -> HalfCheetah task params of the reward SAC maximises (physics are identical)
BEHAVIOURS = {name: variants.BEHAVIOURS[name] for name in ("forward", "backward", "jump")}
#: the segmentations scored: arm -> label
ARMS = {"hidden": "SBD", "revealed": "negative control: behaviour revealed"}
INFO = ("x_velocity", "height")  # recorded with every demonstration step
EXPERT = "results/make_datasets/halfcheetah/policies/expert"  # forward, return about 6,000


def default_sac() -> SACConfig:
    """Published SAC settings on a CPU budget: 30k env steps (HalfCheetah reaches ~2,000)."""
    return SACConfig(total_steps=30_000, learning_starts=5_000, buffer_size=30_000)


@dataclasses.dataclass
class Args(StudyArgs, SwitchingConfig):
    """The study's settings; the demonstrations' and the detector's are ``SwitchingConfig``'s."""

    out: str = "results/sbd_mujoco"
    policies: str = "results/sbd_mujoco/policies"  # behaviour policy run folders, one per name
    seeds: int = 5
    forward_policy: str = EXPERT  # an exported policy for "forward"; "" trains one
    sac: SACConfig = dataclasses.field(default_factory=default_sac)
    policy_eval_episodes: int = 5

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        require(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        SwitchingConfig.validate(self)


def behaviour_policy(args: Args, name: str) -> tuple[Policy, Any, dict]:
    """``(policy, params, metadata)`` of behaviour ``name``: loaded, or trained and exported."""
    if name == "forward" and args.forward_policy:
        require(
            Path(args.forward_policy).exists(),
            f"forward_policy {args.forward_policy} does not exist; run "
            "`python -m experiments.make_datasets --tasks halfcheetah` or pass "
            "--forward-policy '' to train one here",
        )
        return load_policy(args.forward_policy)
    path = Path(args.policies) / name
    if not (path / "policy").exists():
        env_kwargs = {"backend": "native", **BEHAVIOURS[name]}
        env_and_params = envs.make(ENV, **env_kwargs)
        sac = make_sac(args.sac, *env_and_params)
        config = {"experiment": "sbd_mujoco/policy", "behaviour": name, "seed": args.seed}
        folder = RunFolder(path, {**config, "env_kwargs": env_kwargs, "sac": config_dict(args.sac)})
        meta = {"env": ENV, "env_kwargs": env_kwargs, "env_steps": args.sac.total_steps}
        key = named_key(args.seed, "behaviour", name)
        video = (*env_and_params, args.video)
        _, metrics, _ = train_policy(folder, sac, key, 1, 5, args.progress, meta, video=video)
        steps = sac.steps_at(np.arange(sac.num_updates) + 1)
        curve = {"training (stochastic)": metrics["return"]}
        plot_curves(path / "learning_curve.png", steps, curve, "env steps", "episode return", name)
    return load_policy(path / "policy")


def main(args: Args) -> dict:
    """Train or load the behaviour policies, run the study, write the run folder."""
    args.validate()
    study = Study("sbd_mujoco", args, behaviours=BEHAVIOURS)
    if (done := study.finished()) is not None:
        return done
    loaded = {name: behaviour_policy(args, name) for name in BEHAVIOURS}
    lap = Laps(study.start)
    lap("policies_s")
    actors = [(policy, params) for policy, params, _ in loaded.values()]
    env = envs.make(ENV, backend="native")[0]
    tasks = [envs.make(ENV, backend="native", **task)[1] for task in BEHAVIOURS.values()]
    stats_key, episodes = study.key("behaviour_stats"), args.policy_eval_episodes
    stats = behaviour_stats(stats_key, env, tasks, actors, episodes, INFO)
    behaviours = {
        name: {"env_kwargs": BEHAVIOURS[name], "sac_env_steps": meta.get("env_steps"), **s}
        for (name, (_, _, meta)), s in zip(loaded.items(), stats)
    }
    results, example, lines = detect(study, actors, lap)
    timing = {**lap.timing, "wall_s": time.perf_counter() - study.start}
    results = {"behaviours": behaviours, **results, "timing": timing}
    study.folder().rewrite_metrics(lines)
    _plots(study, results, example)
    if args.video:  # the example trajectory drawn from its observations, framed by segment
        n = min(args.video, args.demo_steps)
        draw = jax.jit(jax.vmap(lambda o: env.render(env.state_from_observation(o))))
        with cannot_render() as failed:
            segment_video(study.path, draw(jnp.asarray(example[-1][:n])), example[5][:n])
        if failed:
            print(f"no segment strip: {failed[0]}")
    return study.finish(results, _summary(args, results))


def detect(
    study: Study, actors: list[tuple[Policy, Any]], lap: Laps
) -> tuple[dict, tuple, list[dict]]:
    """``skills.switching.detect_switches`` on ``actors`` in HalfCheetah, aggregated over seeds.

    Returns (results, an example trajectory of seed 0 for the plot, action-model loss lines).
    """
    args, (env, env_params) = study.args, envs.make(ENV, backend="native")
    keys = {stage: study.seed_keys(stage) for stage in STAGES}
    run = detect_switches(args, env, env_params, actors, keys, INFO, lap)
    demos, scores, true, start = run.demos, run.scores, run.demos.boundary, run.start
    upside_down = np.cos(np.asarray(demos.transitions.obs[..., 1])) < 0  # obs[1]: torso pitch
    results = {
        "true_boundary_rate": float(np.asarray(true & ~start).mean()),
        "upside_down_fraction": iqm_ci(upside_down.mean((1, 2))),
        "mean_segment_length": float(true.size / np.asarray(true).sum()),
        "gaps": list(args.gaps),
        "chosen_gap": float(args.boundary.gap),
        "tolerances": list(args.tolerances),
        "by_tolerance": {
            tol: per_seed(s) | {"chosen_per_seed": s["chosen"]}
            for tol, s in scores["by_tolerance"].items()
        },
        "nll_offsets": scores["offsets"],
        "nll_aligned": {arm: a.tolist() for arm, a in scores["aligned"].items()},
        "spike": per_seed(scores["around"]),
        "recall_by_switch": [
            k | {"recall": iqm_ci(k["recall"])} for k in scores["recall_by_switch"]
        ],
        "action_model_final_loss": {a: iqm_ci(v[:, -50:].mean(1)) for a, v in run.loss.items()},
    }
    chosen = run.chosen
    example = (demos.behaviour, *(demos.info[k] for k in INFO), true, chosen["hidden"].nll)
    example += (chosen["hidden"].boundary, chosen["revealed"].nll, demos.transitions.obs)
    example = jax.device_get(jax.tree.map(lambda x: x[0, 0], example))
    return results, example, loss_lines("action_model", run.loss)


def _summary(args: Args, r: dict) -> str:
    names, g = list(r["behaviours"]), r["chosen_gap"]
    kind = lambda k: f"{names[k['from']]} -> {names[k['to']]}"
    switches = [[kind(k), k["count"], k["recall"]] for k in r["recall_by_switch"]]
    lines = [
        f"# Skill-boundary detection on switching {ENV} demonstrations "
        f"({args.seeds} seeds, IQM [95% CI])\n",
        "| behaviour | task params | SAC env steps | greedy return | mean x velocity | "
        "mean root height |\n|---|---|---|---|---|---|",
        *(
            f"| {n} | {b['env_kwargs']} | {b['sac_env_steps']} | {b['return']:.0f} | "
            f"{b['x_velocity']:.2f} | {b['height']:.3f} |"
            for n, b in r["behaviours"].items()
        ),
        f"\n{args.num_demos} trajectories of {args.demo_steps} steps per seed, behaviour segments "
        f"of {args.min_segment}-{args.max_segment} steps (mean {r['mean_segment_length']:.1f}; "
        f"true switches at {r['true_boundary_rate']:.4f} of steps), actions "
        f"{'tanh(mean)' if args.deterministic else 'sampled'}. Boundaries match true switches "
        "one-to-one within the tolerance; oracle rows pick the best setting per seed. "
        f"The cheetah is upside down in {fmt_ci(r['upside_down_fraction'])} of demonstration "
        "steps.",
    ]
    for tol, s in r["by_tolerance"].items():
        lines += [f"\nTolerance +-{tol} steps:\n", *detection_table(s, ARMS, g, s["chosen"])]
    lines += [
        f"\nRecall at gap {g:g} (+-{min(args.tolerances)} steps) by kind of switch:\n",
        md_table(["switch", "count", "recall"], switches),
        "",
        spike_table(r["spike"], "behaviour"),
        "\nTiming (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["timing"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def _plots(study: Study, r: dict, example: Any = None) -> None:
    """pr_curve.png, f1_vs_gap.png, nll_around_switch.png and example_trajectory.png."""
    args, path = study.args, study.path
    styles = {arm: (label, style) for (arm, label), style in zip(ARMS.items(), ("o-", "s--"))}
    plot_detection(path, r["by_tolerance"], styles, args.gaps)
    aligned = {f"behaviour {arm}": np.asarray(v) for arm, v in r["nll_aligned"].items()}
    labels = ("steps after a true switch", "NLL (nats)", "NLL around switches (memory not reset)")
    plot_curves(path / "nll_around_switch.png", r["nll_offsets"], aligned, *labels)
    if example is None:
        return
    behaviour, x_velocity, height, true, nll, detected, nll_revealed, _ = example
    nlls = {"NLL (memory reset at detected boundaries)": nll, "NLL, revealed": nll_revealed}
    signals = {"x velocity": x_velocity, "10 x root height": 10 * height}
    out, names = path / "example_trajectory.png", list(r["behaviours"])
    plot_segmented(out, nlls, true, detected, behaviour, names, signals)


def paper() -> Args:
    """Accelerator scale: behaviour policies trained by SAC for 1M env steps, 8x the
    demonstrations, a 256-unit action model trained 25x longer, segments up to 12,800 steps."""
    return Args(
        sac=SACConfig(),  # the published 1M env steps
        policy_eval_episodes=20,
        num_demos=512,
        model=ActionModelConfig(
            embed=(256,), gru_hidden=256, head=(256,), total_steps=10_000, batch_size=64, lr=1e-3
        ),
        boundary=BoundaryConfig(gap=12.0, min_len=2, max_len=12_800),
    )


PRESETS = {"cpu": Args, "paper": paper}


if __name__ == "__main__":
    main(cli(PRESETS))
