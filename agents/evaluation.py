"""Vmapped policy evaluation over whole episodes, bounded so it can never hang; continual
learning's transfer metrics of a return matrix; a two-sample distance (MMD)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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


def transfer_metrics(scores: Any, single: Any = None) -> dict[str, np.ndarray]:
    """Continual-learning summaries of R = ``scores`` [..., T, T] (R[i, j]: on task j after
    learning task i): ``average`` (mean of the last row), ``bwt`` (mean over i < T-1 of
    R[T-1, i] - R[i, i]), ``forgetting`` (mean over i < T-1 of max_{i <= k < T-1} R[k, i] -
    R[T-1, i]) and, given single-task scores ``single`` [..., T], ``fwt`` (mean R[i, i] -
    single[i]). Each [...]."""
    r = np.asarray(scores, np.float64)
    num = r.shape[-1]
    diag = np.diagonal(r, axis1=-2, axis2=-1)  # [..., T]
    last = r[..., -1, :]
    out = {"average": last.mean(-1)}
    if num > 1:
        out["bwt"] = (last - diag)[..., :-1].mean(-1)
        since = np.where(np.tri(num, dtype=bool), r, -np.inf)  # R[k, i] for k >= i
        best = since[..., :-1, :].max(-2)  # [..., T]: max over i <= k < T-1
        out["forgetting"] = (best - last)[..., :-1].mean(-1)
    if single is not None:
        out["fwt"] = (diag - np.asarray(single, np.float64)).mean(-1)
    return out


def sq_distances(x: jax.Array, y: jax.Array) -> jax.Array:
    """Squared Euclidean distances [N, M] between the rows of x [N, D] and y [M, D] (no
    [N, M, D] intermediate)."""
    sx, sy = jnp.square(x).sum(-1), jnp.square(y).sum(-1)
    return jnp.maximum(sx[:, None] + sy[None] - 2 * x @ y.T, 0.0)


def mmd(x: jax.Array, y: jax.Array, bandwidth: float | None = None) -> jax.Array:
    """Squared maximum mean discrepancy (biased) between samples x [n, D] and y [m, D] with a
    Gaussian kernel; ``bandwidth`` defaults to the median pairwise distance of both."""
    z = jnp.concatenate([x, y])
    d2 = sq_distances(z, z)  # [n + m, n + m]
    h2 = jnp.median(d2) if bandwidth is None else bandwidth**2
    k = jnp.exp(-d2 / jnp.maximum(h2, 1e-12))
    n = x.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()
