"""Memory Sequence and Goal Sequence with a social channel: another agent, visible some of the time.

The cultural-accumulation variants of ``MemorySequence`` and ``GoalSequence`` (Cook et al.
2024, arXiv 2406.00392). Each episode one demonstrator is drawn, which plays in lockstep with
the learner and never sees it. The learner is shown what the demonstrator does, when the
demonstrator is visible:

- ``SocialMemorySequence``: the demonstrator's symbol for the learner's own position in the
  sequence, one-hot [num_symbols + 1] (the last slot: nothing shown).
- ``SocialGoalSequence``: the demonstrator's body, a channel [view_size * view_size] over the
  learner's egocentric view (1 in the cell the demonstrator stands on, row-major like the
  view); the demonstrator starts every trial from the learner's start cell and direction.

Demonstrators are either

- a noisy oracle (``demos=None``) of accuracy ``oracle_accuracy`` (when None, drawn per
  episode). Memory Sequence: the episode's sequence with each symbol replaced by a uniformly
  random one with probability 1 - accuracy; the drawn accuracy is 1 - 1 / (1 + U * seq_len),
  U ~ U(0, 1) (the reference's: the mean correct prefix is uniform over 1 .. seq_len + 1).
  Goal Sequence: the shortest-path expert (``GoalSequence.expert_action``) toward its own next
  goal, each move scrambled (a uniformly random action) with probability 1 - accuracy (the
  reference scrambles 20%: ``GOAL_ORACLE_ACCURACY``); the drawn accuracy is U(0, 1);
- recorded play (``demos`` int32 [num_demos, demo_length], one drawn uniformly per episode):
  one trial's actions, ``env.demo_spec(params)`` giving the length and the "no action" code
  (a position never reached / standing still). In cultural accumulation (``skills.cultural``)
  these are the previous generation's.

Visibility is drawn once per trial, with probability ``visibility`` * (T - 1 - trial) / (T - 1)
when ``visibility_decay`` (1 in the first trial and 0 in the last for ``visibility=1``:
in-context accumulation), else ``visibility`` (annealed over training: in-weights).

Observation: the task's, then the social channel, then the visibility bit [1].

A task instance (``draw_task``) can be fixed for every episode (``with_task``): a sequence
(Memory Sequence) or an initial state, i.e. layout, start and hidden order (Goal Sequence).
What cultural accumulation asks of an env is a method of both: ``demo_spec``,
``trial_clock``, ``draw_task``, ``with_task`` and ``check_demonstrators``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.core import Environment, EnvState, is_concrete, spaces
from envs.gridworlds.common import DIRECTIONS
from envs.gridworlds.goal_sequence import (
    NUM_ACTIONS,
    GoalSequence,
    GoalSequenceParams,
    GoalSequenceState,
)
from envs.gridworlds.memory_sequence import (
    MemorySequence,
    MemorySequenceParams,
    MemorySequenceState,
)

__all__ = [
    "GOAL_ORACLE_ACCURACY",
    "SocialGoalSequence",
    "SocialGoalSequenceParams",
    "SocialGoalSequenceState",
    "SocialMemorySequence",
    "SocialMemorySequenceParams",
    "SocialMemorySequenceState",
    "SocialParams",
    "visibility_probability",
]

GOAL_ORACLE_ACCURACY = 0.8  # the reference's Goal Sequence oracle: 20% of moves scrambled


@struct.dataclass
class SocialParams:
    """The social fields both tasks add: demonstrators and the visibility schedule."""

    demos: jax.Array | None = None  # int32 [num_demos, demo_length]; None: the noisy oracle
    oracle_accuracy: jax.Array | float | None = None  # None: drawn per episode
    visibility: float = 1.0  # probability scale of seeing the demonstrator in a trial
    visibility_decay: bool = struct.field(pytree_node=False, default=True)


@struct.dataclass
class SocialMemorySequenceParams(MemorySequenceParams, SocialParams):
    """MemorySequence's params plus the demonstrators and the visibility schedule."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_social(self, "SocialMemorySequence")

    @property
    def obs_dim(self) -> int:
        return super().obs_dim + self.num_symbols + 2


