"""The physics state both backends share, and the dynamics shifts they apply."""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct

__all__ = ["Backend", "Physics", "shifted_fields", "split_float64"]


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
        """A state with the given positions [nq] and velocities [nv] and a cold solver start.

        Host (NumPy or Python) values keep their float64 precision, as float32 parts plus
        their rounding errors, as the native backend stores its state; JAX arrays are float32.
        """
        if isinstance(qpos, jax.Array) or isinstance(qvel, jax.Array):
            qpos, qvel = jnp.asarray(qpos, jnp.float32), jnp.asarray(qvel, jnp.float32)
            nq, nv = qpos.shape[-1], qvel.shape[-1]
            residual = jnp.zeros(nq + 2 * nv, jnp.float32)
            return cls(qpos, qvel, jnp.zeros(nv, jnp.float32), residual)
        exact = np.concatenate([np.asarray(qpos, np.float64), np.asarray(qvel, np.float64)])
        value, residual = split_float64(exact)
        nq, nv = np.shape(qpos)[-1], np.shape(qvel)[-1]
        residual = np.concatenate([residual, np.zeros(nv, np.float32)])
        zeros = jnp.zeros(nv, jnp.float32)
        return cls(jnp.asarray(value[:nq]), jnp.asarray(value[nq:]), zeros, jnp.asarray(residual))

    def float64(self) -> tuple[np.ndarray, np.ndarray]:
        """``(qpos [nq], qvel [nv])`` in float64, as the native backend simulates them."""
        nq, nv = self.qpos.shape[-1], self.qvel.shape[-1]
        residual = np.asarray(self.residual, np.float64)
        qpos = np.asarray(self.qpos, np.float64) + residual[..., :nq]
        return qpos, np.asarray(self.qvel, np.float64) + residual[..., nq : nq + nv]


def split_float64(exact: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 values as (float32 value, float32 rounding error): how ``Physics`` carries them."""
    value = exact.astype(np.float32)
    return value, (exact - value).astype(np.float32)


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
