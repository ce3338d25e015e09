"""Memory Sequence: reproduce a hidden sequence of symbols, one symbol (action) per step.

The agent must play a hidden sequence of ``seq_len`` symbols from an alphabet of
``num_symbols``. The correct next symbol earns +1; a wrong one earns -1 and ends the trial;
reproducing the whole sequence ends the trial too. After ``num_trials`` trials the episode
terminates. ``max_steps_in_episode`` is only a safety limit for truncation.

Two variants, chosen by static params (helpers build each):

- in-weights (``fixed_sequence=True``): the sequence is ``params.sequence``, the same in every
  episode, so it can only be learned in the weights (reference: 10 symbols, length 24, 1 trial);
  ``MemorySequence.in_weights_params``.
- in-context (``fixed_sequence=False``, the default): a new random sequence at every episode
  reset, kept across its trials (reference: 3 symbols, length 24, 4 trials);
  ``MemorySequence.in_context_params``.

Observation (float32, flat, ``num_symbols + num_trials + 5``): the agent's own last action
one-hot [num_symbols + 1] (the last slot means "none": a trial starts now), the last reward
one-hot over {-1, 0, +1}, a trial-start flag [1] (1 when the next action is a trial's first),
and the trial index one-hot [num_trials] (all zeros in the final observation of an episode).
There is deliberately no position or time index: a memoryless policy cannot tell where it is
in the sequence.
"""

from __future__ import annotations

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.core import Environment, EnvParams, EnvState, is_concrete, spaces

__all__ = ["MemorySequence", "MemorySequenceParams", "MemorySequenceState"]


@struct.dataclass
class MemorySequenceParams(EnvParams):
    """Shape-fixing settings are static; the fixed sequence and step limit are vmappable."""

    max_steps_in_episode: int = 4096  # safety limit; episodes end after num_trials trials
    sequence: jax.Array | None = None  # int32 [seq_len]: the fixed sequence (in-weights only)
    num_symbols: int = struct.field(pytree_node=False, default=3)
    seq_len: int = struct.field(pytree_node=False, default=24)
    num_trials: int = struct.field(pytree_node=False, default=4)
    fixed_sequence: bool = struct.field(pytree_node=False, default=False)

    def __post_init__(self) -> None:
        _check_params(self)

    @property
    def obs_dim(self) -> int:
        """Length of the flat observation."""
        return self.num_symbols + 1 + 3 + 1 + self.num_trials


@struct.dataclass
class MemorySequenceState(EnvState):
    """The episode's sequence and the progress through it."""

    sequence: jax.Array  # int32 [seq_len]
    position: jax.Array  # int32 []: symbols reproduced so far in the current trial
    trial: jax.Array  # int32 []: trials completed so far
    last_action: jax.Array  # int32 []: num_symbols means none (a trial starts now)
    last_reward: jax.Array  # float32 []
    time: jax.Array  # int32 []: steps taken in the episode


def _check_params(params: MemorySequenceParams) -> None:
    """Raise a ValueError naming the bad setting; leaf values are checked when concrete."""
    for name in ("num_symbols", "seq_len", "num_trials"):
        if getattr(params, name) < 1:
            raise ValueError(f"MemorySequence: {name} must be >= 1, got {getattr(params, name)}.")
    steps = params.max_steps_in_episode
    if is_concrete(steps) and np.any(np.asarray(steps) < 1):
        raise ValueError(f"MemorySequence: max_steps_in_episode must be >= 1, got {steps}.")
    sequence = params.sequence
    if params.fixed_sequence and sequence is None:
        raise ValueError(
            "MemorySequence: fixed_sequence=True needs sequence=int32[seq_len]; pass it in the "
            "same replace/constructor call or use MemorySequence.in_weights_params."
        )
    if not params.fixed_sequence and sequence is not None:
        raise ValueError(
            "MemorySequence: a sequence was given but fixed_sequence=False (a new sequence is "
            "drawn each episode); set fixed_sequence=True or sequence=None."
        )
    if not hasattr(sequence, "shape"):  # None, or a placeholder while JAX maps the pytree
        return
    if np.ndim(sequence) < 1 or np.shape(sequence)[-1] != params.seq_len:
        raise ValueError(
            f"MemorySequence: sequence must have shape [seq_len] = [{params.seq_len}] "
            f"(optionally batched in front), got {np.shape(sequence)}; match seq_len to it."
        )
    if not jnp.issubdtype(sequence.dtype, jnp.integer):
        raise ValueError(
            f"MemorySequence: sequence must hold integer symbols, got dtype {sequence.dtype}."
        )
    if is_concrete(sequence):
        values = np.asarray(sequence)
        if values.min() < 0 or values.max() >= params.num_symbols:
            raise ValueError(
                f"MemorySequence: sequence symbols must be in [0, {params.num_symbols}), got "
                f"values in [{values.min()}, {values.max()}]; raise num_symbols or fix them."
            )