@struct.dataclass
class SocialGoalSequenceParams(GoalSequenceParams, SocialParams):
    """GoalSequence's params, the social fields, and optionally a fixed task instance."""

    initial_state: GoalSequenceState | None = None  # every episode starts here (a fixed task)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_social(self, "SocialGoalSequence")
        goals = getattr(self.initial_state, "goal_pos", None)
        if hasattr(goals, "shape") and tuple(goals.shape[-2:]) != (self.num_goals, 2):
            raise ValueError(
                f"SocialGoalSequence: initial_state.goal_pos must have shape "
                f"[num_goals={self.num_goals}, 2], got {tuple(goals.shape)}; draw the task with "
                "SocialGoalSequence.draw_task under the same params."
            )

    @property
    def obs_dim(self) -> int:
        return super().obs_dim + self.view_size**2 + 1


@struct.dataclass
class SocialMemorySequenceState(EnvState):
    """The task's state and this episode's demonstration."""

    env_state: MemorySequenceState
    demo: jax.Array  # int32 [seq_len]: num_symbols where the demonstrator never got
    visible: jax.Array  # bool []: the demonstrator is shown in the current trial
    time: jax.Array  # int32 []: steps taken in the episode (gymnax truncates on it)


@struct.dataclass
class SocialGoalSequenceState(EnvState):
    """The learner's and the demonstrator's states in one layout."""

    env_state: GoalSequenceState  # the learner
    partner: GoalSequenceState  # the demonstrator: same layout, order and trial clock
    demo_index: jax.Array  # int32 []: the recorded demonstration replayed (unused by oracles)
    accuracy: jax.Array  # float32 []: the oracle's probability of an unscrambled move
    visible: jax.Array  # bool []
    time: jax.Array  # int32 []


def visibility_probability(trial: jax.Array, params: SocialParams) -> jax.Array:
    """P(the demonstrator is visible) in ``trial`` (float32 [])."""
    if not params.visibility_decay:
        return jnp.asarray(params.visibility, jnp.float32)
    remaining = (params.num_trials - 1 - trial) / max(params.num_trials - 1, 1)
    return params.visibility * jnp.clip(remaining, 0.0, 1.0).astype(jnp.float32)


def _check_social(params: Any, env_name: str) -> None:
    """Raise a ValueError naming a bad demonstration or visibility setting."""
    for name in ("visibility", "oracle_accuracy"):
        value = getattr(params, name)
        if value is not None and is_concrete(value):
            v = np.asarray(value)
            if np.any(~np.isfinite(v)) or np.any(v < 0) or np.any(v > 1):
                raise ValueError(f"{env_name}: {name} must be in [0, 1], got {value}.")
    demos = params.demos
    if not hasattr(demos, "shape"):  # None, or a placeholder while JAX maps the pytree
        return
    length = params.seq_len if isinstance(params, MemorySequenceParams) else params.trial_length
    none = params.num_symbols if isinstance(params, MemorySequenceParams) else NUM_ACTIONS
    if np.ndim(demos) < 2 or (is_concrete(length) and np.any(np.shape(demos)[-1] != length)):
        raise ValueError(
            f"{env_name}: demos must have shape [num_demos, {length}] (one trial's actions), "
            f"got {np.shape(demos)}; pass one demonstration as demos[None]."
        )
    if not jnp.issubdtype(demos.dtype, jnp.integer):
        raise ValueError(f"{env_name}: demos must be integers, got {demos.dtype}.")
    if is_concrete(demos):
        v = np.asarray(demos)
        if v.min() < 0 or v.max() > none:
            raise ValueError(
                f"{env_name}: demo actions must be in [0, {none}] ({none} = no action), got "
                f"values in [{v.min()}, {v.max()}]."
            )


