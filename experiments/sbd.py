"""Skill-boundary detection on the multi-skill gridworld, and what the segments are good for.

For each seed (one program vmapped over seeds): scripted-expert demonstrations with hidden skill
switches; an unconditional recurrent action model trained on them; boundaries detected by the
loss-gap rule (``skills.boundary``), scored against the true switches (precision, recall, F1
within +-``tolerance`` steps) over a sweep of the gap, with fixed-length and random
segmentations as baselines and a negative control (the skill id revealed in the observation).
Downstream, goal-conditioned policies trained on SBD, fixed-length, true and no segments
(hindsight goal: where the segment ended) are scored on per-skill success, and a hierarchical
agent sequencing them on an ordered tour of all objects, against flat behaviour cloning (the
action model itself). The measurements live in ``skills.sbd`` and ``skills.evaluate``.

    python -m experiments.sbd                       # about 15 min on 2 busy CPU cores
    python -m experiments.sbd --seeds 5 --num-demos 2048 --help
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import envs
from agents.hparams import stack_configs
from agents.replay import Transition
from envs.gridworlds.multi_skill import check_params, rollout_expert
from experiments.plots import figure, plot_detection, plot_segmented, segment_video
from experiments.runner import Laps, fmt_ci, iqm_ci
from experiments.study import (
    Study,
    StudyArgs,
    cli,
    detection_table,
    loss_lines,
    metric_lines,
    parse_env_kwargs,
    per_seed,
    spike_table,
)
from skills import sbd
from skills.action_model import ActionModelConfig, episode_starts
from skills.boundary import BoundaryConfig
from skills.evaluate import goal_policy_scores, reach_events, tour
from skills.policies import GoalPolicyConfig
from skills.segments import fixed_length_boundaries

# a large room with few objects: skills mostly end by timeout (unpredictably), segments are long
ENV_KWARGS = {"height": 33, "width": 33, "num_objects": 3, "min_skill_len": 12, "max_skill_len": 24}
FLAT = "flat BC (the action model)"
VARIANTS = ("SBD (loss + events)", "SBD (loss)", "fixed-length", "true segments", "unsegmented")
#: the swept segmentations: arm -> label (and line style)
ARM_LABELS = {
    "loss": "SBD (loss)",
    "loss + events": "SBD (loss + events)",
    "revealed": "negative control: skill id revealed (loss)",
}
STYLES = ("o-", "d-", "s--")


@dataclasses.dataclass
class Args(StudyArgs):
    out: str = "results/sbd"
    seeds: int = 5
    env_kwargs: str = json.dumps(ENV_KWARGS)  # MultiSkill params; reveal_skill is set per arm
    num_demos: int = 1024  # expert trajectories per seed, one episode each
    eval_demos: int = 512  # of those, how many the boundary metrics score
    model: ActionModelConfig = dataclasses.field(
        default_factory=lambda: ActionModelConfig(
            embed=(48,), gru_hidden=48, head=(48,), total_steps=800, batch_size=32, lr=3e-3
        )
    )
    boundary: BoundaryConfig = dataclasses.field(
        default_factory=lambda: BoundaryConfig(gap=0.75, min_len=2, max_len=10_000)
    )
    gaps: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
    tolerance: int = 2
    fixed_lengths: tuple[int, ...] = (2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24)
    random_rates: tuple[float, ...] = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
    policy: GoalPolicyConfig = dataclasses.field(
        default_factory=lambda: GoalPolicyConfig(
            hidden=(128, 128), total_steps=1500, batch_size=128
        )
    )
    eval_episodes: int = 128  # per seed, for each skill and for the tour
    tour_steps: int = 192  # step budget of the ordered tour of all objects


def main(args: Args) -> dict:
    """Every stage for all seeds at once; writes the run folder and returns the results."""
    study = Study("sbd", args)
    if (done := study.finished()) is not None:
        return done
    env, hidden = envs.make("MultiSkill", **parse_env_kwargs(args.env_kwargs))
    space, steps, tol = env.action_space(hidden), int(hidden.max_steps_in_episode), args.tolerance
    lap = Laps()

    # 1. demonstrations (the revealed arm: the same rollouts, skill id in the observation)
    @jax.jit
    def expert(params, keys):  # [S, N, T] expert trajectories, one episode each
        rollouts = lambda k: rollout_expert(k, env, params, steps)
        return jax.vmap(lambda k: jax.vmap(rollouts)(jax.random.split(k, args.num_demos)))(keys)

    check_params(hidden)  # before compiling: traced params are not checked
    demos = expert(hidden, study.seed_keys("demos"))
    revealed = expert(hidden.replace(reveal_skill=True), study.seed_keys("demos")).obs
    obs = {"hidden": demos.obs, "revealed": revealed}
    start, true = episode_starts(demos.terminated, demos.truncated), demos.boundary
    lap("demos_s")

    # 2. action models, hidden and revealed arms, all seeds in one program
    model, params, loss = sbd.action_models(
        args.model, space, Transition(*demos[:6]), obs, study.seed_keys("action_model")
    )
    lap("action_model_s")

    # 3. a gap sweep on the first eval_demos trajectories: the loss rule, the loss rule unioned
    # with events (the step after an object was reached), and the negative control
    ev = lambda x: x[:, : args.eval_demos]
    events = reach_events(demos.reward, start)
    no_events = jnp.zeros_like(events)
    sweep = stack_configs([args.boundary.replace(gap=g) for g in args.gaps])
    arms = {"loss": ("hidden", no_events), "loss + events": ("hidden", events)}
    arms["revealed"] = ("revealed", no_events)
    swept = {
        name: sbd.sweep_boundaries(
            model, params[a], ev(obs[a]), ev(demos.action), ev(start), sweep, ev(e)
        )
        for name, (a, e) in arms.items()
    }
    lap("segment_sweep_s")
    baselines = (study.seed_keys("baselines"), tol, args.fixed_lengths, args.random_rates)
    detection = sbd.detection_scores(swept, ev(true), ev(start), *baselines)
    nll = {
        a: sbd.plain_nll(model, params[a], ev(o), ev(demos.action), ev(start))
        for a, o in obs.items()
    }
    spikes = {arm: sbd.nll_spikes(v, ev(true), ev(start)) for arm, v in nll.items()}

    # 4. every demonstration segmented at the chosen gap, for downstream use
    segment = lambda e: sbd.segment_seeds(
        model, params["hidden"], demos.obs, demos.action, start, args.boundary, e
    )
    seg = {"loss": segment(no_events), "loss + events": segment(events)}
    lap("segment_all_s")
    mean_true_len = float(1.0 / max(np.asarray(true).mean(), 1e-9))
    fixed_len = max(2, round(mean_true_len))
    fixed_seg = fixed_length_boundaries(fixed_len, start)
    segmentations = [seg["loss + events"].boundary, seg["loss"].boundary, fixed_seg, true, start]

    # 5. goal-conditioned policies on each segmentation, per-skill success and ordered tours;
    # flat BC (the action model, sampled) on the same tours
    k_eval = study.seed_keys("evaluate")
    downstream = goal_policy_scores(
        args.policy,
        env,
        hidden,
        demos,
        jnp.stack(segmentations, axis=1),
        study.seed_keys("goal_policies"),
        k_eval,
        args.eval_episodes,
        args.tour_steps,
    )
    flat_tour = lambda p, k: tour(
        k, env, hidden, model.policy, p, args.eval_episodes, args.tour_steps, False
    )
    flat = jax.jit(jax.vmap(flat_tour))(params["hidden"], k_eval)
    lap("downstream_s")

    # 6. aggregate, log, plot, summarise
    chosen = {k: sbd.segmentation_scores(s.boundary, true, start, tol) for k, s in seg.items()}
    by_variant = lambda x: dict(zip(VARIANTS, np.asarray(x).T))
    scores = {
        "chosen": chosen,
        "events_only": sbd.segmentation_scores(ev(events | start), ev(true), ev(start), tol),
        **detection,
        **{m: {a: s[m] for a, s in spikes.items()} for m in spikes["hidden"]},
        "skill_success": by_variant(downstream["skill_success"]),
        "tour_success": {**by_variant(downstream["tour_success"]), FLAT: flat[0]},
        "tour_progress": {**by_variant(downstream["tour_progress"]), FLAT: flat[1]},
    }
    results = {
        "true_boundary_rate": float(np.asarray(ev(true) & ~ev(start)).mean()),
        "mean_true_segment_length": mean_true_len,
        "fixed_length_used_downstream": fixed_len,
        "segment_lengths": {n: float(b.size / b.sum()) for n, b in zip(VARIANTS, segmentations)},
        "gaps": list(args.gaps),
        "chosen_gap": float(args.boundary.gap),
        **per_seed(scores),
        "chosen_per_seed": chosen,
        "per_seed": {**downstream, "tour_flat": flat[0]},
        "timing": {**lap.timing, "wall_s": time.perf_counter() - study.start},
    }
    rates = {f"{arm}/boundary_rate": r for arm, r in detection["boundary_rate"].items()}
    curves = {f"{arm}/{k}": v for arm, c in detection["pr"].items() for k, v in c.items()} | rates
    study.folder().rewrite_metrics(
        loss_lines("action_model", loss)
        + metric_lines("pr_curve", "gap", enumerate(args.gaps), curves)
    )
    example = (true[0, 0], start[0, 0], seg["loss"].nll[0, 0], seg["loss"].boundary[0, 0])
    _plots(study, results, jax.device_get(example))
    if args.video:  # the example trajectory's frames, framed by detected segment
        first = jax.random.split(study.seed_keys("demos")[0], args.num_demos)[0]
        _, frames = rollout_expert(first, env, hidden, steps, render=True)
        n = min(args.video, steps)
        segment_video(study.path, frames[:n], example[3][:n])
    return study.finish(results, _summary(args, results))


def _summary(args: Args, r: dict) -> str:
    cells = lambda c, keys: " | ".join(fmt_ci(c[k]) for k in keys)
    gap, chosen = r["chosen_gap"], dict(r["chosen"])
    if gap in r["gaps"]:  # the negative control at the chosen gap, from its sweep
        i = r["gaps"].index(gap)
        chosen["revealed"] = {
            k: iqm_ci(np.asarray(v)[:, i]) for k, v in r["pr"]["revealed"].items()
        }
    spike = {
        a: {k: r[k][a] for k in ("nll_at_switch", "nll_elsewhere", "spike")}
        for a in ("hidden", "revealed")
    }
    lines = [
        f"# Skill-boundary detection on MultiSkill ({args.seeds} seeds, IQM [95% CI])\n",
        f"{args.num_demos} expert trajectories per seed, env {args.env_kwargs}; true switches "
        f"at {r['true_boundary_rate']:.3f} of steps (mean segment "
        f"{r['mean_true_segment_length']:.1f} steps). Boundaries match within "
        f"+-{args.tolerance} steps, one-to-one; scored on {args.eval_demos} trajectories/seed.\n",
        *detection_table(r, ARM_LABELS, gap, chosen),
        f"| events only | {cells(r['events_only'], ('precision', 'recall', 'f1'))} |",
        "",
        *spike_table(spike, "skill"),
        "\n| goal-conditioned policy trained on | mean segment | per-skill success | "
        "hierarchical tour: success | tour: objects reached |\n|---|---|---|---|---|",
    ]
    for name in (*VARIANTS, FLAT):
        if name == FLAT:
            label, first = name, ["", ""]
        else:
            label = name + (
                f" (L = {r['fixed_length_used_downstream']})" * (name == "fixed-length")
            )
            first = [f"{r['segment_lengths'][name]:.1f}", fmt_ci(r["skill_success"][name])]
        tours = [fmt_ci(r["tour_success"][name]), fmt_ci(r["tour_progress"][name])]
        lines.append(f"| {label} | {' | '.join(first + tours)} |")
    timing = ", ".join(f"{k} {v:.0f}" for k, v in r["timing"].items())
    return "\n".join([*lines, "", f"Timing (s): {timing}."]) + "\n"


def _plots(study: Study, r: dict, example: Any = None) -> None:
    """pr_curve.png, f1_vs_gap.png, downstream.png and (with ``example``) example_trajectory.png."""
    args, path = study.args, study.path
    arms = {a: (label, style) for (a, label), style in zip(ARM_LABELS.items(), STYLES)}
    events = {"events only": (r["events_only"], "k*")}
    plot_detection(path, {str(args.tolerance): r}, arms, args.gaps, events)
    with figure(path / "downstream.png", ncols=2, size=(5, 4)) as axes:
        for ax, key in zip(axes, ("skill_success", "tour_success")):
            names, ci = list(r[key]), np.array(list(r[key].values()))
            ax.bar(range(len(names)), ci[:, 0], yerr=[ci[:, 0] - ci[:, 1], ci[:, 2] - ci[:, 0]])
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
            ax.set(ylim=(0, 1), title=f"{key.replace('_', ' ')} (IQM, 95% CI)")
    if example is None:  # replotting from results.json: no example trajectory
        return
    true, start, nll, detected = example  # an example trajectory of seed 0
    nlls = {"NLL (memory reset at detected boundaries)": nll}
    plot_segmented(path / "example_trajectory.png", nlls, true & ~start, detected & ~start)


def paper() -> Args:
    """Accelerator scale (SBD's own scale is Minecraft with VPT; the rule's settings are its):
    8x the demonstrations, a 128-unit action model and a 256x256 policy trained 20x longer,
    segments up to the reference's 12,800 steps, 1,024 evaluation episodes."""
    return Args(
        num_demos=8192,
        eval_demos=2048,
        model=ActionModelConfig(
            embed=(128,), gru_hidden=128, head=(128,), total_steps=16_000, batch_size=128, lr=1e-3
        ),
        boundary=BoundaryConfig(gap=0.75, min_len=2, max_len=12_800),
        policy=GoalPolicyConfig(hidden=(256, 256), total_steps=30_000, batch_size=256),
        eval_episodes=1024,
    )


PRESETS = {"cpu": Args, "paper": paper}


if __name__ == "__main__":
    main(cli(PRESETS))