class MemorySequence(Environment):
    """Memory Sequence task (gymnax 1.x interface); see the module docstring."""

    @staticmethod
    def in_weights_params(
        key: jax.Array | int = 0, num_symbols: int = 10, seq_len: int = 24, num_trials: int = 1
    ) -> MemorySequenceParams:
        """Params with one fixed random sequence drawn from ``key`` (a PRNG key or an int seed)."""
        if isinstance(key, (int, np.integer)):
            key = jax.random.key(key)
        if num_symbols < 1 or seq_len < 1:
            raise ValueError(
                f"MemorySequence: num_symbols and seq_len must be >= 1, got {num_symbols}, "
                f"{seq_len}."
            )
        sequence = jax.random.randint(key, (seq_len,), 0, num_symbols, dtype=jnp.int32)
        return MemorySequenceParams(
            sequence=sequence,
            num_symbols=num_symbols,
            seq_len=seq_len,
            num_trials=num_trials,
            fixed_sequence=True,
        )

    @staticmethod
    def in_context_params(
        num_symbols: int = 3, seq_len: int = 24, num_trials: int = 4
    ) -> MemorySequenceParams:
        """Params that draw a new sequence at every episode reset."""
        return MemorySequenceParams(
            num_symbols=num_symbols, seq_len=seq_len, num_trials=num_trials, fixed_sequence=False
        )

    @property
    def default_params(self) -> MemorySequenceParams:
        return self.in_context_params()

    def action_space(self, params: MemorySequenceParams | None = None) -> spaces.Discrete:
        params = self.default_params if params is None else params
        return spaces.Discrete(params.num_symbols)

    def observation_space(self, params: MemorySequenceParams) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (params.obs_dim,), jnp.float32)

    @staticmethod
    def demo_spec(params: MemorySequenceParams) -> tuple[int, int]:
        """(actions in one trial at most, the code recorded for a position never reached)."""
        return params.seq_len, params.num_symbols

    @staticmethod
    def trial_clock(state: MemorySequenceState) -> tuple[jax.Array, jax.Array]:
        """(trials completed, index of the next action within the trial), int32 (shaped like
        ``state``'s leaves, so batched states work too)."""
        return state.trial, state.position

    def reset_env(
        self, key: jax.Array, params: MemorySequenceParams
    ) -> tuple[jax.Array, MemorySequenceState]:
        """A new episode (a new sequence unless fixed); obs float32 [obs_dim]."""
        if params.fixed_sequence:
            if np.shape(params.sequence) != (params.seq_len,):
                raise ValueError(
                    f"MemorySequence: expected one sequence of shape ({params.seq_len},) per "
                    f"environment, got {np.shape(params.sequence)}; vmap batched params."
                )
            sequence = params.sequence.astype(jnp.int32)
        else:
            sequence = jax.random.randint(
                key, (params.seq_len,), 0, params.num_symbols, dtype=jnp.int32
            )
        state = MemorySequenceState(
            sequence=sequence,
            position=jnp.int32(0),
            trial=jnp.int32(0),
            last_action=jnp.int32(params.num_symbols),
            last_reward=jnp.float32(0.0),
            time=jnp.int32(0),
        )
        return self.get_obs(state, params), state

    def step_env(
        self,
        key: jax.Array,
        state: MemorySequenceState,
        action: jax.Array,
        params: MemorySequenceParams,
    ) -> tuple[jax.Array, MemorySequenceState, jax.Array, jax.Array, dict]:
        """One symbol (``key`` unused: transitions are deterministic). Actions outside
        [0, num_symbols) count as mistakes."""
        correct = action == self.expert_action(state, params)
        reward = jnp.where(correct, 1.0, -1.0).astype(jnp.float32)
        position = state.position + 1
        trial_over = ~correct | (position >= params.seq_len)
        state = state.replace(
            position=jnp.where(trial_over, 0, position),
            trial=state.trial + trial_over.astype(jnp.int32),
            last_action=jnp.where(trial_over, params.num_symbols, action).astype(jnp.int32),
            last_reward=reward,
            time=state.time + 1,
        )
        terminated = state.trial >= params.num_trials
        return self.get_obs(state, params), state, reward, terminated, {}

    def get_obs(
        self,
        state: MemorySequenceState,
        params: MemorySequenceParams,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Flat observation float32 [obs_dim] (layout in the module docstring)."""
        return jnp.concatenate(
            [
                jax.nn.one_hot(state.last_action, params.num_symbols + 1, dtype=jnp.float32),
                jax.nn.one_hot(state.last_reward.astype(jnp.int32) + 1, 3, dtype=jnp.float32),
                (state.position == 0).astype(jnp.float32)[None],
                jax.nn.one_hot(state.trial, params.num_trials, dtype=jnp.float32),
            ]
        )

    def expert_action(self, state: MemorySequenceState, params: MemorySequenceParams) -> jax.Array:
        """The correct next symbol (int32 [])."""
        return jnp.sum(jnp.where(jnp.arange(params.seq_len) == state.position, state.sequence, 0))

    def render(
        self,
        state: MemorySequenceState,
        params: MemorySequenceParams | None = None,
        tile: int = 16,
    ) -> jax.Array:
        """RGB uint8 [tile, seq_len*tile, 3]: one cell per symbol coloured by symbol, bright
        for the prefix reproduced in this trial and dim for the rest."""
        params = self.default_params if params is None else params
        hues = np.arange(params.num_symbols) / params.num_symbols
        colours = jnp.asarray(
            [colorsys.hsv_to_rgb(h, 0.75, 0.95) for h in hues], jnp.float32
        )  # [num_symbols, 3]
        done = jnp.arange(params.seq_len) < state.position  # [seq_len]
        cells = colours[state.sequence] * jnp.where(done, 255.0, 80.0)[:, None]  # [seq_len, 3]
        image = jnp.repeat(cells[None], tile, axis=0)  # [tile, seq_len, 3]
        image = jnp.repeat(image, tile, axis=1).astype(jnp.uint8)  # [tile, seq_len*tile, 3]
        edges = (jnp.arange(image.shape[1]) % tile == 0)[None, :, None]
        return jnp.where(edges, jnp.uint8(0), image)
