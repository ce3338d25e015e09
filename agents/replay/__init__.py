"""Experience: the ``Transition`` pytree shared by buffers, datasets and diffusion inputs."""

from __future__ import annotations

from typing import NamedTuple

import jax


class Transition(NamedTuple):
    """One step of experience; every field has the same leading batch shape ``[...]``.

    ``next_obs`` is the observation the action led to (the pre-reset observation at an
    episode end), so targets bootstrap through truncation and stop only at termination.
    """

    obs: jax.Array  # [..., obs_dim]
    action: jax.Array  # [..., act_dim] (continuous) or [...] (discrete)
    reward: jax.Array  # [...]
    next_obs: jax.Array  # [..., obs_dim]
    terminated: jax.Array  # [...] bool
    truncated: jax.Array  # [...] bool


__all__ = ["Transition"]
