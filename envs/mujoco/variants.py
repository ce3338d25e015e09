"""Named variants of the MuJoCo tasks that the skill studies share: each a set of
``MujocoParams`` fields (``envs.make(name, **variant)``), defined once.

    env, params = envs.make("HalfCheetah", **BEHAVIOURS["jump"])
    env_name, tasks = SEQUENCES["cheetah-vel"]          # a continual task sequence
"""

from __future__ import annotations

__all__ = ["BEHAVIOURS", "DYNAMICS", "SEQUENCES"]

#: HalfCheetah behaviours: the same physics, other rewards
BEHAVIOURS: dict[str, dict[str, float]] = {
    "forward": {"direction": 1.0},
    "backward": {"direction": -1.0},
    "jump": {"target_velocity": 0.0, "jump_weight": 10.0},  # -|v_x| + 10 * root height
    "backward jump": {"direction": -1.0, "jump_weight": 10.0},  # backward + 10 * height
}

#: HalfCheetah dynamics: Gymnasium's reward, other physics
DYNAMICS: dict[str, dict[str, float]] = {
    "forward": {},
    "low friction": {"friction_scale": 0.4},
    "heavy": {"mass_scale": 1.5},
    "low friction, heavy": {"friction_scale": 0.4, "mass_scale": 1.5},
}

#: continual task sequences: name -> (env, {task: params}), learned in this order
SEQUENCES: dict[str, tuple[str, dict[str, dict[str, float]]]] = {
    "cheetah-vel": (  # MACAW's cheetah-vel: target speeds in [0, 3] m/s
        "HalfCheetah",
        {f"velocity {v:g}": {"target_velocity": v} for v in (0.5, 1.0, 1.5, 2.0, 2.5)},
    ),
    "walker-dir": (  # directions, and each at a 1 m/s target speed
        "Walker2d",
        {
            "forward": {"direction": 1.0},
            "backward": {"direction": -1.0},
            "forward 1": {"direction": 1.0, "target_velocity": 1.0},
            "backward 1": {"direction": -1.0, "target_velocity": 1.0},
        },
    ),
    "mixed": (  # running (forward, backward) and speed tracking, interleaved
        "HalfCheetah",
        {
            "forward": {"direction": 1.0},
            "velocity 1": {"target_velocity": 1.0},
            "backward": {"direction": -1.0},
            "velocity 2": {"target_velocity": 2.0},
            "backward 1": {"direction": -1.0, "target_velocity": 1.0},
        },
    ),
}
