"""Vmapped policy evaluation over whole episodes, bounded so it can never hang."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from agents.core import Params, Policy


def evaluate(
    key: jax.Array,
    env: Any,
    env_params: Any,
    policy: Policy,
    params: Params,
    num_episodes: int,
    deterministic: bool = True,
    num_steps: int | None = None,
) -> dict[str, jax.Array]:
    """One episode in each of ``num_episodes`` envs, for at most ``num_steps`` steps.

    Returns ``return`` and ``length`` [num_episodes] of each env's first episode, and
    ``finished`` [num_episodes] (False where the episode was still running after ``num_steps``
    (default: the env's ``max_steps_in_episode``); its partial return is kept); and ``cost``
    [num_episodes], the sum of ``info["cost"]`` where the env reports one (safe RL).
    """
    num_steps = int(env_params.max_steps_in_episode) if num_steps is None else num_steps
    key, k_reset = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(k_reset, num_episodes), env_params
    )

    def step(carry, key):
        memory, obs, state, running, ret, cost, length = carry
        k_act, k_env = jax.random.split(key)
        memory, action = policy.act(params, memory, obs, k_act, deterministic)
        obs, state, reward, term, trunc, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, num_episodes), state, action, env_params
        )
        ret = ret + reward * running
        cost = cost + info.get("cost", jnp.zeros_like(reward)) * running
        length = length + running
        running = running & ~(term | trunc)
        return (memory, obs, state, running, ret, cost, length), None

    init = (
        policy.initial_carry(num_episodes),
        obs,
        state,
        jnp.ones((num_episodes,), bool),
        jnp.zeros(num_episodes),
        jnp.zeros(num_episodes),
        jnp.zeros(num_episodes, jnp.int32),
    )
    (_, _, _, running, ret, cost, length), _ = jax.lax.scan(
        step, init, jax.random.split(key, num_steps)
    )
    return {"return": ret, "cost": cost, "length": length, "finished": ~running}


def record(
    key: jax.Array,
    env: Any,
    env_params: Any,
    policy: Policy,
    params: Params,
    num_steps: int,
    deterministic: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Frames (uint8 [num_steps + 1, H, W, 3], ``env.render``) of one env acted in by ``policy``
    from a reset (an episode that ends restarts, as the env's ``step`` does), and the rewards
    [num_steps]."""
    key, k_reset = jax.random.split(key)
    obs, state = env.reset(k_reset, env_params)

    def step(carry, key):
        memory, obs, state = carry
        k_act, k_env = jax.random.split(key)
        memory, action = policy.act(params, memory, obs[None], k_act, deterministic)
        obs, state, reward, *_ = env.step(k_env, state, action[0], env_params)
        return (memory, obs, state), (env.render(state, env_params), reward)

    init = (policy.initial_carry(1), obs, state)
    _, (frames, rewards) = jax.lax.scan(step, init, jax.random.split(key, num_steps))
    return jnp.concatenate([env.render(state, env_params)[None], frames]), rewards
