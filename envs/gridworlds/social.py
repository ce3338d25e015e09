"""Memory Sequence with a social channel: another agent's play, visible some of the time.

The cultural-accumulation variant of ``MemorySequence`` (Cook et al. 2024, arXiv 2406.00392).
Each episode one demonstration is drawn: ``demo[i]`` is the symbol a demonstrator played at
position ``i`` of the sequence (``num_symbols`` where it never got there). The demonstrator
plays in lockstep with the learner, so at every step the learner is shown the demonstrator's
symbol for its own current position, when the demonstration is visible. Demonstrators are

- a noisy oracle (``demos=None``): the episode's sequence with each symbol replaced by a
  uniformly random one with probability 1 - accuracy. Accuracy is ``oracle_accuracy`` or, when
  that is None, drawn per episode as 1 - 1 / (1 + U * seq_len) with U ~ U(0, 1) (the
  reference's distribution: the mean correct prefix is uniform over 1 .. seq_len + 1);
- recorded play of other agents (``demos`` int32 [num_demos, seq_len], one drawn uniformly per
  episode): the previous generation in cultural accumulation (``agents.cultural``).

Visibility is drawn once per trial, with probability ``visibility`` * (T - 1 - trial) / (T - 1)
when ``visibility_decay`` (1 in the first trial and 0 in the last for ``visibility=1``:
in-context accumulation), else ``visibility`` (annealed over training: in-weights).

Observation: ``MemorySequence``'s, then the shown symbol one-hot [num_symbols + 1] (the last
slot: nothing shown) and the visibility bit [1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.core import Environment, EnvState, is_concrete, spaces
from envs.gridworlds.memory_sequence import (
    MemorySequence,
    MemorySequenceParams,
    MemorySequenceState,
)

__all__ = [
    "SocialMemorySequence",
    "SocialMemorySequenceParams",
    "SocialMemorySequenceState",
    "visibility_probability",
]


@struct.dataclass
class SocialMemorySequenceParams(MemorySequenceParams):
    """MemorySequence's params plus the demonstrators and the visibility schedule."""

    demos: jax.Array | None = None  # int32 [num_demos, seq_len]; None: the noisy oracle
    oracle_accuracy: jax.Array | None = None  # float []; None: drawn per episode
    visibility: float = 1.0  # probability scale of seeing the demonstration in a trial
    visibility_decay: bool = struct.field(pytree_node=False, default=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_social(self)

    @property
    def obs_dim(self) -> int:
        return super().obs_dim + self.num_symbols + 2


@struct.dataclass
class SocialMemorySequenceState(EnvState):
    """The task's state and this episode's demonstration."""

    env_state: MemorySequenceState
    demo: jax.Array  # int32 [seq_len]: num_symbols where the demonstrator never got
    visible: jax.Array  # bool []: the demonstration is shown in the current trial
    time: jax.Array  # int32 []: steps taken in the episode (gymnax truncates on it)


def _check_social(params: SocialMemorySequenceParams) -> None:
    """Raise a ValueError naming a bad demonstration or visibility setting."""
    for name in ("visibility", "oracle_accuracy"):
        value = getattr(params, name)
        if value is not None and is_concrete(value):
            v = np.asarray(value)
            if np.any(~np.isfinite(v)) or np.any(v < 0) or np.any(v > 1):
                raise ValueError(f"SocialMemorySequence: {name} must be in [0, 1], got {value}.")
    demos = params.demos
    if not hasattr(demos, "shape"):  # None, or a placeholder while JAX maps the pytree
        return
    if np.ndim(demos) < 2 or np.shape(demos)[-1] != params.seq_len:
        raise ValueError(
            f"SocialMemorySequence: demos must have shape [num_demos, seq_len={params.seq_len}]"
            f", got {np.shape(demos)}; pass one demonstration as demos[None]."
        )
    if not jnp.issubdtype(demos.dtype, jnp.integer):
        raise ValueError(f"SocialMemorySequence: demos must be integers, got {demos.dtype}.")
    if is_concrete(demos):
        v = np.asarray(demos)
        if v.min() < 0 or v.max() > params.num_symbols:
            raise ValueError(
                f"SocialMemorySequence: demo symbols must be in [0, {params.num_symbols}] "
                f"({params.num_symbols} = not reached), got values in [{v.min()}, {v.max()}]."
            )


def visibility_probability(trial: jax.Array, params: SocialMemorySequenceParams) -> jax.Array:
    """P(the demonstration is visible) in ``trial`` (float32 [])."""
    if not params.visibility_decay:
        return jnp.asarray(params.visibility, jnp.float32)
    remaining = (params.num_trials - 1 - trial) / max(params.num_trials - 1, 1)
    return params.visibility * jnp.clip(remaining, 0.0, 1.0).astype(jnp.float32)


class SocialMemorySequence(Environment):
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

    @property
    def default_params(self) -> SocialMemorySequenceParams:
        return self.in_context_params()

    def action_space(self, params: SocialMemorySequenceParams | None = None) -> spaces.Discrete:
        return self.task.action_space(self.default_params if params is None else params)

    def observation_space(self, params: SocialMemorySequenceParams) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (params.obs_dim,), jnp.float32)

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
        new_trial = task_state.trial != state.env_state.trial
        p_visible = visibility_probability(task_state.trial, params)
        visible = jnp.where(new_trial, jax.random.uniform(key) < p_visible, state.visible)
        state = state.replace(env_state=task_state, visible=visible, time=task_state.time)
        return self.get_obs(state, params), state, reward, terminated, info

    def shown_symbol(
        self, state: SocialMemorySequenceState, params: SocialMemorySequenceParams
    ) -> jax.Array:
        """The symbol shown to the learner (int32 []; num_symbols when nothing is shown)."""
        position = state.env_state.position
        symbol = jnp.sum(jnp.where(jnp.arange(params.seq_len) == position, state.demo, 0))
        return jnp.where(state.visible, symbol, params.num_symbols).astype(jnp.int32)

    def get_obs(
        self,
        state: SocialMemorySequenceState,
        params: SocialMemorySequenceParams,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Flat observation float32 [obs_dim] (layout in the module docstring)."""
        return jnp.concatenate(
            [
                self.task.get_obs(state.env_state, params),
                jax.nn.one_hot(
                    self.shown_symbol(state, params), params.num_symbols + 1, dtype=jnp.float32
                ),
                state.visible.astype(jnp.float32)[None],
            ]
        )

    def expert_action(
        self, state: SocialMemorySequenceState, params: SocialMemorySequenceParams
    ) -> jax.Array:
        """The correct next symbol (int32 [])."""
        return self.task.expert_action(state.env_state, params)

    def render(
        self,
        state: SocialMemorySequenceState,
        params: SocialMemorySequenceParams | None = None,
        tile: int = 16,
    ) -> jax.Array:
        """The task's RGB image (uint8 [tile, seq_len*tile, 3])."""
        return self.task.render(state.env_state, params, tile)
