"""Skill-boundary detection on the multi-skill gridworld, and what the segments are good for.

``skills.evaluate.evaluate_sbd`` for all seeds at once: scripted-expert demonstrations with
hidden skill switches, an unconditional recurrent action model, boundaries by the loss-gap rule
scored against the true switches (precision, recall, F1 within +-``tolerance`` steps) over a
sweep of the gap beside fixed-length and random segmentations and a negative control (the skill
id revealed); downstream, goal-conditioned policies trained on SBD, fixed-length, true and no
segments (hindsight goal: where the segment ended), scored on per-skill success and, sequenced
by a hierarchical agent, on ordered tours of all objects against flat behaviour cloning.

    python -m experiments.sbd                       # 3.5 min on 2 idle CPU cores
    python -m experiments.sbd --seeds 5 --num-demos 2048 --help
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import jax
import numpy as np

import envs
from envs.gridworlds.multi_skill import rollout_expert
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
from skills.action_model import ActionModelConfig
from skills.boundary import BoundaryConfig
from skills.evaluate import FLAT, STAGES, VARIANTS, MultiSkillSBDConfig, evaluate_sbd
from skills.policies import GoalPolicyConfig

# a large room with few objects: skills mostly end by timeout (unpredictably), segments are long
ENV_KWARGS = {"height": 33, "width": 33, "num_objects": 3, "min_skill_len": 12, "max_skill_len": 24}
#: the swept segmentations: arm -> label (and line style)
ARM_LABELS = {
    "loss": "SBD (loss)",
    "loss + events": "SBD (loss + events)",
    "revealed": "negative control: skill id revealed (loss)",
}
STYLES = ("o-", "d-", "s--")


@dataclasses.dataclass
class Args(StudyArgs, MultiSkillSBDConfig):
    """The study's settings; the pipeline's are ``skills.evaluate.MultiSkillSBDConfig``'s."""

    out: str = "results/sbd"
    seeds: int = 5
    env_kwargs: str = json.dumps(ENV_KWARGS)  # MultiSkill params; reveal_skill is set per arm


def main(args: Args) -> dict:
    """Every stage for all seeds at once; writes the run folder and returns the results."""
    args.validate()
    study = Study("sbd", args)
    if (done := study.finished()) is not None:
        return done
    env, hidden = envs.make("MultiSkill", **parse_env_kwargs(args.env_kwargs))
    lap = Laps()
    keys = {stage: study.seed_keys(stage) for stage in STAGES}
    run = evaluate_sbd(args, env, hidden, keys, lap)
    true, start, ev = run.demos.boundary, run.start, lambda x: x[:, : args.eval_demos]
    results = {
        "true_boundary_rate": float(np.asarray(ev(true) & ~ev(start)).mean()),
        "mean_true_segment_length": run.mean_true_length,
        "fixed_length_used_downstream": run.fixed_length,
        "segment_lengths": {n: float(b.size / b.sum()) for n, b in run.segmentations.items()},
        "gaps": list(args.gaps),
        "chosen_gap": float(args.boundary.gap),
        **per_seed(run.scores),
        "chosen_per_seed": run.scores["chosen"],
        "per_seed": run.downstream,
        "timing": {**lap.timing, "wall_s": time.perf_counter() - study.start},
    }
    scores = run.scores
    rates = {f"{arm}/boundary_rate": r for arm, r in scores["boundary_rate"].items()}
    curves = {f"{arm}/{k}": v for arm, c in scores["pr"].items() for k, v in c.items()} | rates
    study.folder().rewrite_metrics(
        loss_lines("action_model", run.loss)
        + metric_lines("pr_curve", "gap", enumerate(args.gaps), curves)
    )
    example = (true[0, 0], start[0, 0], run.sbd.nll[0, 0], run.sbd.boundary[0, 0])
    _plots(study, results, jax.device_get(example))
    if args.video:  # the example trajectory's frames, framed by detected segment
        first = jax.random.split(keys["demos"][0], args.num_demos)[0]
        steps = int(hidden.max_steps_in_episode)
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
        spike_table(spike, "skill"),
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
