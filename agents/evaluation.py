"""Vmapped policy evaluation over whole episodes, bounded so it can never hang."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# act(carry [B, H], obs [B, D], resets [B], key) -> (carry, action [B, ...])
ActFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def evaluate(
    key: jax.Array,
    env: Any,
    env_params: Any,
    act: ActFn,
    initial_carry: jax.Array,
    num_steps: int | None = None,
) -> dict[str, jax.Array]:
    """Run one episode in each of ``initial_carry.shape[0]`` envs for at most ``num_steps`` steps.

    Returns ``return`` and ``length`` [B] of each env's first episode, and ``finished`` [B]
    (False where the episode was still running after ``num_steps``; its partial return is kept).
    """
    num_envs = initial_carry.shape[0]
    num_steps = int(env_params.max_steps_in_episode) if num_steps is None else num_steps
    key, k_reset = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(k_reset, num_envs), env_params
    )

    def step(carry, key):
        memory, obs, state, resets, running, ret, length = carry
        k_act, k_env = jax.random.split(key)
        memory, action = act(memory, obs, resets, k_act)
        obs, state, reward, term, trunc, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, num_envs), state, action, env_params
        )
        ret = ret + reward * running
        length = length + running
        running = running & ~(term | trunc)
        return (memory, obs, state, term | trunc, running, ret, length), None

    resets = jnp.ones((num_envs,), bool)
    init = (
        initial_carry,
        obs,
        state,
        resets,
        resets,
        jnp.zeros(num_envs),
        jnp.zeros(num_envs, jnp.int32),
    )
    (_, _, _, _, running, ret, length), _ = jax.lax.scan(
        step, init, jax.random.split(key, num_steps)
    )
    return {"return": ret, "length": length, "finished": ~running}
