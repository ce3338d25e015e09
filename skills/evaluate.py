"""Skill-boundary detection on the multi-skill gridworld, and what its segments are good for:
reaching goals and touring objects.

A goal is the observation with the agent standing on an object (``goal_obs``). ``skill_success``
asks a goal-conditioned policy (``skills.policies.goal_policy``) to reach each object of fresh
rooms; ``tour`` asks any policy to visit every object in a random given order, handing a
hierarchical policy (``skills.policies.hierarchical_policy``) the order as its plan. One episode
per key; vmap over seeds and policies.

    success = skill_success(key, env, env_params, policy, params, 128, num_steps=132)   # [K]
    rate, progress = tour(key, env, env_params, hierarchical, params, 128, num_steps=192)
    scores = goal_policy_scores(config, env, env_params, demos, segmentations, keys, keys, 128, 192)
    keys = {stage: jax.random.split(jax.random.key(i), 5) for i, stage in enumerate(STAGES)}
    run = evaluate_sbd(MultiSkillSBDConfig(), env, env_params, keys)          # 5 seeds

``evaluate_sbd`` is the whole study for all seeds at once: scripted-expert demonstrations with
hidden skill switches, unconditional action models (the skill hidden, and revealed as a negative
control), a sweep of the loss-gap rule (also unioned with reach events) scored beside the
fixed-length and random baselines, and goal-conditioned policies trained on the SBD,
fixed-length, true and no segments, sequenced on tours against flat behaviour cloning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agents.core import Policy
from agents.hparams import require, stack_configs
from agents.replay import Transition
from envs.gridworlds.multi_skill import (
    Demonstrations,
    MultiSkill,
    MultiSkillParams,
    MultiSkillState,
    check_params,
    rollout_expert,
)
from skills import sbd
from skills.action_model import ActionModelConfig, episode_starts
from skills.boundary import BoundaryConfig, Segmentation
from skills.policies import GoalPolicyConfig, Plan, goal_policy, hierarchical_policy, set_plan
from skills.sbd import train_goal_policies
from skills.segments import fixed_length_boundaries, segment_end

__all__ = [
    "FLAT",
    "STAGES",
    "VARIANTS",
    "MultiSkillSBDConfig",
    "SBDEvaluation",
    "evaluate_sbd",
    "goal_obs",
    "goal_policy_scores",
    "reach_events",
    "skill_success",
    "tour",
]


def goal_obs(
    env: MultiSkill, state: MultiSkillState, params: MultiSkillParams, obj: jax.Array
) -> jax.Array:
    """The observation of ``state`` with the agent on object ``obj``: the goal of skill ``obj``."""
    return env.get_obs(state.replace(agent_pos=state.object_pos[obj]), params)


def reach_events(reward: jax.Array, start: jax.Array) -> jax.Array:
    """bool [..., T]: the step after the agent reached an object (an environment event), except
    at episode starts ``start`` [..., T]."""
    reached = jnp.concatenate([jnp.zeros_like(reward[..., :1]), reward[..., :-1]], axis=-1) > 0
    return reached & ~start


def _act_one(policy: Policy, params: Any, carry: Any, obs: jax.Array, key: jax.Array, det: bool):
    """``policy.act`` on one observation [D] -> (carry, action)."""
    carry, action = policy.act(params, carry, obs[None], key, det)
    return carry, action[0]


def skill_success(
    key: jax.Array,
    env: MultiSkill,
    env_params: MultiSkillParams,
    policy: Policy,
    params: Any,
    num_episodes: int,
    num_steps: int,
) -> jax.Array:
    """[K]: per object, the fraction of rooms in which the goal-conditioned ``policy`` (greedy,
    ``obs`` = [observation, goal]) stands on it within ``num_steps``."""
    env_params = env_params.replace(max_steps_in_episode=num_steps + 1)  # no reset in between

    def episode(key):
        key_reset, key_run = jax.random.split(key)
        _, state = env.reset(key_reset, env_params)

        def per_object(obj):
            goal = goal_obs(env, state, env_params, obj)

            def step(carry, k):
                st, obs, done, memory = carry
                obs_goal = jnp.concatenate([obs, goal])
                memory, action = _act_one(policy, params, memory, obs_goal, k, True)
                obs, st, *_ = env.step(k, st, action, env_params)
                done = done | jnp.all(st.agent_pos == st.object_pos[obj])
                return (st, obs, done, memory), None

            obs = env.get_obs(state, env_params)
            init = (state, obs, jnp.array(False), policy.initial_carry(1))
            (_, _, done, _), _ = jax.lax.scan(step, init, jax.random.split(key_run, num_steps))
            return done

        return jax.vmap(per_object)(jnp.arange(env_params.num_objects))

    return jax.vmap(episode)(jax.random.split(key, num_episodes)).mean(0)


def tour(
    key: jax.Array,
    env: MultiSkill,
    env_params: MultiSkillParams,
    policy: Policy,
    params: Any,
    num_episodes: int,
    num_steps: int,
    deterministic: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Visit every object in a random order within ``num_steps``: (fraction of episodes that
    reach all of them in order [], mean fraction reached in order []).

    A policy whose carry is a ``skills.policies.Plan`` gets the order's goal observations as its
    plan; any other policy (e.g. flat BC) acts on the plain observation.
    """
    num_objects = env_params.num_objects
    env_params = env_params.replace(max_steps_in_episode=num_steps + 1)  # no reset in between

    def episode(key):
        key_reset, key_order, key_run = jax.random.split(key, 3)
        obs, state = env.reset(key_reset, env_params)
        order = jax.random.permutation(key_order, num_objects)
        memory = policy.initial_carry(1)
        if isinstance(memory, Plan):
            plan = jax.vmap(lambda o: goal_obs(env, state, env_params, o))(order)
            memory = set_plan(memory, plan[None])

        def step(carry, k):
            st, obs, progress, memory = carry
            memory, action = _act_one(policy, params, memory, obs, k, deterministic)
            obs, st, *_ = env.step(k, st, action, env_params)
            target = st.object_pos[order[jnp.minimum(progress, num_objects - 1)]]
            arrived = (progress < num_objects) & jnp.all(st.agent_pos == target)
            return (st, obs, progress + arrived, memory), None

        init = (state, obs, jnp.int32(0), memory)
        (_, _, progress, _), _ = jax.lax.scan(step, init, jax.random.split(key_run, num_steps))
        return progress

    progress = jax.vmap(episode)(jax.random.split(key, num_episodes))
    return (progress == num_objects).mean(), progress.mean() / num_objects