class _SocialEnv(Environment):
    """What both social tasks share: the wrapped task, spaces, the visibility draw, the
    observation layout (task's, social channel, visibility bit) and the expert."""

    task: Environment

    def action_space(self, params: Any = None) -> spaces.Discrete:
        return self.task.action_space(self.default_params if params is None else params)

    def observation_space(self, params: Any) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (params.obs_dim,), jnp.float32)

    def social_obs(self, state: Any, params: Any) -> jax.Array:
        """The social channel (float32 [channel], zeros when invisible)."""
        raise NotImplementedError

    def get_obs(self, state: Any, params: Any, key: jax.Array | None = None) -> jax.Array:
        """Flat observation float32 [obs_dim]: the task's, the social channel, the bit."""
        return jnp.concatenate(
            [
                self.task.get_obs(state.env_state, params),
                self.social_obs(state, params),
                state.visible.astype(jnp.float32)[None],
            ]
        )

    @staticmethod
    def _redraw_visible(
        u: jax.Array, old: Any, new: Any, visible: jax.Array, params: Any
    ) -> jax.Array:
        """Visibility after a step from task state ``old`` to ``new`` (u ~ U(0, 1))."""
        p_visible = visibility_probability(new.trial, params)
        return jnp.where(new.trial != old.trial, u < p_visible, visible)

    def expert_action(self, state: Any, params: Any) -> jax.Array:
        """The task's expert action for the learner (int32 [])."""
        return self.task.expert_action(state.env_state, params)

    def demo_spec(self, params: Any) -> tuple[int, int]:
        """(length of one trial's demonstration, the code for "no action")."""
        return self.task.demo_spec(params)

    def trial_clock(self, state: Any) -> tuple[jax.Array, jax.Array]:
        """(trials completed, index of the learner's next action within the trial), int32
        (shaped like ``state``'s leaves)."""
        return self.task.trial_clock(state.env_state)

    def check_demonstrators(self, params: Any, in_context: bool) -> None:
        """Raise a ValueError unless ``params`` suit in-context accumulation (visibility
        decaying over the trials, ``in_context_params``) or in-weights accumulation (constant
        visibility and a ``demos`` array to replace, ``in_weights_params(..., demos=...)``)."""
        name = type(self).__name__
        if not isinstance(params, SocialParams):
            raise ValueError(
                f"{name}: expected its social params, got {type(params).__name__}; build them "
                f"with {name}.in_context_params or in_weights_params."
            )
        if in_context and not params.visibility_decay:
            raise ValueError(
                f"{name}: in-context generations need visibility decaying over the trials; "
                f"build the params with {name}.in_context_params (visibility_decay=True)."
            )
        if not in_context and (params.visibility_decay or params.demos is None):
            raise ValueError(
                f"{name}: in-weights generations need constant visibility and recorded "
                f"demonstrators; build the params with {name}.in_weights_params(..., "
                "demos=...) (visibility_decay=False and a demos array to replace)."
            )


class SocialMemorySequence(_SocialEnv):
    """Memory Sequence with a demonstrator's symbols in the observation; see the module."""

    def __init__(self) -> None:
        super().__init__()
        self.task = MemorySequence()

    @staticmethod
    def in_context_params(
        num_symbols: int = 3, seq_len: int = 24, num_trials: int = 4, **social
    ) -> SocialMemorySequenceParams:
        """A new sequence every episode, visibility decaying over its trials."""
        return SocialMemorySequenceParams(
            num_symbols=num_symbols, seq_len=seq_len, num_trials=num_trials, **social
        )

    @staticmethod
    def in_weights_params(
        key: jax.Array | int = 0, num_symbols: int = 10, seq_len: int = 24, **social
    ) -> SocialMemorySequenceParams:
        """One fixed sequence from ``key``, one trial, constant (annealable) visibility."""
        base = MemorySequence.in_weights_params(key, num_symbols, seq_len, num_trials=1)
        social = {"visibility_decay": False, **social}
        return SocialMemorySequenceParams(
            **{f: getattr(base, f) for f in base.__dataclass_fields__}, **social
        )

    @staticmethod
    def draw_task(key: jax.Array, params: MemorySequenceParams) -> jax.Array:
        """A task instance: a sequence int32 [seq_len]."""
        return jax.random.randint(key, (params.seq_len,), 0, params.num_symbols)

    @staticmethod
    def with_task(params: MemorySequenceParams, task: jax.Array) -> MemorySequenceParams:
        """``params`` (social or plain) whose every episode has the sequence ``task``."""
        return params.replace(fixed_sequence=True, sequence=task)

    @property
    def default_params(self) -> SocialMemorySequenceParams:
        return self.in_context_params()

    def reset_env(
        self, key: jax.Array, params: SocialMemorySequenceParams
    ) -> tuple[jax.Array, SocialMemorySequenceState]:
        """A new episode with a new demonstration; obs float32 [obs_dim]."""
        k_task, k_draw = jax.random.split(key)
        _, task_state = self.task.reset_env(k_task, params)
        # one draw for everything (each random call costs compile time): the accuracy, the
        # demonstration's index, the visibility, then per symbol: kept?, the noise symbol
        u = jax.random.uniform(k_draw, (3 + 2 * params.seq_len,))
        if params.demos is None:
            accuracy = params.oracle_accuracy
            if accuracy is None:
                accuracy = 1.0 - 1.0 / (1.0 + u[0] * params.seq_len)
            keep = u[3 : 3 + params.seq_len] < accuracy
            noise = (u[3 + params.seq_len :] * params.num_symbols).astype(jnp.int32)
            demo = jnp.where(keep, task_state.sequence, jnp.minimum(noise, params.num_symbols - 1))
        else:
            num_demos = params.demos.shape[0]
            index = jnp.minimum((u[1] * num_demos).astype(jnp.int32), num_demos - 1)
            demo = params.demos[index]
        visible = u[2] < visibility_probability(jnp.int32(0), params)
        state = SocialMemorySequenceState(
            env_state=task_state,
            demo=demo.astype(jnp.int32),
            visible=visible,
            time=task_state.time,
        )
        return self.get_obs(state, params), state

    def step_env(
        self,
        key: jax.Array,
        state: SocialMemorySequenceState,
        action: jax.Array,
        params: SocialMemorySequenceParams,
    ) -> tuple[jax.Array, SocialMemorySequenceState, jax.Array, jax.Array, dict]:
        """One symbol; visibility is redrawn when a trial ends."""
        _, task_state, reward, terminated, info = self.task.step_env(
            key, state.env_state, action, params
        )
        u = jax.random.uniform(key)
        visible = self._redraw_visible(u, state.env_state, task_state, state.visible, params)
        state = state.replace(env_state=task_state, visible=visible, time=task_state.time)
        return self.get_obs(state, params), state, reward, terminated, info

    def shown_symbol(
        self, state: SocialMemorySequenceState, params: SocialMemorySequenceParams
    ) -> jax.Array:
        """The symbol shown to the learner (int32 []; num_symbols when nothing is shown)."""
        position = state.env_state.position
        symbol = jnp.sum(jnp.where(jnp.arange(params.seq_len) == position, state.demo, 0))
        return jnp.where(state.visible, symbol, params.num_symbols).astype(jnp.int32)

    def social_obs(
        self, state: SocialMemorySequenceState, params: SocialMemorySequenceParams
    ) -> jax.Array:
        """The shown symbol one-hot, float32 [num_symbols + 1]."""
        shown = self.shown_symbol(state, params)
        return jax.nn.one_hot(shown, params.num_symbols + 1, dtype=jnp.float32)

    def render(
        self,
        state: SocialMemorySequenceState,
        params: SocialMemorySequenceParams | None = None,
        tile: int = 16,
    ) -> jax.Array:
        """The task's RGB image (uint8 [tile, seq_len*tile, 3])."""
        return self.task.render(state.env_state, params, tile)


