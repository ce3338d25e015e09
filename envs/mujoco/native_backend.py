"""Native MuJoCo (float64, C) as a JAX function, through ``jax.pure_callback``.

Under ``jax.vmap`` the callback is called once with the whole batch (``vmap_method=
"broadcast_all"``) and steps every environment on the host, split across a small thread pool
(MuJoCo releases the GIL while it steps). The state goes in and out with every call, so the
environment stays a pure function: the same inputs always give the same outputs, and results
are identical to Gymnasium's own step from the same float64 state.
"""

from __future__ import annotations

import copy
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from envs.mujoco.physics import Physics, shifted_fields, split_float64
from envs.mujoco.tasks import Task

__all__ = ["NativeBackend"]

# Positions, velocities and the solver's warm start: all of the state these models step from.
_SPEC = (
    mujoco.mjtState.mjSTATE_QPOS | mujoco.mjtState.mjSTATE_QVEL | mujoco.mjtState.mjSTATE_WARMSTART
)


class _Worker:
    """One thread's model copy and scratch data; the model carries the last dynamics shift."""

    def __init__(self, base: mujoco.MjModel) -> None:
        self.base, self.model, self.data = base, copy.copy(base), mujoco.MjData(base)
        self.shift = (1.0, 1.0, 1.0)

    def set_shift(self, shift: tuple[float, float, float]) -> None:
        if shift == self.shift:
            return
        fields = shifted_fields(self.base, *shift)
        self.model.geom_friction[:] = fields["geom_friction"]
        self.model.opt.gravity[:] = fields["gravity"]
        self.model.body_mass[:] = fields["body_mass"]
        self.model.body_inertia[:] = fields["body_inertia"]
        self.shift = shift

    def run(self, state, ctrl, shifts, frame_skip: int, rows: range) -> None:
        m, d = self.model, self.data
        for i in rows:
            self.set_shift(tuple(shifts[i]))
            mujoco.mj_setState(m, d, state[i], _SPEC)
            d.ctrl[:] = ctrl[i]
            mujoco.mj_step(m, d, nstep=frame_skip)
            mujoco.mj_getState(m, d, state[i], _SPEC)


class NativeBackend:
    """Steps a task with native MuJoCo on the host; ``num_threads`` defaults to the CPU count."""

    name = "native"

    def __init__(self, task: Task, num_threads: int | None = None) -> None:
        self.task = task
        self.num_threads = max(1, num_threads or os.cpu_count() or 1)
        self._workers = [_Worker(task.model) for _ in range(self.num_threads)]
        self._pool = ThreadPoolExecutor(self.num_threads) if self.num_threads > 1 else None
        self._lock = threading.Lock()  # the workers' scratch data is not reentrant

    def step(self, physics, ctrl, friction_scale, gravity_scale, mass_scale) -> Physics:
        """``frame_skip`` MuJoCo steps; see ``envs.mujoco.physics.Backend``."""
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), physics)
        shifts = jnp.stack([friction_scale, gravity_scale, mass_scale]).astype(jnp.float32)
        return jax.pure_callback(
            self._host_step, shapes, physics, ctrl, shifts, vmap_method="broadcast_all"
        )

    def _host_step(self, physics: Physics, ctrl: np.ndarray, shifts: np.ndarray) -> Physics:
        """The batched host side: arrays carry any number of leading batch dimensions."""
        physics, ctrl, shifts = jax.tree.map(np.asarray, (physics, ctrl, shifts))
        nq, nv = physics.qpos.shape[-1], physics.qvel.shape[-1]
        batch = ctrl.shape[:-1]
        value = np.concatenate([physics.qpos, physics.qvel, physics.warmstart], axis=-1)
        state = value.astype(np.float64) + physics.residual  # [..., nq + 2 nv] float64
        state, ctrl = state.reshape(-1, nq + 2 * nv), ctrl.reshape(-1, ctrl.shape[-1])
        shifts = shifts.reshape(-1, 3).astype(np.float64)
        n, frame_skip = len(state), self.task.frame_skip
        with self._lock:
            if self._pool is None or n < 2 * self.num_threads:
                self._workers[0].run(state, ctrl, shifts, frame_skip, range(n))
            else:
                bounds = np.linspace(0, n, self.num_threads + 1).astype(int)
                jobs = [
                    self._pool.submit(w.run, state, ctrl, shifts, frame_skip, range(lo, hi))
                    for w, lo, hi in zip(self._workers, bounds[:-1], bounds[1:], strict=True)
                ]
                for job in jobs:
                    job.result()
        value, residual = split_float64(state)
        value, residual = value.reshape(*batch, -1), residual.reshape(*batch, -1)
        return Physics(value[..., :nq], value[..., nq : nq + nv], value[..., nq + nv :], residual)
