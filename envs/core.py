"""The functional environment interface shared by every environment here.

It *is* the gymnax 1.x interface (our base class subclasses gymnax's), so gymnax
environments and PureJaxRL-style code interoperate with no adapter:

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

``step`` auto-resets; the pre-reset observation is ``info["final_observation"]``.
Termination and truncation are reported separately and never merged.

Actions: a wrong shape or kind is an error at trace time. A discrete action out of range is an
error when concrete (eager use) and, traced, under ``jax.experimental.checkify.checkify`` when
asked. A continuous action outside its box is clipped into it (NaN entries to 0) and counted in
``info["clipped_actions"]`` (``episode_metrics`` sums it); a non-finite concrete one is an error.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import environment as gymnax_env
from gymnax.environments import spaces
from jax.experimental import checkify

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
        message = f"{env_name}: discrete action {{}} is outside [0, {space.n})"
        if is_concrete(action):
            if not 0 <= int(action) < space.n:
                raise ValueError(message.format(int(action)))
        else:  # traced: checked when the caller asks, under jax.experimental.checkify.checkify
            checkify.check((action >= 0) & (action < space.n), message, action, debug=True)
    elif isinstance(space, spaces.Box):
        if shape != tuple(space.shape):
            raise ValueError(
                f"{env_name}: expected an action of shape {tuple(space.shape)}, got {shape}."
            )
        if is_concrete(action) and not np.all(np.isfinite(np.asarray(action, np.float64))):
            raise ValueError(f"{env_name}: the action {np.asarray(action)} is not finite.")


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
        space = self.action_space(params)
        check_action(space, action, self.name)
        if not isinstance(space, spaces.Box):
            return super().step(key, state, action, params)
        # continuous actions outside the box (or NaN, as 0) are clipped and counted
        action = jnp.asarray(action, jnp.float32)
        inside = jnp.clip(jnp.nan_to_num(action, nan=0.0), space.low, space.high)
        *out, info = super().step(key, state, inside, params)
        info["clipped_actions"] = jnp.sum(inside != action)  # NaN != anything
        return *out, info

    def render(self, state: EnvState, params: EnvParams | None = None) -> jax.Array:
        """An RGB image (uint8, [H, W, 3]) of ``state``."""
        raise NotImplementedError(f"{self.name} does not render")
