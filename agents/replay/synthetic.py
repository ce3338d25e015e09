"""Transitions as flat vectors ``[s, a, r, s', terminated]``: what SynthER's diffusion model fits.

    obs_dim, act_dim = check_transitions(data)        # data: Transition [N], checked
    x = transitions_to_vectors(data)                  # [N, 2 obs_dim + act_dim + 2]
    back = vectors_to_transitions(x, obs_dim)         # terminal flags: x[:, -1] > 0.5

Pure data conversions (numpy in, numpy out; jax in, jax out); the model, upsampling and online
SynthER live in ``agents.synther``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agents.hparams import require
from agents.replay import Transition
from envs.core import is_concrete

__all__ = ["check_transitions", "transitions_to_vectors", "vectors_to_transitions"]


def check_transitions(data: Transition, what: str = "transitions") -> tuple[int, int]:
    """Raise a ValueError unless ``data`` is a non-empty, finite flat batch of continuous-action
    transitions; return (obs_dim, act_dim)."""
    require(isinstance(data, Transition), f"{what} must be an agents.replay.Transition")
    shapes = {k: tuple(np.shape(v)) for k, v in data._asdict().items()}
    n = shapes["reward"][:1]
    require(
        len(shapes["reward"]) == 1 and n[0] >= 1,
        f"{what}: reward must be [N] with N >= 1 (a flat batch), got {shapes['reward']}; "
        "reshape time-major [T, E] data to [T * E]",
    )
    obs_dim = shapes["obs"][1:]
    require(
        len(shapes["obs"]) == 2 and shapes["next_obs"] == shapes["obs"],
        f"{what}: obs and next_obs must both be [N, obs_dim], got {shapes['obs']} and "
        f"{shapes['next_obs']}",
    )
    require(
        len(shapes["action"]) == 2,
        f"{what}: action must be [N, act_dim] (continuous actions), got {shapes['action']}",
    )
    for k, shape in shapes.items():
        require(shape[:1] == n, f"{what}: {k} has {shape[:1]} rows, reward has {n}")
    for k, v in data._asdict().items():
        if is_concrete(v) and np.issubdtype(np.asarray(v).dtype, np.floating):
            bad = ~np.isfinite(np.asarray(v))
            if bad.any():
                raise ValueError(
                    f"{what}: {k} has {bad.sum()} non-finite values (NaN or inf), first at row "
                    f"{np.argwhere(bad)[0][0]}; remove those transitions"
                )
    return obs_dim[0], shapes["action"][1]


def transitions_to_vectors(data: Transition) -> jax.Array:
    """Transition [N] -> [N, 2 obs_dim + act_dim + 2] rows ``[s, a, r, s', terminated]``."""
    xp = jnp if any(isinstance(x, jax.Array) for x in data) else np
    return xp.concatenate(
        [
            data.obs,
            data.action,
            data.reward[:, None],
            data.next_obs,
            data.terminated[:, None].astype(np.float32),
        ],
        axis=1,
        dtype=np.float32,
    )


def vectors_to_transitions(x: Any, obs_dim: int, threshold: float = 0.5) -> Transition:
    """[N, D] rows ``[s, a, r, s', terminated]`` -> Transition [N]; terminal flags are
    ``x > threshold``; nothing is truncated (a generated step has no time limit)."""
    xp = jnp if isinstance(x, jax.Array) else np
    act_dim = x.shape[1] - 2 * obs_dim - 2
    require(act_dim >= 1, f"vectors of dimension {x.shape[1]} cannot hold obs_dim={obs_dim}")
    a, r = obs_dim + act_dim, obs_dim + act_dim + 1
    terminated = x[:, -1] > threshold
    return Transition(
        x[:, :obs_dim], x[:, obs_dim:a], x[:, a], x[:, r:-1], terminated, xp.zeros_like(terminated)
    )
