"""Memory Sequence: rewards, trials, both variants, auto-reset, observation and validation."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from envs.gridworlds.memory_sequence import (
    MemorySequence,
    MemorySequenceParams,
    MemorySequenceState,
)

ENV = MemorySequence()
IN_CONTEXT = MemorySequence.in_context_params(num_symbols=3, seq_len=6, num_trials=4)
IN_WEIGHTS = MemorySequence.in_weights_params(0, num_symbols=10, seq_len=6, num_trials=1)
NUM_STEPS = 40
SEEDS = st.integers(0, 2**31 - 1)

reset = jax.jit(ENV.reset)
step = jax.jit(ENV.step)
step_env = jax.jit(ENV.step_env)
get_obs = jax.jit(ENV.get_obs)


class Trajectory(NamedTuple):
    """A rollout stacked over time: ``states[t]`` is the state before step ``t``."""

    obs0: jax.Array  # [obs_dim] from the first reset
    states: MemorySequenceState
    actions: jax.Array  # [T]
    obs: jax.Array  # [T, obs_dim] after each step (post auto-reset)
    rewards: jax.Array  # [T]
    terminated: jax.Array  # [T]
    truncated: jax.Array  # [T]
    info: dict


def _rollout(key: jax.Array, params: MemorySequenceParams, p_expert: float) -> Trajectory:
    """Play the expert's symbol with probability ``p_expert``, else a random one."""

    def body(state: MemorySequenceState, key: jax.Array) -> tuple:
        coin_key, action_key, step_key = jax.random.split(key, 3)
        random_action = jax.random.randint(action_key, (), 0, params.num_symbols)
        expert = jax.random.uniform(coin_key) < p_expert
        action = jnp.where(expert, ENV.expert_action(state, params), random_action)
        obs, next_state, reward, terminated, truncated, info = ENV.step(
            step_key, state, action, params
        )
        return next_state, (state, action, obs, reward, terminated, truncated, info)

    reset_key, key = jax.random.split(key)
    obs0, state0 = ENV.reset(reset_key, params)
    return Trajectory(obs0, *jax.lax.scan(body, state0, jax.random.split(key, NUM_STEPS))[1])


rollout = jax.jit(_rollout)


def _at(tree: Any, index: int) -> Any:
    """Entry ``index`` of every leaf (one env of a batch, one step of a rollout)."""
    return jax.tree.map(lambda x: x[index], tree)


def _episode_starts(terminated: np.ndarray) -> np.ndarray:
    """Steps whose state is an episode's first."""
    starts = np.concatenate([[0], np.flatnonzero(terminated) + 1])
    return starts[starts < len(terminated)]


@pytest.mark.parametrize("params", [IN_CONTEXT, IN_WEIGHTS], ids=["in_context", "in_weights"])
def test_expert_earns_the_maximum(params: MemorySequenceParams) -> None:
    traj = rollout(jax.random.key(0), params, 1.0)
    episode = params.num_trials * params.seq_len
    np.testing.assert_array_equal(traj.rewards, 1.0)
    np.testing.assert_array_equal(
        np.flatnonzero(traj.terminated), np.arange(episode - 1, NUM_STEPS, episode)
    )
    np.testing.assert_array_equal(traj.states.position[: params.seq_len], np.arange(params.seq_len))


@settings(max_examples=8, deadline=None)
@given(seed=SEEDS, p_expert=st.sampled_from([0.0, 0.7, 0.95]))
def test_rollout_invariants(seed: int, p_expert: float) -> None:
    """Rewards are +1 exactly for the sequence's next symbol, else -1; a mistake or the whole
    sequence ends the trial; positions and trials stay in range."""
    params = IN_CONTEXT
    traj = rollout(jax.random.key(seed), params, p_expert)
    states, rewards, terminated = traj.states, traj.rewards, traj.terminated
    seq, position = np.asarray(states.sequence), np.asarray(states.position)
    target = seq[np.arange(NUM_STEPS), position]
    correct = np.asarray(traj.actions) == target
    np.testing.assert_array_equal(rewards, np.where(correct, 1.0, -1.0))
    assert ((position >= 0) & (position < params.seq_len)).all()
    assert ((states.trial >= 0) & (states.trial < params.num_trials)).all()
    trial_over = ~correct | (position == params.seq_len - 1)
    next_position = np.asarray(states.position[1:])
    np.testing.assert_array_equal(next_position, np.where(trial_over, 0, position + 1)[:-1])
    trials_done = np.cumsum(trial_over)  # terminated exactly after every num_trials-th trial
    np.testing.assert_array_equal(
        terminated, trial_over & (trials_done % params.num_trials == 0) & (trials_done > 0)
    )
    assert not traj.truncated.any()


