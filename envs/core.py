"""The functional environment interface shared by every environment here.

It *is* the gymnax 1.x interface (our base class subclasses gymnax's), so gymnax
environments and PureJaxRL-style code interoperate with no adapter:

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

``step`` auto-resets; the pre-reset observation is ``info["final_observation"]``.
Termination and truncation are reported separately and never merged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import environment as gymnax_env
from gymnax.environments import spaces

__all__ = ["EnvParams", "EnvState", "Environment", "check_action", "spaces"]

EnvState = gymnax_env.EnvState
EnvParams = gymnax_env.EnvParams


def is_concrete(x: Any) -> bool:
    """True for a value known at trace time (not a tracer), so it can be validated in Python."""
    return not isinstance(x, jax.core.Tracer)


def check_action(space: spaces.Space, action: Any, env_name: str = "environment") -> None:
    """Raise a ValueError at trace time if ``action`` does not fit ``space``'s shape or kind."""
    shape = tuple(np.shape(action))
    if isinstance(space, spaces.Discrete):
        if shape != ():
            raise ValueError(
                f"{env_name}: expected a scalar discrete action (one env), got shape {shape}. "
                "Batch environments with jax.vmap rather than passing a batch of actions."
            )
        if not jnp.issubdtype(jnp.result_type(action), jnp.integer):
            raise ValueError(
                f"{env_name}: discrete actions must be integers, got dtype "
                f"{jnp.result_type(action)}; cast with action.astype(jnp.int32)."
            )
    elif isinstance(space, spaces.Box):
        if shape != tuple(space.shape):
            raise ValueError(
                f"{env_name}: expected an action of shape {tuple(space.shape)}, got {shape}."
            )


class Environment(gymnax_env.Environment):
    """A gymnax-1.x environment that validates the action before stepping.

    Subclasses implement ``step_env``, ``reset_env``, ``action_space``,
    ``observation_space`` and ``default_params``; gridworlds also ``render``.
    """

    def check_params(self, params: EnvParams) -> None:
        """Raise a ValueError naming a bad setting in ``params`` (called by ``reset``, ``step``)."""

    def reset(self, key: jax.Array, params: EnvParams | None = None) -> tuple[jax.Array, EnvState]:
        """A fresh episode: ``(obs, state)``."""
        params = self.default_params if params is None else params
        self.check_params(params)
        return super().reset(key, params)

    def step(
        self,
        key: jax.Array,
        state: EnvState,
        action: jax.Array,
        params: EnvParams | None = None,
    ) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, jax.Array, dict]:
        """One transition with auto-reset; see the module docstring for the return order."""
        params = self.default_params if params is None else params
        self.check_params(params)
        check_action(self.action_space(params), action, self.name)
        return super().step(key, state, action, params)

    def render(self, state: EnvState, params: EnvParams | None = None) -> jax.Array:
        """An RGB image (uint8, [H, W, 3]) of ``state``."""
        raise NotImplementedError(f"{self.name} does not render")
