"""Multi-skill gridworld: go-to-object skills switched by a hidden controller.

The ground truth for skill-boundary detection (SBD). A walled room holds ``num_objects``
coloured objects; skill ``k`` is "go to object k". A controller hidden in the state holds
the current skill and how many steps it has left; after every step, once the agent has
reached the skill's object or the steps have run out, it switches to another skill.

Label convention (one step ``t`` = one call of ``step`` from state ``s_t`` with action ``a_t``):

- ``info["skill"]`` is ``s_t.skill``: the command in force *before* acting, which governs
  ``a_t`` (and, when revealed, is the one-hot at the end of the observation ``a_t`` sees).
- ``info["boundary"]`` is ``s_t.boundary``: True iff ``t`` is the first step of an episode or
  ``skill[t] != skill[t-1]``. Switches always pick a different skill, so a boundary inside an
  episode always changes the skill.
- The reward of step ``t`` is 1 iff ``a_t`` leaves the agent on the object of ``skill[t]``.

Observation (float32, size ``(num_objects + 1) * (height + width) + 3 * num_objects + 2``): the
agent's row one-hot ``[height]`` and column one-hot ``[width]`` (grid coordinates, walls
included), the same for each object in order, each object's offset from the agent
``[num_objects, 2]`` (rows, cols; divided by the interior size, so in [-1, 1]), then the
commanded object's offset ``[2]`` and the current skill's one-hot
``[num_objects]``, both all zeros unless ``params.reveal_skill``. ``reveal_skill`` is a
vmappable leaf (the SBD negative control and the goal-conditioned RL setting), so revealed and
hidden runs share one compiled program.

Actions (allocentric): 0 up, 1 right, 2 down, 3 left, 4 stay; the border walls block moves.
Episodes never terminate; they are truncated at ``max_steps_in_episode``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.core import Environment, EnvParams, EnvState, is_concrete, spaces
from envs.gridworlds.common import (
    AGENT,
    DIRECTIONS,
    FIRST_OBJECT,
    PALETTE,
    render_grid,
    walled_grid,
)

__all__ = [
    "NUM_ACTIONS",
    "STAY",
    "Demonstrations",
    "MultiSkill",
    "MultiSkillParams",
    "MultiSkillState",
    "check_params",
    "expert_action",
    "rollout_expert",
]

NUM_ACTIONS = 5
STAY = 4
MAX_OBJECTS = PALETTE.shape[0] - FIRST_OBJECT  # one palette colour per object
_MOVES = jnp.concatenate([DIRECTIONS, jnp.zeros((1, 2), jnp.int32)])  # [5, 2] (row, col) steps


@struct.dataclass
class MultiSkillState(EnvState):
    """Positions plus the hidden skill controller (and the inherited step counter ``time``)."""

    agent_pos: jax.Array  # int32 [2] (row, col)
    object_pos: jax.Array  # int32 [num_objects, 2]
    skill: jax.Array  # int32 []: the command for the next action
    skill_steps_left: jax.Array  # int32 []: steps the skill may still govern, >= 1
    boundary: jax.Array  # bool []: the next step opens a skill segment


@struct.dataclass
class MultiSkillParams(EnvParams):
    """Room layout (static) and controller settings (vmappable)."""

    max_steps_in_episode: int = 64
    min_skill_len: int = 4  # skill durations are uniform over [min_skill_len, max_skill_len]
    max_skill_len: int = 12
    reveal_skill: bool = False  # append the current skill's one-hot (else zeros)
    height: int = struct.field(pytree_node=False, default=9)  # rows, walls included
    width: int = struct.field(pytree_node=False, default=9)  # columns, walls included
    num_objects: int = struct.field(pytree_node=False, default=4)  # = number of skills


def _concrete(x: Any) -> np.ndarray | None:
    """``x`` as a numpy array, or None while it is being traced."""
    return np.asarray(x) if is_concrete(x) else None


def check_params(params: MultiSkillParams) -> None:
    """Raise a ValueError naming the problem if ``params`` describe no valid room or controller.

    Static fields are always checked; vmappable fields are checked whenever they are concrete
    (also when batched), and skipped while traced.
    """
    if not isinstance(params, MultiSkillParams):
        raise ValueError(f"MultiSkill: expected MultiSkillParams, got {type(params).__name__}.")
    if params.height < 3 or params.width < 3:
        raise ValueError(
            f"MultiSkill: height and width include the wall border and must be >= 3, "
            f"got {params.height}x{params.width}."
        )
    if not 3 <= params.num_objects <= MAX_OBJECTS:
        raise ValueError(
            f"MultiSkill: num_objects must be in [3, {MAX_OBJECTS}] (a switch needs two other "
            f"skills to choose from; the palette has {MAX_OBJECTS} object colours), "
            f"got {params.num_objects}."
        )
    interior = (params.height - 2) * (params.width - 2)
    if params.num_objects + 1 > interior:
        raise ValueError(
            f"MultiSkill: {params.num_objects} objects and the agent need distinct cells but the "
            f"{params.height}x{params.width} room has {interior} free cells; enlarge the room "
            "or use fewer objects."
        )
    lo, hi = _concrete(params.min_skill_len), _concrete(params.max_skill_len)
    if lo is not None and np.any(lo < 1):
        raise ValueError(f"MultiSkill: min_skill_len must be >= 1, got {lo}.")
    if lo is not None and hi is not None and np.any(lo > hi):
        raise ValueError(
            f"MultiSkill: min_skill_len ({lo}) must not exceed max_skill_len ({hi}); "
            "swap or widen them."
        )
    max_steps = _concrete(params.max_steps_in_episode)
    if max_steps is not None and np.any(max_steps < 1):
        raise ValueError(f"MultiSkill: max_steps_in_episode must be >= 1, got {max_steps}.")


def _draw_skill(
    key: jax.Array, allowed: jax.Array, params: MultiSkillParams
) -> tuple[jax.Array, jax.Array]:
    """A skill uniform over ``allowed`` (bool [num_objects]) and a duration for it."""
    key_skill, key_len = jax.random.split(key)
    skill = jax.random.categorical(key_skill, jnp.where(allowed, 0.0, -jnp.inf))
    steps = jax.random.randint(
        key_len, (), params.min_skill_len, params.max_skill_len + 1, dtype=jnp.int32
    )
    return skill.astype(jnp.int32), steps


class MultiSkill(Environment):
    """Go-to-object skills in a walled room, commanded by a hidden controller."""

    @property
    def default_params(self) -> MultiSkillParams:
        return MultiSkillParams()

    @property
    def num_actions(self) -> int:
        return NUM_ACTIONS

    def action_space(self, params: MultiSkillParams | None = None) -> spaces.Discrete:
        return spaces.Discrete(NUM_ACTIONS)

    def observation_space(self, params: MultiSkillParams) -> spaces.Box:
        size = (
            (params.num_objects + 1) * (params.height + params.width) + 3 * params.num_objects + 2
        )
        return spaces.Box(-1.0, 1.0, (size,), jnp.float32)

    def check_params(self, params: MultiSkillParams) -> None:
        """Raise a ValueError naming a bad setting; see ``check_params``."""
        check_params(params)

    def reset_env(
        self, key: jax.Array, params: MultiSkillParams
    ) -> tuple[jax.Array, MultiSkillState]:
        key_cells, key_skill = jax.random.split(key)
        inner_w = params.width - 2
        num_cells = (params.height - 2) * inner_w
        # distinct interior cells: the top-k of iid uniforms is a uniform ordered sample
        _, cells = jax.lax.top_k(
            jax.random.uniform(key_cells, (num_cells,)), params.num_objects + 1
        )
        pos = jnp.stack([cells // inner_w, cells % inner_w], axis=-1).astype(jnp.int32) + 1
        skill, steps = _draw_skill(key_skill, jnp.ones(params.num_objects, bool), params)
        state = MultiSkillState(
            agent_pos=pos[0],
            object_pos=pos[1:],
            skill=skill,
            skill_steps_left=steps,
            boundary=jnp.array(True),
            time=jnp.int32(0),
        )
        return self.get_obs(state, params), state

    def step_env(
        self,
        key: jax.Array,
        state: MultiSkillState,
        action: jax.Array,
        params: MultiSkillParams,
    ) -> tuple[jax.Array, MultiSkillState, jax.Array, jax.Array, dict]:
        upper = jnp.array([params.height - 2, params.width - 2])
        agent_pos = jnp.clip(state.agent_pos + _MOVES[action], 1, upper)
        reached = jnp.all(agent_pos == state.object_pos[state.skill])
        steps_left = state.skill_steps_left - 1
        switch = reached | (steps_left <= 0)
        # the next skill is another one whose object is not under the agent (so it has a goal)
        allowed = (jnp.arange(params.num_objects) != state.skill) & ~jnp.all(
            state.object_pos == agent_pos, axis=-1
        )
        next_skill, next_steps = _draw_skill(key, allowed, params)
        new_state = state.replace(
            agent_pos=agent_pos,
            skill=jnp.where(switch, next_skill, state.skill),
            skill_steps_left=jnp.where(switch, next_steps, steps_left),
            boundary=switch,
            time=state.time + 1,
        )
        info = {"skill": state.skill, "boundary": state.boundary}
        return (
            self.get_obs(new_state, params),
            new_state,
            reached.astype(jnp.float32),
            jnp.array(False),
            info,
        )

    def get_obs(
        self, state: MultiSkillState, params: MultiSkillParams | None = None, key: Any = None
    ) -> jax.Array:
        """The flat float32 observation [obs_dim] of ``state`` (layout in the module docstring)."""
        params = self.default_params if params is None else params
        pos = jnp.concatenate([state.agent_pos[None], state.object_pos])  # [num_objects + 1, 2]
        rows = jax.nn.one_hot(pos[:, 0], params.height)  # [num_objects + 1, height]
        cols = jax.nn.one_hot(pos[:, 1], params.width)  # [num_objects + 1, width]
        interior = jnp.array([params.height - 3, params.width - 3], jnp.float32)
        offsets = (state.object_pos - state.agent_pos) / interior  # [num_objects, 2]
        reveal = jnp.asarray(params.reveal_skill, jnp.float32)
        skill = jax.nn.one_hot(state.skill, params.num_objects) * reveal
        target = offsets[state.skill] * reveal  # [2] the commanded object's offset
        parts = [jnp.concatenate([rows, cols], -1).ravel(), offsets.ravel(), target, skill]
        return jnp.concatenate(parts).astype(jnp.float32)

    def render(self, state: MultiSkillState, params: MultiSkillParams | None = None) -> jax.Array:
        """RGB uint8 [height*16, width*16, 3]: objects in palette colours, the agent in white."""
        params = self.default_params if params is None else params
        grid = walled_grid(params.height, params.width)
        objects = FIRST_OBJECT + jnp.arange(params.num_objects)
        grid = grid.at[state.object_pos[:, 0], state.object_pos[:, 1]].set(objects)
        grid = grid.at[state.agent_pos[0], state.agent_pos[1]].set(AGENT)
        return render_grid(grid)


def expert_action(
    key: jax.Array,
    state: MultiSkillState,
    params: MultiSkillParams,
    noise: float | jax.Array = 0.0,
) -> jax.Array:
    """The scripted expert's action (int32 []) for the skill commanded in ``state``.

    A uniform choice among the moves that reduce the Manhattan distance to the commanded
    object (stay when already there); with probability ``noise``, a uniform random action.
    """
    noise_value = _concrete(noise)
    if noise_value is not None and np.any((noise_value < 0) | (noise_value > 1)):
        raise ValueError(f"expert_action: noise is a probability in [0, 1], got {noise_value}.")
    key_move, key_noise, key_random = jax.random.split(key, 3)
    delta = state.object_pos[state.skill] - state.agent_pos  # [2]
    # up, right, down, left reduce the distance iff they step towards the object on that axis
    closer = jnp.array([delta[0] < 0, delta[1] > 0, delta[0] > 0, delta[1] < 0])
    closer = jnp.append(closer, ~jnp.any(closer))  # [5]: stay only when on the object
    action = jax.random.categorical(key_move, jnp.where(closer, 0.0, -jnp.inf))
    random_action = jax.random.randint(key_random, (), 0, NUM_ACTIONS)
    action = jnp.where(jax.random.uniform(key_noise) < noise, random_action, action)
    return action.astype(jnp.int32)


class Demonstrations(NamedTuple):
    """An expert rollout; index ``t`` is one step (conventions in the module docstring).

    Leading axes are [T] for one rollout, [N, T] when vmapped over keys.
    """

    obs: jax.Array  # float32 [T, obs_dim]: what the expert saw before acting
    action: jax.Array  # int32 [T]
    reward: jax.Array  # float32 [T]
    next_obs: jax.Array  # float32 [T, obs_dim]: the observation after acting, before any reset
    terminated: jax.Array  # bool [T]: always False here
    truncated: jax.Array  # bool [T]: the episode ends after this step
    skill: jax.Array  # int32 [T]: the skill governing action[t]
    boundary: jax.Array  # bool [T]: t opens a skill segment (episode start or a new skill)


def rollout_expert(
    key: jax.Array,
    env: MultiSkill,
    params: MultiSkillParams,
    num_steps: int,
    noise: float | jax.Array = 0.0,
    render: bool = False,
) -> Demonstrations | tuple[Demonstrations, jax.Array]:
    """``num_steps`` expert steps from a fresh episode (auto-resetting), as [num_steps, ...] arrays
    (``render``: and the frame of each step's state, uint8 [num_steps, H, W, 3]).

    Vmap over ``key`` for a batch of rollouts [N, num_steps, ...].
    """
    check_params(params)
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"rollout_expert: num_steps must be a positive int, got {num_steps!r}.")
    return _rollout(key, env, params, num_steps, noise, render)


@partial(jax.jit, static_argnames=("env", "num_steps", "render"))
def _rollout(
    key: jax.Array,
    env: MultiSkill,
    params: MultiSkillParams,
    num_steps: int,
    noise: float | jax.Array,
    render: bool = False,
) -> Demonstrations | tuple[Demonstrations, jax.Array]:
    key_reset, key_steps = jax.random.split(key)
    obs, state = env.reset(key_reset, params)

    def one_step(
        carry: tuple[jax.Array, MultiSkillState], step_key: jax.Array
    ) -> tuple[tuple[jax.Array, MultiSkillState], Demonstrations]:
        obs, state = carry
        key_act, key_env = jax.random.split(step_key)
        action = expert_action(key_act, state, params, noise)
        next_obs, next_state, reward, terminated, truncated, info = env.step(
            key_env, state, action, params
        )
        step = Demonstrations(
            obs=obs,
            action=action,
            reward=reward,
            next_obs=info["final_observation"],
            terminated=terminated,
            truncated=truncated,
            skill=info["skill"],
            boundary=info["boundary"],
        )
        return (next_obs, next_state), (step, env.render(state, params) if render else ())

    _, (demos, frames) = jax.lax.scan(
        one_step, (obs, state), jax.random.split(key_steps, num_steps)
    )
    return (demos, frames) if render else demos
