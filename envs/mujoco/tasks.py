"""HalfCheetah, Hopper and Walker2d as defined by Gymnasium v5, written once in JAX.

A ``Task`` holds everything that is not physics: the model file (Gymnasium's own XML, loaded
from the installed package), frame skip, observation, reward terms, the healthy rule that
terminates an episode, and the reset noise. The defaults of every field are Gymnasium v5's
defaults for that environment; the physics step itself comes from a backend
(``envs.mujoco.mjx_backend`` or ``envs.mujoco.native_backend``).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

__all__ = ["TASKS", "Task", "assets_dir", "load_model"]


def assets_dir() -> Path:
    """Folder of the MuJoCo model files that ship with the installed Gymnasium."""
    import gymnasium.envs.mujoco

    return Path(gymnasium.envs.mujoco.__file__).parent / "assets"


@functools.cache
def load_model(xml_file: str) -> mujoco.MjModel:
    """The compiled MuJoCo model of one of Gymnasium's asset files (cached; do not mutate)."""
    path = assets_dir() / xml_file
    if not path.exists():
        raise FileNotFoundError(
            f"MuJoCo model {path} not found; install gymnasium[mujoco] (it ships the XML files)."
        )
    return mujoco.MjModel.from_xml_path(str(path))


@dataclasses.dataclass(frozen=True)
class Task:
    """One locomotion task (Gymnasium v5 semantics); hashable, so it can be a static argument."""

    name: str
    xml_file: str
    frame_skip: int
    ctrl_cost_weight: float
    reset_noise_scale: float
    gaussian_qvel_noise: bool  # HalfCheetah: qvel noise ~ scale * N(0, 1); else U(-scale, scale)
    healthy_reward: float = 0.0  # 0: the task never terminates (HalfCheetah)
    healthy_z: tuple[float, float] = (-np.inf, np.inf)  # open interval for qpos[1]
    healthy_angle: tuple[float, float] = (-np.inf, np.inf)  # open interval for qpos[2]
    healthy_state: tuple[float, float] = (-np.inf, np.inf)  # open interval for qpos[2:], qvel
    obs_qvel_clip: float = np.inf  # Hopper/Walker2d clip observed velocities to [-10, 10]
    forward_reward_weight: float = 1.0

    @property
    def model(self) -> mujoco.MjModel:
        """The compiled model (shared; copy it before changing anything)."""
        return load_model(self.xml_file)

    @property
    def dt(self) -> float:
        """Seconds per environment step (timestep x frame_skip)."""
        return float(self.model.opt.timestep) * self.frame_skip

    @property
    def terminates(self) -> bool:
        """Whether leaving the healthy set ends the episode."""
        return self.healthy_reward > 0

    @property
    def obs_dim(self) -> int:
        """Observation length: qpos without the root x position, then qvel."""
        return self.model.nq - 1 + self.model.nv

    @property
    def act_dim(self) -> int:
        """Number of actuators (the action length)."""
        return self.model.nu

    def observation(self, qpos: jax.Array, qvel: jax.Array) -> jax.Array:
        """float32 [obs_dim] from qpos [nq] and qvel [nv]."""
        qvel = jnp.clip(qvel, -self.obs_qvel_clip, self.obs_qvel_clip)
        return jnp.concatenate([qpos[1:], qvel]).astype(jnp.float32)

    def is_healthy(self, qpos: jax.Array, qvel: jax.Array) -> jax.Array:
        """bool []: z, torso angle and the rest of the state inside their (open) ranges."""

        def inside(x: jax.Array, bounds: tuple[float, float]) -> jax.Array:
            return jnp.all((bounds[0] < x) & (x < bounds[1]))

        state = jnp.concatenate([qpos[2:], qvel])
        return (
            inside(qpos[1], self.healthy_z)
            & inside(qpos[2], self.healthy_angle)
            & inside(state, self.healthy_state)
        )

    def reset_qpos_qvel(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Initial (qpos [nq], qvel [nv]): the model's rest pose plus Gymnasium's reset noise."""
        model, scale = self.model, self.reset_noise_scale
        key_pos, key_vel = jax.random.split(key)
        qpos = jnp.asarray(model.qpos0, jnp.float32) + jax.random.uniform(
            key_pos, (model.nq,), minval=-scale, maxval=scale
        )
        if self.gaussian_qvel_noise:
            qvel = scale * jax.random.normal(key_vel, (model.nv,))
        else:
            qvel = jax.random.uniform(key_vel, (model.nv,), minval=-scale, maxval=scale)
        return qpos, qvel


TASKS: dict[str, Task] = {
    "HalfCheetah": Task(
        name="HalfCheetah",
        xml_file="half_cheetah.xml",
        frame_skip=5,
        ctrl_cost_weight=0.1,
        reset_noise_scale=0.1,
        gaussian_qvel_noise=True,
    ),
    "Hopper": Task(
        name="Hopper",
        xml_file="hopper.xml",
        frame_skip=4,
        ctrl_cost_weight=1e-3,
        reset_noise_scale=5e-3,
        gaussian_qvel_noise=False,
        healthy_reward=1.0,
        healthy_z=(0.7, np.inf),
        healthy_angle=(-0.2, 0.2),
        healthy_state=(-100.0, 100.0),
        obs_qvel_clip=10.0,
    ),
    "Walker2d": Task(
        name="Walker2d",
        xml_file="walker2d_v5.xml",
        frame_skip=4,
        ctrl_cost_weight=1e-3,
        reset_noise_scale=5e-3,
        gaussian_qvel_noise=False,
        healthy_reward=1.0,
        healthy_z=(0.8, 2.0),
        healthy_angle=(-1.0, 1.0),
        obs_qvel_clip=10.0,
    ),
}
