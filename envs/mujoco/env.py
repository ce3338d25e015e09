"""MuJoCo locomotion tasks behind the functional (gymnax 1.x) interface, on either backend.

``HalfCheetah``, ``Hopper`` and ``Walker2d`` reproduce Gymnasium v5 (observation, reward,
termination, reset noise, frame skip, 1000-step truncation) with the default params. The params
also carry task variations, all vmappable leaves:

- ``direction`` (+1 or -1) and ``target_velocity``: the forward term is
  ``direction * x_velocity`` (inf, the default, as in Gymnasium) or
  ``-|direction * x_velocity - target_velocity|`` (velocity tracking, e.g. cheetah-velocity);
- ``jump_weight``: adds ``jump_weight * (z - z_rest)``, the root height above its rest height;
- ``friction_scale``, ``gravity_scale``, ``mass_scale``: dynamics shifts, applied per
  environment inside a vmapped batch on both backends;
- ``velocity_limit``: ``info["cost"]`` is 1 on every step whose speed ``|x_velocity|`` is above
  it (the velocity-constrained tasks of safe RL, Safety-Gymnasium's; e.g. HalfCheetah 3.2096),
  and 0 with the default ``inf``. The reward does not change.

Backends: ``"native"`` (MuJoCo in C, float64, through ``jax.pure_callback``; identical to
Gymnasium) and ``"mjx"`` (MuJoCo XLA, float32, pure JAX). The default is ``"native"`` when JAX
runs on CPU, where it is the faster one, and ``"mjx"`` on accelerators.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.core import Environment, EnvParams, EnvState, is_concrete, spaces
from envs.mujoco.physics import Backend, Physics
from envs.mujoco.tasks import TASKS, Task

__all__ = ["HalfCheetah", "Hopper", "MujocoEnv", "MujocoParams", "MujocoState", "Walker2d"]

BACKENDS = ("native", "mjx")
RENDER_SIZE = (480, 480)  # (height, width): Gymnasium's default for these tasks


@struct.dataclass
class MujocoParams(EnvParams):
    """Task variations (defaults reproduce Gymnasium v5); every field is a vmappable leaf."""

    max_steps_in_episode: int = 1000
    target_velocity: float = float("inf")  # inf: reward forward progress, as Gymnasium does
    direction: float = 1.0  # +1 forward, -1 backward
    jump_weight: float = 0.0  # weight of the root height above its rest height
    friction_scale: float = 1.0
    gravity_scale: float = 1.0
    mass_scale: float = 1.0
    velocity_limit: float = float("inf")  # info["cost"] = 1 on steps with |x_velocity| above


@struct.dataclass
class MujocoState(EnvState):
    """The physics state and the step count of the episode."""

    physics: Physics
    time: jax.Array  # int32 []


def default_backend() -> str:
    """``"native"`` when JAX runs on CPU (faster there), ``"mjx"`` on GPU/TPU."""
    return "native" if jax.default_backend() == "cpu" else "mjx"


class MujocoEnv(Environment):
    """A Gymnasium v5 locomotion task; subclasses set ``task``."""

    task: Task

    def __init__(self, backend: str | Backend | None = None) -> None:
        backend = default_backend() if backend is None else backend
        if isinstance(backend, str):
            if backend not in BACKENDS:
                raise ValueError(
                    f"{self.task.name}: unknown backend {backend!r}; choose one of {BACKENDS}."
                )
            if backend == "native":
                from envs.mujoco.native_backend import NativeBackend as backend_cls
            else:
                from envs.mujoco.mjx_backend import MjxBackend as backend_cls
            backend = backend_cls(self.task)
        self.backend = backend
        self._rest_height = float(self.task.model.qpos0[1])

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def default_params(self) -> MujocoParams:
        return MujocoParams()

    def check_params(self, params: MujocoParams) -> None:
        """Raise a ValueError naming a bad (concrete) task parameter."""
        if not isinstance(params, MujocoParams):
            raise ValueError(
                f"{self.name}: expected MujocoParams, got {type(params).__name__}; "
                "build them with envs.make or env.default_params.replace(...)."
            )
        if params.target_velocity is None:
            raise ValueError(
                f"{self.name}: target_velocity is None; use float('inf') for Gymnasium's "
                "forward-progress reward or a number for velocity tracking."
            )
        checks = {
            "max_steps_in_episode": (lambda v: v >= 1, "must be >= 1"),
            "target_velocity": (lambda v: ~np.isnan(v), "must not be NaN (inf: forward reward)"),
            "direction": (lambda v: np.abs(v) == 1, "must be +1 or -1"),
            "jump_weight": (np.isfinite, "must be finite"),
            "friction_scale": (lambda v: np.isfinite(v) & (v > 0), "must be finite and > 0"),
            "gravity_scale": (lambda v: np.isfinite(v) & (v >= 0), "must be finite and >= 0"),
            "mass_scale": (lambda v: np.isfinite(v) & (v > 0), "must be finite and > 0"),
            "velocity_limit": (lambda v: v >= 0, "must be >= 0 (inf: no cost)"),
        }
        for name, (ok, rule) in checks.items():
            v = getattr(params, name)
            if v is None or (is_concrete(v) and not np.all(ok(np.asarray(v)))):
                raise ValueError(f"{self.name}: {name} {rule}, got {v}.")

    def action_space(self, params: MujocoParams | None = None) -> spaces.Box:
        low, high = np.asarray(self.task.model.actuator_ctrlrange, np.float32).T
        return spaces.Box(jnp.asarray(low), jnp.asarray(high), (self.task.act_dim,), jnp.float32)

    def observation_space(self, params: MujocoParams | None = None) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (self.task.obs_dim,), jnp.float32)

    def state_from_observation(self, obs: jax.Array) -> MujocoState:
        """A state whose observation is ``obs`` [obs_dim] (jittable, vmappable).

        The observation is ``qpos[1:]`` then ``qvel``, so it fixes the state up to the root x
        position (set to 0 here), which no reward, termination or observation depends on; the
        solver starts cold and the episode at step 0. Exact unless the observed velocities were
        clipped (Hopper and Walker2d clip them to [-10, 10]).
        """
        nq = self.task.model.nq
        obs = jnp.asarray(obs, jnp.float32)
        if obs.shape != (self.task.obs_dim,):
            raise ValueError(
                f"{self.name}: an observation has shape ({self.task.obs_dim},), got {obs.shape}."
            )
        qpos = jnp.concatenate([jnp.zeros(1, jnp.float32), obs[: nq - 1]])
        return MujocoState(physics=Physics.at_rest(qpos, obs[nq - 1 :]), time=jnp.int32(0))

    def reset_to(
        self, qpos: Any, qvel: Any, params: MujocoParams | None = None
    ) -> tuple[jax.Array, MujocoState]:
        """``(obs, state)`` of an episode starting at ``qpos`` [nq], ``qvel`` [nv] (e.g. a logged
        or another simulator's state), solver cold, step 0. Host (NumPy) float64 values stay
        float64 on the native backend (``state.physics.float64()`` gives them back); MJX
        simulates in float32. Under ``jax.jit`` pass JAX arrays (float32)."""
        model = self.task.model
        for name, x, n in (("qpos", qpos, model.nq), ("qvel", qvel, model.nv)):
            if np.shape(x) != (n,):
                raise ValueError(f"{self.name}: {name} has shape ({n},), got {np.shape(x)}.")
            if not isinstance(x, jax.core.Tracer) and not np.isfinite(np.asarray(x)).all():
                raise ValueError(f"{self.name}: {name} holds NaN or inf: {np.asarray(x)}.")
        if params is not None:
            self.check_params(params)
        state = MujocoState(physics=Physics.at_rest(qpos, qvel), time=jnp.int32(0))
        return self.observation(state, params), state

    def observation(self, state: MujocoState, params: MujocoParams | None = None) -> jax.Array:
        """The observation [obs_dim] of ``state`` (Gymnasium's: ``qpos[1:]`` then ``qvel``,
        velocities clipped to [-10, 10] for Hopper and Walker2d)."""
        return self.task.observation(state.physics.qpos, state.physics.qvel)

    def render(self, state: MujocoState, params: MujocoParams | None = None) -> jax.Array:
        """An RGB image (uint8 [480, 480, 3]) of ``state`` from a camera following the torso,
        drawn by MuJoCo's own renderer on the host (headless: EGL by default, OSMesa with
        ``MUJOCO_GL=osmesa``); jittable and vmappable (a host callback, one image at a time)."""
        self._renderer()  # a clear error now, at trace time, when no OpenGL is available
        shape = jax.ShapeDtypeStruct((*RENDER_SIZE, 3), jnp.uint8)
        return jax.pure_callback(self._draw, shape, state.physics, vmap_method="sequential")

    def _renderer(self) -> Any:
        """(renderer, MjData, camera, thread): one thread owns the GL context (an EGL or OSMesa
        context is current in one thread only, and XLA may run host callbacks on any)."""
        if getattr(self, "_rendering", None) is None:
            import mujoco

            thread = ThreadPoolExecutor(1, thread_name_prefix=f"render-{self.name}")
            renderer = thread.submit(_headless_renderer, self.task.model, self.name).result()
            atexit.register(_close_quietly, renderer)  # before teardown frees EGL's module
            camera = mujoco.MjvCamera()
            camera.type, camera.trackbodyid = mujoco.mjtCamera.mjCAMERA_TRACKING, 1
            camera.distance, camera.elevation, camera.azimuth = 4.0, -15.0, 90.0
            self._rendering = (renderer, mujoco.MjData(self.task.model), camera, thread)
        return self._rendering

    def _draw(self, physics: Physics) -> np.ndarray:
        import mujoco

        renderer, data, camera, thread = self._renderer()

        def draw() -> np.ndarray:
            data.qpos[:], data.qvel[:] = physics.float64()
            mujoco.mj_forward(self.task.model, data)
            renderer.update_scene(data, camera)
            return renderer.render().copy()

        return thread.submit(draw).result()

    def reset_env(self, key: jax.Array, params: MujocoParams) -> tuple[jax.Array, MujocoState]:
        qpos, qvel = self.task.reset_qpos_qvel(key)
        state = MujocoState(physics=Physics.at_rest(qpos, qvel), time=jnp.int32(0))
        return self.task.observation(qpos, qvel), state

    def step_env(
        self, key: jax.Array, state: MujocoState, action: jax.Array, params: MujocoParams
    ) -> tuple[jax.Array, MujocoState, jax.Array, jax.Array, dict]:
        task, before = self.task, state.physics
        action = jnp.asarray(action, jnp.float32)
        after = self.backend.step(
            before, action, params.friction_scale, params.gravity_scale, params.mass_scale
        )
        # root x displacement from value + residual parts: exact for the float64 native state
        dx = (after.qpos[0] - before.qpos[0]) + (after.residual[0] - before.residual[0])
        x_velocity = dx / task.dt
        forward = params.direction * x_velocity
        tracking = -jnp.abs(forward - params.target_velocity)
        forward = jnp.where(jnp.isinf(params.target_velocity), forward, tracking)
        forward_reward = task.forward_reward_weight * forward
        healthy = task.is_healthy(after.qpos, after.qvel)
        survive_reward = task.healthy_reward * healthy
        ctrl_cost = task.ctrl_cost_weight * jnp.sum(jnp.square(action))
        height = after.qpos[1] - self._rest_height
        reward = forward_reward + survive_reward - ctrl_cost + params.jump_weight * height
        terminated = jnp.logical_not(healthy) if task.terminates else jnp.array(False)
        cost = (jnp.abs(x_velocity) > params.velocity_limit).astype(jnp.float32)
        info = {
            "x_position": after.qpos[0],
            "x_velocity": x_velocity,
            "height": height,
            "cost": cost,
        }
        new_state = MujocoState(physics=after, time=state.time + 1)
        return task.observation(after.qpos, after.qvel), new_state, reward, terminated, info


def _close_quietly(renderer: Any) -> None:
    """Free a renderer at exit (its GL thread may be gone: then the process frees it)."""
    try:
        renderer.close()
    except Exception:
        pass


def _headless_renderer(model: Any, name: str) -> Any:
    """MuJoCo's renderer for ``model``: with ``MUJOCO_GL``'s context when set; else, on Linux
    without a display, EGL, then OSMesa (the first that opens; a failed GLFW attempt would
    leave MuJoCo unable to try another); else MuJoCo's default. A RuntimeError names the fix."""
    import mujoco
    from mujoco.rendering.classic import gl_context

    tried = []
    chosen = os.environ.get("MUJOCO_GL")
    headless = sys.platform.startswith("linux") and not os.environ.get("DISPLAY")
    for backend in [None] if chosen or not headless else ["egl", "osmesa"]:
        try:
            if backend is not None:  # importing a context class loads its GL library
                gl_context.GLContext = importlib.import_module(f"mujoco.{backend}").GLContext
            return mujoco.Renderer(model, *RENDER_SIZE)
        except Exception as err:  # a missing GL library surfaces as several kinds of error
            tried.append(f"{backend or chosen or 'default'}: {type(err).__name__}: {err}")
    raise RuntimeError(
        f"{name}: MuJoCo cannot open an OpenGL context ({'; '.join(tried)}). Install EGL "
        "(Debian/Ubuntu: apt install libegl1) or OSMesa (apt install libosmesa6, then "
        "MUJOCO_GL=osmesa) to render MuJoCo tasks headless."
    )


class HalfCheetah(MujocoEnv):
    """Gymnasium ``HalfCheetah-v5``: obs 17, action 6, never terminates."""

    task = TASKS["HalfCheetah"]


class Hopper(MujocoEnv):
    """Gymnasium ``Hopper-v5``: obs 11, action 3, terminates when it falls."""

    task = TASKS["Hopper"]


class Walker2d(MujocoEnv):
    """Gymnasium ``Walker2d-v5``: obs 17, action 6, terminates when it falls."""

    task = TASKS["Walker2d"]
