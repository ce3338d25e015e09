"""Goal Sequence: visit coloured goals in a hidden order, over several trials of one layout.

A ``size`` x ``size`` room (wall border around it) holds ``num_goals`` coloured goals. At an
episode's reset the goal cells, the agent's start cell and direction, and a hidden order (a
random permutation of the goals) are drawn; all of them stay for every trial of the episode.

- Actions: 0 turn left, 1 turn right, 2 forward (walls block).
- Reward: +1 for stepping onto the goal that is next in the hidden order (the pointer then
  advances cyclically, so the order can be repeated within a trial), -1 for stepping onto any
  other goal (pointer unchanged). Turning on a goal or bumping a wall from it gives 0.
- Trials: each lasts ``trial_length`` steps; then the agent returns to its start cell and
  direction and the pointer to the first goal. After ``num_trials`` trials the episode
  terminates. ``max_steps_in_episode`` is only a safety limit for truncation.

Observation (float32, flat): the ``view_size`` x ``view_size`` egocentric view centred on the
agent and rotated so that the agent faces up (row 0 is furthest ahead), one-hot per cell over
{empty, wall, goal 0, ..., goal num_goals-1} (cells outside the map are walls), then the
direction one-hot [4], the trial index one-hot [num_trials] (all zeros in the final observation
of an episode, when every trial is over), and the last reward one-hot over {-1, 0, +1}.
``params.view_shape`` gives the view's shape: ``obs[: prod(view_shape)].reshape(view_shape)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.core import Environment, EnvParams, EnvState, is_concrete, spaces
from envs.gridworlds.common import AGENT, FIRST_OBJECT, PALETTE, render_grid, walled_grid

__all__ = ["NUM_ACTIONS", "GoalSequence", "GoalSequenceParams", "GoalSequenceState"]

NUM_ACTIONS = 3
LEFT, RIGHT, FORWARD = 0, 1, 2
MAX_GOALS = PALETTE.shape[0] - FIRST_OBJECT  # one palette colour per goal
_WRONG_GOAL_COST = 1000.0  # the expert's cost of stepping onto a wrong goal: above any path


@struct.dataclass
class GoalSequenceParams(EnvParams):
    """Shape-fixing settings are static; ``trial_length`` and the step limit are vmappable."""

    max_steps_in_episode: int = 4096  # safety limit; episodes end after num_trials*trial_length
    trial_length: int = 50
    size: int = struct.field(pytree_node=False, default=7)  # walkable cells per side
    num_goals: int = struct.field(pytree_node=False, default=3)
    num_trials: int = struct.field(pytree_node=False, default=4)
    view_size: int = struct.field(pytree_node=False, default=5)  # odd

    def __post_init__(self) -> None:
        _check_params(self)

    @property
    def view_shape(self) -> tuple[int, int, int]:
        """(view_size, view_size, channels) of the egocentric view at the front of the obs."""
        return (self.view_size, self.view_size, 2 + self.num_goals)

    @property
    def obs_dim(self) -> int:
        """Length of the flat observation."""
        return math.prod(self.view_shape) + 4 + self.num_trials + 3


@struct.dataclass
class GoalSequenceState(EnvState):
    """Positions and counters only; the map is implied by ``size`` and the goal cells."""

    pos: jax.Array  # int32 [2] (row, col) in map coordinates (walls at 0 and size + 1)
    direction: jax.Array  # int32 []: 0 up, 1 right, 2 down, 3 left
    start_pos: jax.Array  # int32 [2]
    start_direction: jax.Array  # int32 []
    goal_pos: jax.Array  # int32 [num_goals, 2]
    order: jax.Array  # int32 [num_goals]: order[k] is the k-th goal to visit
    pointer: jax.Array  # int32 []: index into order of the next goal
    trial: jax.Array  # int32 []: trials completed so far
    trial_time: jax.Array  # int32 []: steps taken in the current trial
    last_reward: jax.Array  # float32 []
    time: jax.Array  # int32 []: steps taken in the episode


def _check_params(params: GoalSequenceParams) -> None:
    """Raise a ValueError naming the bad setting; leaf values are checked when concrete."""
    if params.size < 2:
        raise ValueError(f"GoalSequence: size must be >= 2, got {params.size}.")
    if not 1 <= params.num_goals <= MAX_GOALS:
        raise ValueError(
            f"GoalSequence: num_goals must be in [1, {MAX_GOALS}] (one colour each), "
            f"got {params.num_goals}."
        )
    if params.num_goals + 1 > params.size**2:
        raise ValueError(
            f"GoalSequence: {params.num_goals} goals and the start need distinct cells but the "
            f"room has {params.size**2}; increase size or lower num_goals."
        )
    if params.num_trials < 1:
        raise ValueError(f"GoalSequence: num_trials must be >= 1, got {params.num_trials}.")
    if params.view_size < 1 or params.view_size % 2 == 0:
        raise ValueError(
            f"GoalSequence: view_size must be odd and >= 1 (the agent sits at its centre), "
            f"got {params.view_size}."
        )
    for name in ("trial_length", "max_steps_in_episode"):
        value = getattr(params, name)
        if is_concrete(value) and np.any(np.asarray(value) < 1):
            raise ValueError(f"GoalSequence: {name} must be >= 1, got {value}.")


def _draw_distinct(draws: jax.Array) -> jax.Array:
    """Distinct values from sequential draws: ``draws[i]`` uniform in [0, n - i) -> int32 [k].

    Value ``i`` is the ``draws[i]``-th value (0-based) not taken by values ``0..i-1``, so the
    result is a uniformly random ordered k-subset of [0, n) (a permutation when k == n). It
    costs O(k^3) elementwise operations and no sort.
    """
    picked = []
    for i in range(draws.shape[0]):
        x = draws[i]
        for _ in range(i):  # x <- draws[i] + #{taken <= x} reaches its fixed point in i rounds
            x = draws[i] + sum((p <= x).astype(jnp.int32) for p in picked)
        picked.append(x)
    return jnp.stack(picked)


def _target(state: GoalSequenceState) -> jax.Array:
    """The goal (int32 []) next in the hidden order: ``order[pointer]`` without a gather."""
    return jnp.sum(jnp.where(jnp.arange(state.order.shape[-1]) == state.pointer, state.order, 0))


def _forward_vector(direction: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(row, col) step of ``direction`` (0 up, 1 right, 2 down, 3 left), without a gather."""
    d_row = (direction == 2).astype(jnp.int32) - (direction == 0).astype(jnp.int32)
    d_col = (direction == 1).astype(jnp.int32) - (direction == 3).astype(jnp.int32)
    return d_row, d_col


