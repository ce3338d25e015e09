"""The physics state both backends share, and the dynamics shifts they apply."""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct

__all__ = ["Backend", "Physics", "shifted_fields"]


@struct.dataclass
class Physics:
    """Everything MuJoCo's step depends on here (no actuator activations in these models).

    The native backend simulates in float64 and keeps each value as a float32 plus its float32
    rounding error (``residual``), so the float64 state survives a trip through JAX without
    enabling x64; MJX simulates in float32 and leaves ``residual`` at zero.
    """

    qpos: jax.Array  # float32 [nq]
    qvel: jax.Array  # float32 [nv]
    warmstart: jax.Array  # float32 [nv]: the constraint solver's warm start (qacc_warmstart)
    residual: jax.Array  # float32 [nq + 2 nv]: float64 state minus (qpos, qvel, warmstart)

    @classmethod
    def at_rest(cls, qpos: jax.Array, qvel: jax.Array) -> Physics:
        """A state with the given positions and velocities and a cold solver start."""
        nq, nv = qpos.shape[-1], qvel.shape[-1]
        return cls(qpos, qvel, jnp.zeros(nv, jnp.float32), jnp.zeros(nq + 2 * nv, jnp.float32))


class Backend(Protocol):
    """A physics step: ``frame_skip`` MuJoCo steps with constant control, jittable, vmappable."""

    name: str

    def step(
        self,
        physics: Physics,
        ctrl: jax.Array,  # float32 [nu]
        friction_scale: jax.Array,  # float32 []
        gravity_scale: jax.Array,  # float32 []
        mass_scale: jax.Array,  # float32 []
    ) -> Physics: ...


def shifted_fields(base: mujoco.MjModel, friction, gravity, mass, xp=np) -> dict:
    """Model fields scaled from ``base``: every geom friction coefficient, gravity, and body
    masses together with their inertias (a uniform density change). ``xp`` is numpy (native
    backend) or jax.numpy (MJX, where the scales may be traced)."""
    return {
        "geom_friction": xp.asarray(base.geom_friction) * friction,
        "gravity": xp.asarray(base.opt.gravity) * gravity,
        "body_mass": xp.asarray(base.body_mass) * mass,
        "body_inertia": xp.asarray(base.body_inertia) * mass,
    }
