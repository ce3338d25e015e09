"""What segments are good for, on the multi-skill gridworld: reaching goals and touring objects.

A goal is the observation with the agent standing on an object (``goal_obs``). ``skill_success``
asks a goal-conditioned policy (``skills.policies.goal_policy``) to reach each object of fresh
rooms; ``tour`` asks any policy to visit every object in a random given order, handing a
hierarchical policy (``skills.policies.hierarchical_policy``) the order as its plan. One episode
per key; vmap over seeds and policies.

    success = skill_success(key, env, env_params, policy, params, 128, num_steps=132)   # [K]
    rate, progress = tour(key, env, env_params, hierarchical, params, 128, num_steps=192)
    scores = goal_policy_scores(config, env, env_params, demos, segmentations, keys, keys, 128, 192)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from agents.core import Policy
from envs.gridworlds.multi_skill import MultiSkill, MultiSkillParams, MultiSkillState
from skills.policies import GoalPolicyConfig, Plan, goal_policy, hierarchical_policy, set_plan
from skills.sbd import train_goal_policies
from skills.segments import segment_end

__all__ = ["goal_obs", "goal_policy_scores", "reach_events", "skill_success", "tour"]


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