class GoalSequence(Environment):
    """Goal Sequence gridworld (gymnax 1.x interface); see the module docstring."""

    @property
    def default_params(self) -> GoalSequenceParams:
        return GoalSequenceParams()

    def action_space(self, params: GoalSequenceParams | None = None) -> spaces.Discrete:
        return spaces.Discrete(NUM_ACTIONS)

    def observation_space(self, params: GoalSequenceParams) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (params.obs_dim,), jnp.float32)

    @property
    def num_actions(self) -> int:
        return NUM_ACTIONS

    @staticmethod
    def demo_spec(params: GoalSequenceParams) -> tuple[int, int]:
        """(actions in one trial, the code recorded for "stand still": NUM_ACTIONS)."""
        if not is_concrete(params.trial_length) or np.ndim(params.trial_length):
            raise ValueError(
                "GoalSequence: recording needs one concrete trial_length (it fixes the shape of "
                f"a demonstration), got {params.trial_length}; close over the params, do not "
                "vmap trial_length."
            )
        return int(params.trial_length), NUM_ACTIONS

    @staticmethod
    def trial_clock(state: GoalSequenceState) -> tuple[jax.Array, jax.Array]:
        """(trials completed, index of the next action within the trial), int32 (shaped like
        ``state``'s leaves, so batched states work too)."""
        return state.trial, state.trial_time

    def reset_env(
        self, key: jax.Array, params: GoalSequenceParams
    ) -> tuple[jax.Array, GoalSequenceState]:
        """A new layout, start and hidden order; obs float32 [obs_dim]."""
        n_cells, n_goals = params.size**2, params.num_goals
        # one draw of random bits for: distinct cells (goals, then the start), a direction, and
        # the order; ``bits % n`` is uniform up to a bias below n / 2**32 (randint's exact
        # rejection-free method costs twice the bits and is a large share of this cheap reset)
        cell_max = [n_cells - i for i in range(n_goals + 1)]
        order_max = [n_goals - i for i in range(n_goals)]
        ranges = np.array(cell_max + [4] + order_max, np.uint32)
        draws = (jax.random.bits(key, ranges.shape, jnp.uint32) % ranges).astype(jnp.int32)
        cells = _draw_distinct(draws[: n_goals + 1])  # [num_goals + 1] flat interior indices
        rowcol = jnp.stack([cells // params.size, cells % params.size], axis=-1) + 1
        state = GoalSequenceState(
            pos=rowcol[n_goals],
            direction=draws[n_goals + 1],
            start_pos=rowcol[n_goals],
            start_direction=draws[n_goals + 1],
            goal_pos=rowcol[:n_goals],
            order=_draw_distinct(draws[n_goals + 2 :]),
            pointer=jnp.int32(0),
            trial=jnp.int32(0),
            trial_time=jnp.int32(0),
            last_reward=jnp.float32(0.0),
            time=jnp.int32(0),
        )
        return self.get_obs(state, params), state

    def step_env(
        self,
        key: jax.Array,
        state: GoalSequenceState,
        action: jax.Array,
        params: GoalSequenceParams,
    ) -> tuple[jax.Array, GoalSequenceState, jax.Array, jax.Array, dict]:
        """One step (``key`` unused: transitions are deterministic)."""
        d_row, d_col = _forward_vector(state.direction)
        ahead = state.pos + jnp.stack([d_row, d_col])
        moved = (action == FORWARD) & jnp.all((ahead >= 1) & (ahead <= params.size))
        pos = jnp.where(moved, ahead, state.pos)
        turn = (action == RIGHT).astype(jnp.int32) - (action == LEFT).astype(jnp.int32)
        direction = (state.direction + turn) % 4

        entered = moved & jnp.all(state.goal_pos == pos, axis=-1)  # [num_goals]
        hit = jnp.any(entered & (jnp.arange(params.num_goals) == _target(state)))
        miss = jnp.any(entered) & ~hit
        reward = hit.astype(jnp.float32) - miss.astype(jnp.float32)
        pointer = jnp.where(hit, (state.pointer + 1) % params.num_goals, state.pointer)

        trial_time = state.trial_time + 1
        trial_over = trial_time >= params.trial_length
        state = state.replace(
            pos=jnp.where(trial_over, state.start_pos, pos),
            direction=jnp.where(trial_over, state.start_direction, direction),
            pointer=jnp.where(trial_over, 0, pointer),
            trial=state.trial + trial_over.astype(jnp.int32),
            trial_time=jnp.where(trial_over, 0, trial_time),
            last_reward=reward,
            time=state.time + 1,
        )
        terminated = state.trial >= params.num_trials
        return self.get_obs(state, params), state, reward, terminated, {}

    def get_obs(
        self, state: GoalSequenceState, params: GoalSequenceParams, key: jax.Array | None = None
    ) -> jax.Array:
        """Flat observation float32 [obs_dim] (layout in the module docstring)."""
        radius = params.view_size // 2
        ahead = np.arange(radius, -radius - 1, -1)  # view row i is ``ahead[i]`` cells forward
        right = np.arange(-radius, radius + 1)  # view column j is ``right[j]`` cells rightward
        fwd_n = np.repeat(ahead, params.view_size)  # [V*V]
        right_n = np.tile(right, params.view_size)  # [V*V]
        # facing (d_row, d_col), so the agent's right is (d_col, -d_row)
        d_row, d_col = _forward_vector(state.direction)
        rows = state.pos[0] + fwd_n * d_row + right_n * d_col  # [V*V]
        cols = state.pos[1] + fwd_n * d_col - right_n * d_row  # [V*V]
        wall = (rows < 1) | (rows > params.size) | (cols < 1) | (cols > params.size)
        goal = (rows[:, None] == state.goal_pos[:, 0]) & (cols[:, None] == state.goal_pos[:, 1])
        empty = ~wall & ~jnp.any(goal, axis=-1)
        view = jnp.concatenate([empty[:, None], wall[:, None], goal], axis=-1)  # [V*V, C]
        reward_id = state.last_reward.astype(jnp.int32) + 1
        return jnp.concatenate(
            [
                view.reshape(-1).astype(jnp.float32),
                jax.nn.one_hot(state.direction, 4, dtype=jnp.float32),
                jax.nn.one_hot(state.trial, params.num_trials, dtype=jnp.float32),
                jax.nn.one_hot(reward_id, 3, dtype=jnp.float32),
            ]
        )

    def render(
        self, state: GoalSequenceState, params: GoalSequenceParams | None = None, tile: int = 16
    ) -> jax.Array:
        """RGB uint8 [(size+2)*tile, (size+2)*tile, 3]: goals in colour, the agent in white
        with a dark band on the side it faces."""
        params = self.default_params if params is None else params
        grid = walled_grid(params.size + 2, params.size + 2)
        grid = grid.at[state.goal_pos[:, 0], state.goal_pos[:, 1]].set(
            FIRST_OBJECT + jnp.arange(params.num_goals)
        )
        grid = grid.at[state.pos[0], state.pos[1]].set(AGENT)
        image = render_grid(grid, tile)
        pix_row = jnp.arange(image.shape[0])[:, None] - state.pos[0] * tile  # [H, 1]
        pix_col = jnp.arange(image.shape[1])[None, :] - state.pos[1] * tile  # [1, W]
        inside = (pix_row >= 1) & (pix_row < tile) & (pix_col >= 1) & (pix_col < tile)
        band = max(tile // 4, 1)
        sides = [
            pix_row < 1 + band,
            pix_col >= tile - band,
            pix_row >= tile - band,
            pix_col < 1 + band,
        ]
        facing = jnp.stack([jnp.broadcast_to(m, image.shape[:2]) for m in sides])[state.direction]
        return jnp.where((inside & facing)[..., None], jnp.uint8(90), image)

    def expert_action(self, state: GoalSequenceState, params: GoalSequenceParams) -> jax.Array:
        """A shortest-path action (int32 []) toward the next goal of the hidden order.

        Distances are over (cell, direction) states by value iteration; stepping onto a wrong
        goal costs more than any path, so wrong goals are crossed only when they wall the
        target off. Ties go to the lowest action id.
        """
        q = _action_values(state, params)  # [3]
        return jnp.argmin(q).astype(jnp.int32)


def _transition_tables(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Index tables over flat (direction, row, col) states of the interior, [4 * size * size]
    each: after left, after right, after forward, and whether forward moves."""
    d, r, c = np.meshgrid(np.arange(4), np.arange(size), np.arange(size), indexing="ij")
    steps = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])
    nr, nc = r + steps[d, 0], c + steps[d, 1]
    moves = (nr >= 0) & (nr < size) & (nc >= 0) & (nc < size)
    nr, nc = np.where(moves, nr, r), np.where(moves, nc, c)

    def flat(dd: np.ndarray, rr: np.ndarray, cc: np.ndarray) -> np.ndarray:
        return ((dd * size + rr) * size + cc).reshape(-1)

    return (
        flat((d - 1) % 4, r, c),
        flat((d + 1) % 4, r, c),
        flat(d, nr, nc),
        moves.reshape(-1),
    )


def _action_values(state: GoalSequenceState, params: GoalSequenceParams) -> jax.Array:
    """Cost-to-reward of each action from ``state`` (float32 [3]) by value iteration."""
    size = params.size
    left, right, fwd, moves = _transition_tables(size)
    n_states = left.shape[0]
    goal_ids = jnp.arange(params.num_goals)
    target = _target(state)
    goal_cells = (state.goal_pos[:, 0] - 1) * size + state.goal_pos[:, 1] - 1  # [num_goals]
    cell_of = np.arange(n_states) % (size * size)  # [S]
    fwd_cell = cell_of[fwd]  # [S]
    on_goal = fwd_cell[:, None] == goal_cells  # [S, num_goals]
    enters_target = moves & jnp.any(on_goal & (goal_ids == target), axis=-1)  # [S]
    enters_wrong = moves & jnp.any(on_goal & (goal_ids != target), axis=-1)  # [S]
    fwd_cost = 1.0 + _WRONG_GOAL_COST * enters_wrong  # [S]

    def q_values(dist: jax.Array) -> jax.Array:  # [S] -> [S, 3]
        return jnp.stack(
            [
                1.0 + dist[left],
                1.0 + dist[right],
                fwd_cost + jnp.where(enters_target, 0.0, dist[fwd]),
            ],
            axis=-1,
        )

    def improve(carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        dist, _ = carry
        new = jnp.min(q_values(dist), axis=-1)
        return new, jnp.any(new < dist)

    far = jnp.full((n_states,), jnp.inf, jnp.float32)
    dist, _ = jax.lax.while_loop(lambda c: c[1], improve, (far, jnp.bool_(True)))
    index = (state.direction * size + state.pos[0] - 1) * size + state.pos[1] - 1
    return q_values(dist)[index]
