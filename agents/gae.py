"""Generalised advantage estimation that bootstraps through truncation."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
    gae_lambda: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Advantages and value targets for a rollout, time-major.

    ``next_values[t]`` is the value of the observation reached at step t *before* any
    auto-reset (``info["final_observation"]``), so a truncated step bootstraps from the
    state it was cut off in, a terminated step does not bootstrap, and no trace crosses
    an episode boundary.

    Args: rewards, values, next_values, terminated, truncated: [T, ...].
    Returns: (advantages [T, ...], targets [T, ...]).
    """
    terminated = terminated.astype(jnp.float32)
    done = jnp.maximum(terminated, truncated.astype(jnp.float32))
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values

    def backward(acc, inp):
        delta, d = inp
        acc = delta + gamma * gae_lambda * (1.0 - d) * acc
        return acc, acc

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, done), reverse=True)
    return advantages, advantages + values
