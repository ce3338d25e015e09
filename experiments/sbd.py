"""Skill-boundary detection on the multi-skill gridworld, and what the segments are good for.

For each seed (one program vmapped over seeds): scripted-expert demonstrations with hidden skill
switches; an unconditional recurrent action model trained on them; boundaries detected by the
loss-gap rule (``skills.boundary``), scored against the true switches (precision, recall, F1
within +-``tolerance`` steps) over a sweep of the gap, with fixed-length and random
segmentations as baselines and a negative control (the skill id revealed in the observation).
Downstream, goal-conditioned policies trained on SBD, fixed-length, true and no segments
(hindsight goal: where the segment ended) are scored on per-skill success, and a hierarchical
agent sequencing them on an ordered tour of all objects, against flat behaviour cloning (the
action model itself).

    python -m experiments.sbd                       # about 15 min on 2 busy CPU cores
    python -m experiments.sbd --seeds 5 --num-demos 2048 --help
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs
from agents.hparams import stack_configs, to_dict
from agents.replay import Transition
from envs.gridworlds.multi_skill import MultiSkill, MultiSkillParams, rollout_expert
from experiments.runner import RunFolder, fmt_ci, iqm_ci
from skills.action_model import ActionModelConfig, episode_starts, make_action_model
from skills.action_model import make_train as make_action_model_train
from skills.boundary import BoundaryConfig, detect_boundaries
from skills.policies import GoalData, GoalPolicyConfig, HierarchicalAgent, make_goal_policy
from skills.policies import make_train as make_policy_train
from skills.segments import (
    boundary_scores,
    fixed_length_boundaries,
    match_boundaries,
    random_boundaries,
    segment_end,
)

# a large room with few objects: skills mostly end by timeout (unpredictably), segments are long
ENV_KWARGS = {"height": 33, "width": 33, "num_objects": 3, "min_skill_len": 12, "max_skill_len": 24}
FLAT = "flat BC (the action model)"
VARIANTS = ("SBD (loss + events)", "SBD (loss)", "fixed-length", "true segments", "unsegmented")


@dataclasses.dataclass
class Args:
    out: str = "results/sbd"
    seeds: int = 5
    seed: int = 0
    env_kwargs: str = json.dumps(ENV_KWARGS)  # MultiSkill params; reveal_skill is set per arm
    num_demos: int = 1024  # expert trajectories per seed, one episode each
    eval_demos: int = 512  # of those, how many the boundary metrics score
    model: ActionModelConfig = dataclasses.field(
        default_factory=lambda: ActionModelConfig(
            embed=(48,), gru_hidden=48, head=(48,), num_updates=800, batch_size=32, lr=3e-3
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
            hidden=(128, 128), num_updates=1500, batch_size=128
        )
    )
    eval_episodes: int = 128  # per seed, for each skill and for the tour
    tour_steps: int = 192  # step budget of the ordered tour of all objects


def _demos(key: jax.Array, env: MultiSkill, params: MultiSkillParams, num: int) -> Any:
    """[num, T] expert trajectories, one episode each."""
    steps = int(params.max_steps_in_episode)
    return jax.vmap(lambda k: rollout_expert(k, env, params, steps))(jax.random.split(key, num))


def counts(predicted, true, start, tolerance):
    """Pooled BoundaryCounts over trajectories [N, T]."""
    counts = jax.vmap(lambda p, t, s: match_boundaries(p, t, tolerance, s))(predicted, true, start)
    return jax.tree.map(jnp.sum, counts)


def baseline_scores(
    true: jax.Array,
    start: jax.Array,
    keys: jax.Array,
    tolerance: int,
    fixed_lengths: tuple[int, ...],
    random_rates: tuple[float, ...],
) -> tuple[dict, dict, dict]:
    """Fixed-length and random segmentations of [S, N, T] trajectories, scored like SBD.

    Returns ``({metric: [S, L]}`` per fixed length, ``{metric: [S, R]}`` per random rate,
    ``{metric: [S]}`` random at the true boundary rate) with ``keys`` [S] drawing the random ones.
    """
    fixed = jax.vmap(
        lambda length: boundary_scores(
            jax.vmap(lambda t, s: counts(fixed_length_boundaries(length, s), t, s, tolerance))(
                true, start
            )
        )
    )(jnp.asarray(fixed_lengths))
    fixed = jax.tree.map(lambda x: np.asarray(x).T, fixed)  # [S, L]
    rand = jax.vmap(
        lambda rate: boundary_scores(
            jax.vmap(lambda k, t, s: counts(random_boundaries(k, rate, s), t, s, tolerance))(
                keys, true, start
            )
        )
    )(jnp.asarray(random_rates))
    rand = jax.tree.map(lambda x: np.asarray(x).T, rand)
    true_rate = float(np.asarray(true & ~start).mean())
    rand_at_rate = jax.device_get(
        boundary_scores(
            jax.vmap(lambda k, t, s: counts(random_boundaries(k, true_rate, s), t, s, tolerance))(
                keys, true, start
            )
        )
    )
    return fixed, rand, rand_at_rate


def _reach_events(reward: jax.Array, start: jax.Array) -> jax.Array:
    """bool [..., T]: the step after the agent reached an object (an environment event)."""
    reached = jnp.concatenate([jnp.zeros_like(reward[..., :1]), reward[..., :-1]], axis=-1) > 0
    return reached & ~start


def _goal_obs(env: MultiSkill, state, params: MultiSkillParams, obj: jax.Array) -> jax.Array:
    """The observation of ``state`` with the agent on object ``obj``: the goal of skill ``obj``."""
    return env.get_obs(state.replace(agent_pos=state.object_pos[obj]), params)


def main(args: Args) -> dict:
    t_start = time.perf_counter()
    env_kwargs = json.loads(args.env_kwargs)
    env, hidden = envs.make("MultiSkill", **env_kwargs)
    revealed = hidden.replace(reveal_skill=True)
    action_space = env.action_space(hidden)
    folder = RunFolder(
        args.out,
        {
            "experiment": "sbd",
            **{k: v for k, v in dataclasses.asdict(args).items() if k not in ("model", "policy")},
            "model": to_dict(args.model),
            "policy": to_dict(args.policy),
            "boundary": to_dict(args.boundary),
        },
    )
    folder.rewrite_metrics([])
    seeds = jax.random.split(jax.random.key(args.seed), args.seeds)
    k_data, k_model, k_seg, k_policy, k_eval = (
        jnp.stack(ks) for ks in zip(*(jax.random.split(k, 5) for k in seeds))
    )
    timing: dict[str, float] = {}

    # 1. demonstrations (the revealed arm: the same rollouts, skill id in the observation)
    tic = time.perf_counter()
    demos = jax.jit(jax.vmap(lambda k: _demos(k, env, hidden, args.num_demos)))(k_data)
    obs_revealed = jax.jit(jax.vmap(lambda k: _demos(k, env, revealed, args.num_demos).obs))(k_data)
    start = episode_starts(demos.terminated, demos.truncated)  # [S, N, T]
    true = demos.boundary
    timing["demos_s"] = time.perf_counter() - tic

    # 2. action models, hidden and revealed arms, all seeds vmapped
    model = make_action_model(args.model, action_space)
    train_model = jax.jit(jax.vmap(make_action_model_train(args.model, action_space)))
    as_transition = lambda d, obs: Transition(obs, *d[1:6])
    tic = time.perf_counter()
    params_hidden, log_hidden = jax.block_until_ready(
        train_model(k_model, as_transition(demos, demos.obs))
    )
    params_revealed, log_revealed = jax.block_until_ready(
        train_model(k_model, as_transition(demos, obs_revealed))
    )
    timing["action_model_s"] = time.perf_counter() - tic
    loss_lines = [
        {
            "stage": "action_model",
            "update": i,
            "loss_hidden": lh.tolist(),
            "loss_revealed": lr.tolist(),
        }
        for i, (lh, lr) in enumerate(
            zip(np.asarray(log_hidden["loss"]).T, np.asarray(log_revealed["loss"]).T)
        )
        if i % 10 == 0 or i == args.model.num_updates - 1
    ]
    folder.append_metrics(loss_lines)

    # 3. segmentation over a sweep of gaps (one vmapped program), scored against true switches;
    # the loss rule alone, and unioned with events (the step after an object was reached)
    def segment(params, obs, action, starts, events, config):
        step = model.step_fn(params)
        return jax.vmap(
            lambda o, a, e, s: detect_boundaries(step, model.initial_memory(), (o, a), config, e, s)
        )(obs, action, events, starts)

    m = args.eval_demos
    sweep = stack_configs([args.boundary.replace(gap=g) for g in args.gaps])
    events = _reach_events(demos.reward, start)
    no_events = jnp.zeros_like(events)

    @jax.jit
    def pr_sweep(params, obs, action, starts, events, true):
        def one_gap(config):
            seg = segment(params, obs, action, starts, events, config)
            return counts(seg.boundary, true, starts, args.tolerance), seg.boundary.mean()

        return jax.vmap(one_gap)(sweep)

    tic = time.perf_counter()
    ev = lambda x: x[:, :m]
    sweeps = {
        "loss": (params_hidden, demos.obs, no_events),
        "loss + events": (params_hidden, demos.obs, events),
        "revealed": (params_revealed, obs_revealed, no_events),
    }
    pr, boundary_rate = {}, {}
    for name, (p, obs, evs) in sweeps.items():
        counts, rate = jax.vmap(pr_sweep)(
            p, ev(obs), ev(demos.action), ev(start), ev(evs), ev(true)
        )
        pr[name] = jax.device_get(boundary_scores(counts))  # {metric: [S, G]}
        boundary_rate[name] = np.asarray(rate)
    events_only = jax.device_get(
        boundary_scores(
            jax.vmap(lambda e, t, s: counts(e | s, t, s, args.tolerance))(
                ev(events), ev(true), ev(start)
            )
        )
    )
    timing["segment_sweep_s"] = time.perf_counter() - tic

    # baselines: fixed length (every L) and random (every rate), same scoring
    fixed, rand, rand_at_rate = baseline_scores(
        ev(true), ev(start), k_seg, args.tolerance, args.fixed_lengths, args.random_rates
    )
    true_rate = float(np.asarray(ev(true) & ~ev(start)).mean())

    # spikes: per-step NLL of the plain (never reset) model at true switches vs elsewhere
    @jax.jit
    def spike(params, obs, action, starts, true):
        tm = lambda x: jnp.swapaxes(x, 0, 1)
        nll = model.nll(params, tm(obs), tm(action), tm(starts)).T
        switch = true & ~starts
        within = ~true & ~jnp.roll(true, -1, axis=-1)  # not a switch, nor the step before one
        return (nll * switch).sum() / switch.sum(), (nll * within).sum() / within.sum()

    spikes = {
        "hidden": np.asarray(
            jax.vmap(spike)(params_hidden, ev(demos.obs), ev(demos.action), ev(start), ev(true))
        ),
        "revealed": np.asarray(
            jax.vmap(spike)(
                params_revealed, ev(obs_revealed), ev(demos.action), ev(start), ev(true)
            )
        ),
    }  # [2, S]: (at switches, elsewhere)

    # 4. segment every demonstration at the chosen gap, for downstream use
    tic = time.perf_counter()
    segment_all = jax.jit(jax.vmap(lambda p, o, a, s, e: segment(p, o, a, s, e, args.boundary)))
    seg_union = segment_all(params_hidden, demos.obs, demos.action, start, events)
    seg = segment_all(params_hidden, demos.obs, demos.action, start, no_events)
    timing["segment_all_s"] = time.perf_counter() - tic
    chosen = {
        name: jax.device_get(
            boundary_scores(
                jax.vmap(lambda p, t, s: counts(p, t, s, args.tolerance))(b, true, start)
            )
        )
        for name, b in (("loss", seg.boundary), ("loss + events", seg_union.boundary))
    }
    mean_true_len = float(1.0 / max(np.asarray(true).mean(), 1e-9))
    fixed_len = max(2, round(mean_true_len))
    segmentations = jnp.stack(
        [
            seg_union.boundary,
            seg.boundary,
            fixed_length_boundaries(fixed_len, start),
            true,
            start,
        ],
        axis=1,
    )  # [S, V, N, T]
    ends = segment_end(segmentations)
    seg_lengths = {
        name: float(np.asarray(segmentations[:, i]).size / np.asarray(segmentations[:, i]).sum())
        for i, name in enumerate(VARIANTS)
    }

    # 5. goal-conditioned policies: seeds x variants in one program
    train_policy = make_policy_train(args.policy, action_space)
    tic = time.perf_counter()
    policy_params, _ = jax.block_until_ready(
        jax.jit(
            jax.vmap(
                lambda key, obs, action, next_obs, end: jax.vmap(
                    lambda k, e: train_policy(k, GoalData(obs, action, next_obs, e))
                )(jax.random.split(key, len(VARIANTS)), end)
            )
        )(k_policy, demos.obs, demos.action, demos.next_obs, ends)
    )
    timing["policies_s"] = time.perf_counter() - tic
    policy = make_goal_policy(args.policy, action_space)

    # 6. evaluation: per-skill success and the ordered tour, in episodes that outlast both
    num_objects = hidden.num_objects
    reach_steps = 2 * (hidden.height + hidden.width)
    long = hidden.replace(max_steps_in_episode=max(reach_steps, args.tour_steps) + 1)

    def skill_success(params, key):
        """Fraction of (room, object) pairs where the policy reaches the object in time."""

        def episode(key):
            key_reset, key_run = jax.random.split(key)
            _, state = env.reset(key_reset, long)

            def per_object(obj):
                goal = _goal_obs(env, state, long, obj)

                def step(carry, k):
                    st, obs, done = carry
                    action = policy.act(params, obs, goal, k, deterministic=True)
                    obs, st, *_ = env.step(k, st, action, long)
                    done = done | jnp.all(st.agent_pos == st.object_pos[obj])
                    return (st, obs, done), None

                obs = env.get_obs(state, long)
                (_, _, done), _ = jax.lax.scan(
                    step, (state, obs, jnp.array(False)), jax.random.split(key_run, reach_steps)
                )
                return done

            return jax.vmap(per_object)(jnp.arange(num_objects))

        return jax.vmap(episode)(jax.random.split(key, args.eval_episodes)).mean(0)  # [K]

    def tour(params, key, flat_params=None):
        """Objects reached in a random order (all of them), in order, within the budget."""
        agent = HierarchicalAgent(policy)

        def episode(key):
            key_reset, key_order, key_run = jax.random.split(key, 3)
            obs, state = env.reset(key_reset, long)
            order = jax.random.permutation(key_order, num_objects)
            plan = jax.vmap(lambda o: _goal_obs(env, state, long, o))(order)

            def step(carry, k):
                st, obs, index, progress, memory = carry
                if flat_params is None:
                    index, action = agent.act(params, plan, index, obs, k)
                else:  # flat BC: the unconditional action model, sampled
                    memory, pi = model.network.apply(
                        flat_params, memory[None], obs[None, None], jnp.zeros((1, 1), bool)
                    )
                    memory, action = memory[0], pi.sample(seed=k)[0, 0]
                obs, st, *_ = env.step(k, st, action, long)
                target = st.object_pos[order[jnp.minimum(progress, num_objects - 1)]]
                arrived = (progress < num_objects) & jnp.all(st.agent_pos == target)
                return (st, obs, index, progress + arrived, memory), None

            init = (state, obs, jnp.int32(0), jnp.int32(0), model.initial_memory())
            (_, _, _, progress, _), _ = jax.lax.scan(
                step, init, jax.random.split(key_run, args.tour_steps)
            )
            return progress

        progress = jax.vmap(episode)(jax.random.split(key, args.eval_episodes))
        return (progress == num_objects).mean(), progress.mean() / num_objects

    tic = time.perf_counter()
    success = jax.jit(jax.vmap(jax.vmap(skill_success, in_axes=(0, None))))(
        policy_params, k_eval
    )  # [S, V, K]
    tour_hier = jax.jit(jax.vmap(jax.vmap(tour, in_axes=(0, None))))(policy_params, k_eval)
    tour_flat = jax.jit(jax.vmap(lambda p, k: tour(None, k, p)))(params_hidden, k_eval)
    timing["evaluation_s"] = time.perf_counter() - tic

    # 7. aggregate, log, plot, summarise
    arrays = lambda d: {k: np.asarray(v).tolist() for k, v in d.items()}
    results: dict[str, Any] = {
        "true_boundary_rate": true_rate,
        "mean_true_segment_length": mean_true_len,
        "fixed_length_used_downstream": fixed_len,
        "segment_lengths": seg_lengths,
        "gaps": list(args.gaps),
        "chosen_gap": float(args.boundary.gap),
        "chosen": {arm: {k: iqm_ci(v) for k, v in c.items()} for arm, c in chosen.items()},
        "chosen_per_seed": {arm: arrays(c) for arm, c in chosen.items()},
        "pr": {arm: arrays(c) for arm, c in pr.items()},
        "best_gap_f1": {arm: iqm_ci(c["f1"].max(1)) for arm, c in pr.items()},
        "events_only": {k: iqm_ci(v) for k, v in events_only.items()},
        "fixed_pr": arrays(fixed),
        "fixed_best_f1": iqm_ci(fixed["f1"].max(1)),
        "fixed_best_length": int(args.fixed_lengths[int(np.argmax(np.median(fixed["f1"], 0)))]),
        "random_pr": arrays(rand),
        "random_at_true_rate": {k: iqm_ci(v) for k, v in rand_at_rate.items()},
        "random_best_f1": iqm_ci(rand["f1"].max(1)),
        "nll_at_switch": {k: iqm_ci(v[0]) for k, v in spikes.items()},
        "nll_elsewhere": {k: iqm_ci(v[1]) for k, v in spikes.items()},
        "spike": {k: iqm_ci(v[0] - v[1]) for k, v in spikes.items()},
        "skill_success": {
            name: iqm_ci(np.asarray(success[:, i]).mean(-1)) for i, name in enumerate(VARIANTS)
        },
        "tour_success": {
            **{name: iqm_ci(np.asarray(tour_hier[0][:, i])) for i, name in enumerate(VARIANTS)},
            FLAT: iqm_ci(np.asarray(tour_flat[0])),
        },
        "tour_progress": {
            **{name: iqm_ci(np.asarray(tour_hier[1][:, i])) for i, name in enumerate(VARIANTS)},
            FLAT: iqm_ci(np.asarray(tour_flat[1])),
        },
        "per_seed": {
            "skill_success": np.asarray(success).mean(-1).tolist(),
            "tour_success": np.asarray(tour_hier[0]).tolist(),
            "tour_flat": np.asarray(tour_flat[0]).tolist(),
        },
        "timing": {**timing, "wall_s": time.perf_counter() - t_start},
    }
    folder.append_metrics(
        [
            {
                "stage": "pr_curve",
                "gap": float(g),
                **{
                    f"{arm}/{k}": np.asarray(v)[:, i].tolist()
                    for arm, c in pr.items()
                    for k, v in c.items()
                },
                **{f"{arm}/boundary_rate": r[:, i].tolist() for arm, r in boundary_rate.items()},
            }
            for i, g in enumerate(args.gaps)
        ]
    )
    example = (demos.boundary[0, 0], start[0, 0], seg.nll[0, 0], seg.boundary[0, 0])
    _plots(folder.path, args, results, jax.device_get(example))
    (folder.path / "results.json").write_text(json.dumps(results, indent=2))
    summary = _summary(args, results)
    (folder.path / "summary.md").write_text(summary)
    print(summary)
    return results


def _revealed_rows(r: dict) -> list[str]:
    """The negative control at the chosen gap (if it is one of the swept gaps)."""
    if r["chosen_gap"] not in r["gaps"]:
        return []
    i = r["gaps"].index(r["chosen_gap"])
    c = {k: iqm_ci(np.asarray(v)[:, i]) for k, v in r["pr"]["revealed"].items()}
    return [
        f"| negative control: skill id revealed (loss), gap {r['chosen_gap']:g} | "
        f"{fmt_ci(c['precision'])} | {fmt_ci(c['recall'])} | {fmt_ci(c['f1'])} |"
    ]


def _summary(args: Args, r: dict) -> str:
    lines = [
        f"# Skill-boundary detection on MultiSkill ({args.seeds} seeds, IQM [95% CI])",
        "",
        f"{args.num_demos} expert trajectories per seed, env {args.env_kwargs}; true switches "
        f"at {r['true_boundary_rate']:.3f} of steps (mean segment "
        f"{r['mean_true_segment_length']:.1f} steps). Boundaries match within "
        f"+-{args.tolerance} steps, one-to-one; scored on {args.eval_demos} trajectories/seed.",
        "",
        "| segmentation | precision | recall | F1 |",
        "|---|---|---|---|",
    ]
    for arm in ("loss", "loss + events"):
        c = r["chosen"][arm]
        lines.append(
            f"| SBD ({arm}), gap {r['chosen_gap']:g} | {fmt_ci(c['precision'])} | "
            f"{fmt_ci(c['recall'])} | {fmt_ci(c['f1'])} |"
        )
    e, rr = r["events_only"], r["random_at_true_rate"]
    lines += [
        f"| events only | {fmt_ci(e['precision'])} | {fmt_ci(e['recall'])} | {fmt_ci(e['f1'])} |",
        f"| SBD (loss), best gap per seed (oracle) | | | {fmt_ci(r['best_gap_f1']['loss'])} |",
        f"| fixed length, best length per seed (oracle; median best {r['fixed_best_length']}) "
        f"| | | {fmt_ci(r['fixed_best_f1'])} |",
        f"| random at the true rate (oracle) | {fmt_ci(rr['precision'])} | "
        f"{fmt_ci(rr['recall'])} | {fmt_ci(rr['f1'])} |",
        f"| random, best rate per seed (oracle) | | | {fmt_ci(r['random_best_f1'])} |",
        f"| SBD (loss + events), best gap per seed (oracle) | | | "
        f"{fmt_ci(r['best_gap_f1']['loss + events'])} |",
        *_revealed_rows(r),
        f"| negative control: skill id revealed (loss), best gap per seed (oracle) | | | "
        f"{fmt_ci(r['best_gap_f1']['revealed'])} |",
        "",
        "| action model | NLL at true switches | NLL elsewhere | spike |",
        "|---|---|---|---|",
    ]
    for arm in ("hidden", "revealed"):
        lines.append(
            f"| skill {arm} | {fmt_ci(r['nll_at_switch'][arm])} | "
            f"{fmt_ci(r['nll_elsewhere'][arm])} | {fmt_ci(r['spike'][arm])} |"
        )
    lines += [
        "",
        "| goal-conditioned policy trained on | mean segment | per-skill success | "
        "hierarchical tour: success | tour: objects reached |",
        "|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        label = name + (
            f" (L = {r['fixed_length_used_downstream']})" if name == "fixed-length" else ""
        )
        lines.append(
            f"| {label} | {r['segment_lengths'][name]:.1f} | {fmt_ci(r['skill_success'][name])} | "
            f"{fmt_ci(r['tour_success'][name])} | {fmt_ci(r['tour_progress'][name])} |"
        )
    lines += [
        f"| {FLAT} | | | {fmt_ci(r['tour_success'][FLAT])} | {fmt_ci(r['tour_progress'][FLAT])} |",
        "",
        "Timing (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["timing"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def _plots(path: Path, args: Args, r: dict, data: Any = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    iqm = lambda x: stats.trim_mean(np.asarray(x), 0.25, axis=0)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    curves = {
        "SBD, loss (gap sweep)": (r["pr"]["loss"], "o-"),
        "SBD, loss + events (gap sweep)": (r["pr"]["loss + events"], "d-"),
        "skill revealed (gap sweep)": (r["pr"]["revealed"], "s--"),
        "fixed length (length sweep)": (r["fixed_pr"], "^:"),
        "random (rate sweep)": (r["random_pr"], "x:"),
    }
    for name, (c, style) in curves.items():
        ax.plot(iqm(c["recall"]), iqm(c["precision"]), style, label=name)
    e = r["events_only"]
    ax.plot([e["recall"][0]], [e["precision"][0]], "k*", ms=10, label="events only")
    ax.set_xlabel(f"recall (+-{args.tolerance} steps)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Boundary precision-recall, IQM over {args.seeds} seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path / "pr_curve.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"loss": "SBD (loss)", "loss + events": "SBD (loss + events)"}
    for arm, style in (("loss", "o-"), ("loss + events", "d-"), ("revealed", "s--")):
        f1 = np.asarray(r["pr"][arm]["f1"])
        ax.plot(args.gaps, iqm(f1), style, label=labels.get(arm, "skill revealed (loss)"))
        ax.fill_between(args.gaps, *np.percentile(f1, [25, 75], axis=0), alpha=0.2)
    ax.axhline(r["fixed_best_f1"][0], color="gray", ls=":", label="fixed length (best)")
    ax.axhline(r["random_best_f1"][0], color="k", ls=":", label="random (best rate)")
    ax.set_xscale("log")
    ax.set_xticks(args.gaps, [f"{g:g}" for g in args.gaps], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("gap (nats)")
    ax.set_ylabel("F1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path / "f1_vs_gap.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in (
        (axes[0], "skill_success", "per-skill success"),
        (axes[1], "tour_success", "ordered tour success"),
    ):
        names = list(r[key])
        vals = np.array([r[key][n] for n in names])
        ax.bar(
            range(len(names)), vals[:, 0], yerr=[vals[:, 0] - vals[:, 1], vals[:, 2] - vals[:, 0]]
        )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"{title} (IQM, 95% CI)")
    fig.tight_layout()
    fig.savefig(path / "downstream.png", dpi=120)
    plt.close(fig)

    if data is None:  # replotting from results.json: no example trajectory
        return
    true, start, nll, detected = data  # an example trajectory of seed 0
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.plot(np.arange(nll.shape[0]), nll, label="NLL (memory reset at detected boundaries)")
    for i, b in enumerate(np.flatnonzero(true & ~start)):
        ax.axvline(b, color="g", alpha=0.6, label="true switch" if i == 0 else None)
    for i, b in enumerate(np.flatnonzero(detected & ~start)):
        ax.axvline(b, color="r", ls="--", alpha=0.8, label="detected" if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("nats")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path / "example_trajectory.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(Args))