def test_mistake_ends_the_trial() -> None:
    _, state = reset(jax.random.key(1), IN_CONTEXT)
    key = jax.random.key(0)
    for _ in range(2):
        _, state, reward, *_ = step(key, state, ENV.expert_action(state, IN_CONTEXT), IN_CONTEXT)
        assert float(reward) == 1.0
    right = int(ENV.expert_action(state, IN_CONTEXT))
    wrong = jnp.int32((right + 1) % IN_CONTEXT.num_symbols)
    obs, state, reward, terminated, *_ = step(key, state, wrong, IN_CONTEXT)
    assert float(reward) == -1.0 and not bool(terminated)
    assert int(state.position) == 0 and int(state.trial) == 1
    # last action "none", reward -1, trial-start flag, trial 1 of 4
    expected = [0, 0, 0, 1] + [1, 0, 0] + [1] + [0, 1, 0, 0]
    np.testing.assert_array_equal(obs, expected)


def test_observation_has_no_position() -> None:
    """Two states that differ only in the position (and sequence) look the same."""
    _, state = reset(jax.random.key(2), IN_CONTEXT)
    mid = state.replace(position=jnp.int32(2), last_action=jnp.int32(1), last_reward=jnp.float32(1))
    later = mid.replace(position=jnp.int32(4), sequence=jnp.flip(mid.sequence))
    np.testing.assert_array_equal(get_obs(mid, IN_CONTEXT), get_obs(later, IN_CONTEXT))
    np.testing.assert_array_equal(
        get_obs(mid, IN_CONTEXT), [0, 1, 0, 0] + [0, 0, 1] + [0] + [1, 0, 0, 0]
    )
    assert IN_CONTEXT.obs_dim == 12 and ENV.observation_space(IN_CONTEXT).shape == (12,)


@settings(max_examples=5, deadline=None)
@given(seed=SEEDS)
def test_sequence_per_episode(seed: int) -> None:
    """In-context: fixed within an episode, new across episodes. In-weights: always the params'."""
    traj = rollout(jax.random.key(seed), IN_CONTEXT, 0.0)
    starts = _episode_starts(np.asarray(traj.terminated))  # random play: short episodes
    seq = np.asarray(traj.states.sequence)
    for begin, end in zip(starts, list(starts[1:]) + [NUM_STEPS]):
        assert (seq[begin:end] == seq[begin]).all()
    assert len({tuple(seq[t]) for t in starts}) >= 2
    states = rollout(jax.random.key(seed), IN_WEIGHTS, 0.5).states
    np.testing.assert_array_equal(states.sequence, np.tile(IN_WEIGHTS.sequence, (NUM_STEPS, 1)))


@settings(max_examples=5, deadline=None)
@given(seed=SEEDS)
def test_auto_reset_and_final_observation(seed: int) -> None:
    traj = rollout(jax.random.key(seed), IN_CONTEXT, 0.8)
    final_obs = traj.info["final_observation"]
    ends = np.flatnonzero(np.asarray(traj.terminated))
    assert len(ends) >= 1
    for t in ends[ends < NUM_STEPS - 1]:
        after = _at(traj.states, t + 1)
        assert int(after.time) == 0 and int(after.trial) == 0 and int(after.position) == 0
        np.testing.assert_array_equal(traj.obs[t], traj.obs0)  # reset's first observation
        before = _at(traj.states, t)
        obs_st = step_env(jax.random.key(1), before, traj.actions[t], IN_CONTEXT)[0]  # key unused
        np.testing.assert_array_equal(final_obs[t], obs_st)
        np.testing.assert_array_equal(obs_st[-IN_CONTEXT.num_trials :], 0.0)  # no trial left
    not_done = np.flatnonzero(~np.asarray(traj.terminated))
    np.testing.assert_array_equal(final_obs[not_done], traj.obs[not_done])