def goal_policy_scores(
    config: GoalPolicyConfig,
    env: MultiSkill,
    env_params: MultiSkillParams,
    demos: Any,
    segmentations: jax.Array,
    train_keys: jax.Array,
    eval_keys: jax.Array,
    num_episodes: int,
    tour_steps: int,
) -> dict[str, jax.Array]:
    """What each segmentation is worth downstream, for every seed in one program.

    Goal-conditioned policies are trained on each seed's ``demos`` [S, N, T, ...] (anything with
    ``obs``, ``action`` and ``next_obs``) under each segmentation (bool [S, V, N, T]; hindsight
    goals, ``train_keys`` [S]) and evaluated (``eval_keys`` [S]): ``skill_success`` [S, V] (mean
    over objects, each reached within ``2 (height + width)`` steps), and ``tour_success`` and
    ``tour_progress`` [S, V] of the hierarchical policy on the ordered tour of ``tour_steps``.
    """
    space = env.action_space(env_params)
    ends = segment_end(segmentations)
    params = train_goal_policies(config, space, demos, ends, train_keys)  # [S, V, ...]
    policy = goal_policy(int(space.n), True, config.hidden, config.activation)
    planner = hierarchical_policy(policy.spec, env_params.num_objects, demos.obs.shape[-1])
    reach_steps = 2 * (env_params.height + env_params.width)
    per_policy = lambda f: jax.jit(jax.vmap(jax.vmap(f, in_axes=(0, None))))(params, eval_keys)
    success = per_policy(
        lambda p, k: skill_success(k, env, env_params, policy, p, num_episodes, reach_steps)
    )
    rate, progress = per_policy(
        lambda p, k: tour(k, env, env_params, planner, p, num_episodes, tour_steps)
    )
    return {"skill_success": success.mean(-1), "tour_success": rate, "tour_progress": progress}


#: the stages of ``evaluate_sbd`` that draw randomness, each given its own [S] seed keys
STAGES = ("demos", "action_model", "baselines", "goal_policies", "evaluate")
#: the segmentations goal-conditioned policies train on, in ``evaluate_sbd``'s order
VARIANTS = ("SBD (loss + events)", "SBD (loss)", "fixed-length", "true segments", "unsegmented")
FLAT = "flat BC (the action model)"


@dataclasses.dataclass
class MultiSkillSBDConfig:
    """``evaluate_sbd``'s settings (defaults: the CPU scale of the gridworld SBD study)."""

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

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        require(
            1 <= self.eval_demos <= self.num_demos,
            f"need 1 <= eval_demos={self.eval_demos} <= num_demos={self.num_demos}",
        )
        require(self.tolerance >= 0, f"tolerance must be >= 0, got {self.tolerance}")
        require(
            self.eval_episodes >= 1 and self.tour_steps >= 1,
            f"eval_episodes={self.eval_episodes} and tour_steps={self.tour_steps} must be >= 1",
        )
        for part in (self.model, self.boundary, self.policy):
            part.validate()


class SBDEvaluation(NamedTuple):
    """What ``evaluate_sbd`` measured, per seed (leading axis S)."""

    demos: Demonstrations  # [S, N, T]
    start: jax.Array  # bool [S, N, T]: episode starts
    scores: dict[str, Any]  # per-seed scores, see ``evaluate_sbd``
    segmentations: dict[str, jax.Array]  # {variant: bool [S, N, T]}, ``VARIANTS``
    sbd: Segmentation  # the loss rule at the chosen gap [S, N, T]
    mean_true_length: float  # steps per true segment
    fixed_length: int  # the fixed-length variant's length: the mean true segment, rounded
    loss: dict[str, np.ndarray]  # {"hidden" | "revealed": action-model loss [S, total_steps]}
    downstream: dict[str, jax.Array]  # ``goal_policy_scores``' [S, V] and ``tour_flat`` [S]


