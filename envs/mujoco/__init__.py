"""MuJoCo locomotion tasks (Gymnasium v5) with a native-MuJoCo and an MJX backend."""

from envs.mujoco.env import (
    BACKENDS,
    HalfCheetah,
    Hopper,
    MujocoEnv,
    MujocoParams,
    MujocoState,
    Walker2d,
    default_backend,
)
from envs.mujoco.physics import Physics
from envs.mujoco.tasks import TASKS, Task

__all__ = [
    "BACKENDS",
    "TASKS",
    "HalfCheetah",
    "Hopper",
    "MujocoEnv",
    "MujocoParams",
    "MujocoState",
    "Physics",
    "Task",
    "Walker2d",
    "default_backend",
]
