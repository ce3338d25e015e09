"""Environments behind one functional (gymnax 1.x) interface, and a registry to make them."""

from __future__ import annotations

import importlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from envs import platform as _platform

_platform.configure()  # before any JAX program runs: every entry point imports envs

from envs.core import Environment, EnvParams, EnvState, check_action, spaces  # noqa: E402

__all__ = ["EnvParams", "EnvState", "Environment", "check_action", "make", "registered", "spaces"]

# name -> "module:Class"; the class's default_params, updated with **kwargs, are the params.
_REGISTRY: dict[str, str] = {
    "GoalSequence": "envs.gridworlds.goal_sequence:GoalSequence",
    "MemorySequence": "envs.gridworlds.memory_sequence:MemorySequence",
    "MultiSkill": "envs.gridworlds.multi_skill:MultiSkill",
    "SocialGoalSequence": "envs.gridworlds.social:SocialGoalSequence",
    "SocialMemorySequence": "envs.gridworlds.social:SocialMemorySequence",
    "HalfCheetah": "envs.mujoco.env:HalfCheetah",
    "Hopper": "envs.mujoco.env:Hopper",
    "Walker2d": "envs.mujoco.env:Walker2d",
}
_MUJOCO = ("HalfCheetah", "Hopper", "Walker2d")  # these take backend= "native" or "mjx"


def registered() -> list[str]:
    """Names accepted by ``make`` (plus any gymnax id as ``gymnax:<id>``)."""
    return sorted(_REGISTRY) + ["gymnax:<id>"]


def make(
    name: str, backend: str | None = None, **param_overrides: Any
) -> tuple[Environment, EnvParams]:
    """Build ``(env, params)`` by name; keyword arguments override fields of the default params.

    ``gymnax:<id>`` (e.g. ``gymnax:CartPole-v1``) builds a gymnax environment, which every
    agent here accepts as is. MuJoCo tasks take ``backend="native"`` or ``"mjx"`` (default:
    native on CPU, MJX on accelerators; see ``envs.mujoco``).
    """
    if backend is not None and name not in _MUJOCO:
        raise ValueError(
            f"{name}: backend= applies to the MuJoCo tasks ({', '.join(_MUJOCO)}) only."
        )
    if name.startswith("gymnax:"):
        import gymnax

        gym_id = name.split(":", 1)[1]
        if gym_id not in gymnax.registered_envs:
            raise ValueError(
                f"unknown gymnax environment {gym_id!r}; known: {', '.join(gymnax.registered_envs)}"
            )
        from envs.wrappers import CheckedActions

        env, params = gymnax.make(gym_id)
        env = CheckedActions(env)
    elif name in _REGISTRY:
        module, cls = _REGISTRY[name].split(":")
        env_cls = getattr(importlib.import_module(module), cls)
        env = env_cls(backend) if name in _MUJOCO else env_cls()
        params = env.default_params
    else:
        raise ValueError(f"unknown environment {name!r}; known: {', '.join(registered())}")
    unknown = set(param_overrides) - set(params.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"{name}: unknown parameter(s) {sorted(unknown)}; "
            f"valid: {sorted(params.__dataclass_fields__)}"
        )
    for key, value in param_overrides.items():
        default = getattr(params, key)
        numeric = isinstance(default, int | float | np.ndarray | jax.Array)
        if numeric and not isinstance(default, bool) and isinstance(value, str | dict):
            raise ValueError(
                f"{name}: parameter {key}={value!r} must be a number (default {default!r})"
            )
    arrays = {k: jnp.asarray(v) if isinstance(v, list) else v for k, v in param_overrides.items()}
    params = params.replace(**arrays)
    if hasattr(env, "check_params"):  # checked here, while concrete: training sees them traced
        env.check_params(params)
    return env, params