def evaluate_sbd(
    config: MultiSkillSBDConfig,
    env: MultiSkill,
    env_params: MultiSkillParams,
    keys: Mapping[str, jax.Array],
    lap: Callable[[str], Any] | None = None,
) -> SBDEvaluation:
    """The gridworld SBD study for S seeds in one program per stage (``keys``: {stage: [S]}
    for every one of ``STAGES``; ``lap(stage_s)`` is called as each stage ends).

    ``scores``: ``chosen`` and ``events_only`` (``segmentation_scores`` [S] of the loss rule at
    the chosen gap with and without events, and of events alone), ``skills.sbd.detection_scores``
    of the arms "loss", "loss + events" and "revealed" (on the first ``eval_demos``
    trajectories), ``nll_spikes`` entries {view: [S]}, and ``skill_success``, ``tour_success``
    and ``tour_progress`` {variant: [S]} (the tours also of ``FLAT``, the action model sampled).
    """
    config.validate()
    sbd.check_stage_keys(keys, STAGES, "evaluate_sbd")
    lap = lap or (lambda stage: None)
    space, steps = env.action_space(env_params), int(env_params.max_steps_in_episode)
    tol = config.tolerance

    # 1. demonstrations (the revealed view: the same rollouts, skill id in the observation)
    @jax.jit
    def expert(params, keys):  # [S, N, T] expert trajectories, one episode each
        rollouts = lambda k: rollout_expert(k, env, params, steps)
        return jax.vmap(lambda k: jax.vmap(rollouts)(jax.random.split(k, config.num_demos)))(keys)

    check_params(env_params)  # before compiling: traced params are not checked
    demos = expert(env_params, keys["demos"])
    revealed = expert(env_params.replace(reveal_skill=True), keys["demos"]).obs
    obs = {"hidden": demos.obs, "revealed": revealed}
    start, true = episode_starts(demos.terminated, demos.truncated), demos.boundary
    lap("demos_s")

    # 2. action models, hidden and revealed views, all seeds in one program
    model, params, loss = sbd.action_models(
        config.model, space, Transition(*demos[:6]), obs, keys["action_model"]
    )
    lap("action_model_s")

    # 3. a gap sweep on the first eval_demos trajectories: the loss rule, the loss rule unioned
    # with events (the step after an object was reached), and the negative control
    ev = lambda x: x[:, : config.eval_demos]
    events = reach_events(demos.reward, start)
    no_events = jnp.zeros_like(events)
    sweep = stack_configs([config.boundary.replace(gap=g) for g in config.gaps])
    arms = {"loss": ("hidden", no_events), "loss + events": ("hidden", events)}
    arms["revealed"] = ("revealed", no_events)
    swept = {
        name: sbd.sweep_boundaries(
            model, params[a], ev(obs[a]), ev(demos.action), ev(start), sweep, ev(e)
        )
        for name, (a, e) in arms.items()
    }
    lap("segment_sweep_s")
    baselines = (keys["baselines"], tol, config.fixed_lengths, config.random_rates)
    detection = sbd.detection_scores(swept, ev(true), ev(start), *baselines)
    nll = {
        a: sbd.plain_nll(model, params[a], ev(o), ev(demos.action), ev(start))
        for a, o in obs.items()
    }
    spikes = {arm: sbd.nll_spikes(v, ev(true), ev(start)) for arm, v in nll.items()}

    # 4. every demonstration segmented at the chosen gap, for downstream use
    segment = lambda e: sbd.segment_seeds(
        model, params["hidden"], demos.obs, demos.action, start, config.boundary, e
    )
    seg = {"loss": segment(no_events), "loss + events": segment(events)}
    lap("segment_all_s")
    mean_true_len = float(1.0 / max(np.asarray(true).mean(), 1e-9))
    fixed_len = max(2, round(mean_true_len))
    fixed_seg = fixed_length_boundaries(fixed_len, start)
    segmentations = [seg["loss + events"].boundary, seg["loss"].boundary, fixed_seg, true, start]

    # 5. goal-conditioned policies on each segmentation, per-skill success and ordered tours;
    # flat BC (the action model, sampled) on the same tours
    downstream = goal_policy_scores(
        config.policy, env, env_params, demos, jnp.stack(segmentations, axis=1),
        keys["goal_policies"], keys["evaluate"], config.eval_episodes, config.tour_steps,
    )  # fmt: skip
    flat_tour = lambda p, k: tour(
        k, env, env_params, model.policy, p, config.eval_episodes, config.tour_steps, False
    )
    flat = jax.jit(jax.vmap(flat_tour))(params["hidden"], keys["evaluate"])
    lap("downstream_s")

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
    segmentations = dict(zip(VARIANTS, segmentations))
    downstream = {**downstream, "tour_flat": flat[0]}
    return SBDEvaluation(
        demos, start, scores, segmentations, seg["loss"], mean_true_len, fixed_len, loss, downstream
    )
