"""MuJoCo XLA (MJX): the physics step as a pure JAX program, for ``jit``/``vmap`` on accelerators.

Solver settings: ``iterations=4``, ``ls_iterations=8`` instead of MuJoCo's 100 and 50, about
4x the step rate on CPU (``../shared/research/platform.md``). On these tasks they cost no
measurable accuracy: Newton converges within 4 iterations, and the errors against Gymnasium
in ``tests/test_mujoco.py`` are identical with 100/50 (they come from float32: one step from
Gymnasium's state agrees to 2e-4, free-running trajectories drift apart chaotically).
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
from mujoco import mjx

from envs.mujoco.physics import Physics, shifted_fields
from envs.mujoco.tasks import Task

__all__ = ["MjxBackend"]


class MjxBackend:
    """Steps a task with MJX; dynamics shifts become a per-environment model under ``vmap``."""

    name = "mjx"

    def __init__(self, task: Task, iterations: int = 4, ls_iterations: int = 8) -> None:
        base = copy.copy(task.model)
        base.opt.iterations, base.opt.ls_iterations = iterations, ls_iterations
        self.task, self.base = task, base
        self.model = mjx.put_model(base)
        self.data = mjx.make_data(self.model)

    def step(self, physics, ctrl, friction_scale, gravity_scale, mass_scale) -> Physics:
        """``frame_skip`` MJX steps; see ``envs.mujoco.physics.Backend``."""
        fields = shifted_fields(self.base, friction_scale, gravity_scale, mass_scale, xp=jnp)
        gravity = fields.pop("gravity")
        model = self.model.replace(opt=self.model.opt.replace(gravity=gravity), **fields)
        data = self.data.replace(
            qpos=physics.qpos, qvel=physics.qvel, qacc_warmstart=physics.warmstart, ctrl=ctrl
        )
        data = jax.lax.fori_loop(0, self.task.frame_skip, lambda _, d: mjx.step(model, d), data)
        return physics.replace(qpos=data.qpos, qvel=data.qvel, warmstart=data.qacc_warmstart)