def test_vmap_matches_single_envs_and_params() -> None:
    """A batch of in-weights tasks (one sequence each) stepped by vmap equals one-by-one."""
    batch = 4
    keys = jax.random.split(jax.random.key(5), batch)
    sequences = jax.random.randint(jax.random.key(6), (batch, 6), 0, 10)
    params = jax.vmap(lambda s: IN_WEIGHTS.replace(sequence=s))(sequences)
    _, states = jax.vmap(reset)(keys, params)
    actions = sequences[:, 0].at[0].set((sequences[0, 0] + 1) % 10)  # env 0 errs
    batched = jax.vmap(step)(keys, states, actions, params)
    for i in range(batch):
        one_params = IN_WEIGHTS.replace(sequence=sequences[i])
        _, one_state = reset(keys[i], one_params)
        one = step(keys[i], one_state, actions[i], one_params)
        chex.assert_trees_all_equal(_at(batched, i), one)
    np.testing.assert_array_equal(batched[2], [-1.0, 1.0, 1.0, 1.0])


def test_same_key_same_rollout() -> None:
    chex.assert_trees_all_equal(
        rollout(jax.random.key(3), IN_CONTEXT, 0.5), rollout(jax.random.key(3), IN_CONTEXT, 0.5)
    )


def test_params_helpers_and_make() -> None:
    default = envs.make("MemorySequence")[1]
    assert (default.num_symbols, default.seq_len, default.num_trials) == (3, 24, 4)
    assert not default.fixed_sequence and default.sequence is None
    weights = MemorySequence.in_weights_params(jax.random.key(4))
    assert (weights.num_symbols, weights.seq_len, weights.num_trials) == (10, 24, 1)
    assert weights.fixed_sequence and weights.sequence.shape == (24,)
    chex.assert_trees_all_equal(weights, MemorySequence.in_weights_params(jax.random.key(4)))
    assert ENV.action_space(weights).n == 10


def test_render() -> None:
    _, state = reset(jax.random.key(0), IN_CONTEXT)
    image = np.asarray(ENV.render(state.replace(position=jnp.int32(2)), IN_CONTEXT))
    assert image.shape == (16, 6 * 16, 3) and image.dtype == np.uint8
    assert image[8, 8].max() > image[8, 3 * 16 + 8].max()  # the reproduced prefix is brighter


@pytest.mark.parametrize(
    "overrides",
    [
        {"seq_len": 0},
        {"num_symbols": 0},
        {"num_trials": 0},
        {"max_steps_in_episode": 0},
        {"fixed_sequence": True},  # no sequence
        {"fixed_sequence": True, "sequence": jnp.array([0, 1, 2, 3, 1, 0])},  # 3 out of range
        {"fixed_sequence": True, "sequence": jnp.array([0, 1, 2])},  # wrong length
        {"fixed_sequence": True, "sequence": jnp.zeros(6)},  # not integers
        {"sequence": jnp.zeros(6, jnp.int32)},  # a sequence but fixed_sequence=False
    ],
)
def test_bad_params_raise(overrides: dict) -> None:
    with pytest.raises(ValueError):
        IN_CONTEXT.replace(**overrides)


def test_bad_actions_raise() -> None:
    _, state = reset(jax.random.key(0), IN_CONTEXT)
    with pytest.raises(ValueError, match="scalar"):
        ENV.step(jax.random.key(0), state, jnp.zeros(3, jnp.int32), IN_CONTEXT)
    with pytest.raises(ValueError, match="integer"):
        ENV.step(jax.random.key(0), state, jnp.float32(0.0), IN_CONTEXT)