class SocialGoalSequence(_SocialEnv):
    """Goal Sequence with a demonstrator's body in the observation; see the module."""

    def __init__(self) -> None:
        super().__init__()
        self.task = GoalSequence()

    @staticmethod
    def in_context_params(
        num_trials: int = 4, oracle_accuracy: float | None = GOAL_ORACLE_ACCURACY, **kwargs
    ) -> SocialGoalSequenceParams:
        """A new layout every episode, visibility decaying over its trials; ``kwargs`` are
        GoalSequence's (size, num_goals, trial_length, view_size) and the social fields."""
        return SocialGoalSequenceParams(
            num_trials=num_trials, oracle_accuracy=oracle_accuracy, **kwargs
        )

    @staticmethod
    def in_weights_params(
        key: jax.Array | int = 0, oracle_accuracy: float | None = GOAL_ORACLE_ACCURACY, **kwargs
    ) -> SocialGoalSequenceParams:
        """One fixed layout from ``key``, one trial, constant (annealable) visibility."""
        key = jax.random.key(key) if isinstance(key, (int, np.integer)) else key
        kwargs = {"num_trials": 1, "visibility_decay": False, **kwargs}
        params = SocialGoalSequenceParams(oracle_accuracy=oracle_accuracy, **kwargs)
        return SocialGoalSequence.with_task(params, SocialGoalSequence.draw_task(key, params))

    @staticmethod
    def draw_task(key: jax.Array, params: GoalSequenceParams) -> GoalSequenceState:
        """A task instance: an initial state (layout, start, hidden order)."""
        return GoalSequence().reset_env(key, params)[1]

    @staticmethod
    def with_task(
        params: SocialGoalSequenceParams, task: GoalSequenceState
    ) -> SocialGoalSequenceParams:
        """``params`` whose every episode starts from ``task`` (from ``draw_task``)."""
        return params.replace(initial_state=task)

    @property
    def default_params(self) -> SocialGoalSequenceParams:
        return self.in_context_params()

    def reset_env(
        self, key: jax.Array, params: SocialGoalSequenceParams
    ) -> tuple[jax.Array, SocialGoalSequenceState]:
        """A new episode (a new layout unless fixed) and demonstrator; obs float32 [obs_dim]."""
        k_task, k_draw = jax.random.split(key)
        if params.initial_state is None:
            _, task_state = self.task.reset_env(k_task, params)
        else:
            task_state = params.initial_state
        u = jax.random.uniform(k_draw, (3,))  # the accuracy, the demonstration, the visibility
        accuracy = u[0] if params.oracle_accuracy is None else params.oracle_accuracy
        num_demos = 1 if params.demos is None else params.demos.shape[0]
        state = SocialGoalSequenceState(
            env_state=task_state,
            partner=task_state,
            demo_index=jnp.minimum((u[1] * num_demos).astype(jnp.int32), num_demos - 1),
            accuracy=jnp.asarray(accuracy, jnp.float32),
            visible=u[2] < visibility_probability(jnp.int32(0), params),
            time=task_state.time,
        )
        return self.get_obs(state, params), state

    def partner_action(
        self, key: jax.Array, state: SocialGoalSequenceState, params: SocialGoalSequenceParams
    ) -> jax.Array:
        """The demonstrator's next action (int32 []; NUM_ACTIONS stands still)."""
        if params.demos is not None:
            demo = params.demos[state.demo_index]  # [trial_length]
            t = state.partner.trial_time
            return jnp.sum(jnp.where(jnp.arange(demo.shape[0]) == t, demo, 0)).astype(jnp.int32)
        u = jax.random.uniform(key, (2,))
        scrambled = (u[1] * NUM_ACTIONS).astype(jnp.int32)
        expert = self.task.expert_action(state.partner, params)
        return jnp.where(u[0] < state.accuracy, expert, scrambled).astype(jnp.int32)

    def step_env(
        self,
        key: jax.Array,
        state: SocialGoalSequenceState,
        action: jax.Array,
        params: SocialGoalSequenceParams,
    ) -> tuple[jax.Array, SocialGoalSequenceState, jax.Array, jax.Array, dict]:
        """Both agents move; visibility is redrawn when a trial ends."""
        k_partner, k_visible = jax.random.split(key)
        _, task_state, reward, terminated, info = self.task.step_env(
            key, state.env_state, action, params
        )
        partner_action = self.partner_action(k_partner, state, params)
        _, partner, *_ = self.task.step_env(key, state.partner, partner_action, params)
        u = jax.random.uniform(k_visible)
        visible = self._redraw_visible(u, state.env_state, task_state, state.visible, params)
        state = state.replace(
            env_state=task_state, partner=partner, visible=visible, time=task_state.time
        )
        return self.get_obs(state, params), state, reward, terminated, info

    def social_obs(
        self, state: SocialGoalSequenceState, params: SocialGoalSequenceParams
    ) -> jax.Array:
        """The demonstrator's cell in the learner's egocentric view, float32 [view_size**2]."""
        radius = params.view_size // 2
        me = state.env_state
        d_row, d_col = DIRECTIONS[me.direction]
        offset = state.partner.pos - me.pos
        ahead = offset[0] * d_row + offset[1] * d_col  # cells in front of the learner
        right = offset[0] * d_col - offset[1] * d_row  # cells to its right
        seen = state.visible & (jnp.abs(ahead) <= radius) & (jnp.abs(right) <= radius)
        cell = (radius - ahead) * params.view_size + radius + right  # view row 0: furthest ahead
        return ((jnp.arange(params.view_size**2) == cell) & seen).astype(jnp.float32)

    def render(
        self,
        state: SocialGoalSequenceState,
        params: SocialGoalSequenceParams | None = None,
        tile: int = 16,
    ) -> jax.Array:
        """The task's RGB image with the demonstrator, when visible, as a grey square."""
        image = self.task.render(state.env_state, params, tile)
        rows = jnp.arange(image.shape[0])[:, None] // tile
        cols = jnp.arange(image.shape[1])[None, :] // tile
        inner = (jnp.arange(image.shape[0]) % tile >= tile // 4)[:, None] & (
            jnp.arange(image.shape[1]) % tile >= tile // 4
        )[None, :]
        partner = (rows == state.partner.pos[0]) & (cols == state.partner.pos[1]) & inner
        mask = (partner & state.visible & (tile > 3))[..., None]
        return jnp.where(mask, jnp.uint8(150), image)
