"""Goal Sequence: dynamics, rewards, trials, auto-reset, observation, expert and validation."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.gridworlds.goal_sequence import (
    FORWARD,
    LEFT,
    RIGHT,
    GoalSequence,
    GoalSequenceParams,
    GoalSequenceState,
)

ENV = GoalSequence()
PARAMS = GoalSequenceParams(trial_length=6)  # 4 trials x 6 steps = 24-step episodes
EPISODE = PARAMS.num_trials * 6
LONG = PARAMS.replace(trial_length=25)  # scripted moves and the expert: no trial end midway
SEEDS = st.integers(0, 2**31 - 1)

reset = jax.jit(ENV.reset)
step = jax.jit(ENV.step)
step_env = jax.jit(ENV.step_env)
get_obs = jax.jit(ENV.get_obs)
render = jax.jit(ENV.render)
expert_action = jax.jit(ENV.expert_action)


class Trajectory(NamedTuple):
    """A rollout stacked over time: ``states[t]`` is the state before step ``t``."""

    obs0: jax.Array  # [obs_dim] from the first reset
    states: GoalSequenceState
    actions: jax.Array  # [T]
    obs: jax.Array  # [T, obs_dim] after each step (post auto-reset)
    rewards: jax.Array  # [T]
    terminated: jax.Array  # [T]
    truncated: jax.Array  # [T]
    info: dict


def _rollout(
    key: jax.Array, params: GoalSequenceParams, num_steps: int, expert: bool
) -> Trajectory:
    """Random or expert rollout from a fresh reset."""

    def body(state: GoalSequenceState, key: jax.Array) -> tuple:
        action_key, step_key = jax.random.split(key)
        random_action = jax.random.randint(action_key, (), 0, 3)
        action = ENV.expert_action(state, params) if expert else random_action
        obs, next_state, reward, terminated, truncated, info = ENV.step(
            step_key, state, action, params
        )
        return next_state, (state, action, obs, reward, terminated, truncated, info)

    reset_key, key = jax.random.split(key)
    obs0, state0 = ENV.reset(reset_key, params)
    return Trajectory(obs0, *jax.lax.scan(body, state0, jax.random.split(key, num_steps))[1])


random_rollout = jax.jit(lambda key, params: _rollout(key, params, 2 * EPISODE + 5, False))
expert_rollout = jax.jit(lambda key, params: _rollout(key, params, 4 * 25, True))


def _state(pos, direction, goals, order=(0, 1, 2), pointer=0) -> GoalSequenceState:
    """A hand-made state in map coordinates (walls at 0 and 8)."""
    return GoalSequenceState(
        pos=jnp.array(pos, jnp.int32),
        direction=jnp.int32(direction),
        start_pos=jnp.array(pos, jnp.int32),
        start_direction=jnp.int32(direction),
        goal_pos=jnp.array(goals, jnp.int32),
        order=jnp.array(order, jnp.int32),
        pointer=jnp.int32(pointer),
        trial=jnp.int32(0),
        trial_time=jnp.int32(0),
        last_reward=jnp.float32(0.0),
        time=jnp.int32(0),
    )


def _at(tree: Any, index: int) -> Any:
    """Entry ``index`` of every leaf (one env of a batch, one step of a rollout)."""
    return jax.tree.map(lambda x: x[index], tree)


def _view(obs: jax.Array, params: GoalSequenceParams = PARAMS) -> np.ndarray:
    """Cell codes of the egocentric view: 0 empty, 1 wall, 2 + g goal g."""
    size = int(np.prod(params.view_shape))
    return np.asarray(obs[:size].reshape(params.view_shape).argmax(-1))


@settings(max_examples=8, deadline=None)
@given(seed=SEEDS)
def test_random_rollout_invariants(seed: int) -> None:
    traj = random_rollout(jax.random.key(seed), PARAMS)
    pos, goals = np.asarray(traj.states.pos), np.asarray(traj.states.goal_pos)
    assert ((pos >= 1) & (pos <= PARAMS.size)).all()  # inside the room, never on a wall
    assert ((goals >= 1) & (goals <= PARAMS.size)).all()
    cells = np.concatenate([goals, np.asarray(traj.states.start_pos)[:, None]], axis=1)
    flat = cells[..., 0] * 100 + cells[..., 1]
    assert all(len(set(row)) == PARAMS.num_goals + 1 for row in flat)  # goals, start distinct
    assert set(np.unique(traj.rewards)) <= {-1.0, 0.0, 1.0}
    chex.assert_shape(traj.obs, (2 * EPISODE + 5, PARAMS.obs_dim))
    assert set(np.unique(traj.obs)) <= {0.0, 1.0}
    view = np.asarray(traj.obs[:, : 25 * 5]).reshape(-1, 25, 5)
    np.testing.assert_array_equal(view.sum(-1), 1.0)  # one code per view cell
    assert not traj.truncated.any()


@settings(max_examples=8, deadline=None)
@given(seed=SEEDS)
def test_view_agrees_with_dynamics(seed: int) -> None:
    """The cell straight ahead in the view is a wall iff forward is blocked, and a goal iff
    moving forward earns a nonzero reward."""
    traj = random_rollout(jax.random.key(seed), PARAMS)
    seen = np.concatenate([traj.obs0[None], traj.obs[:-1]])  # the observation of states[t]
    ahead = np.stack([_view(o)[1, 2] for o in seen])
    pos, rewards = np.asarray(traj.states.pos), np.asarray(traj.rewards)
    forward = np.asarray(traj.actions) == FORWARD
    in_trial = np.asarray(traj.states.trial_time) < PARAMS.trial_length - 1  # no reset after
    moved = np.any(pos[1:] != pos[:-1], axis=-1)
    check = (forward & in_trial)[:-1]
    np.testing.assert_array_equal((ahead[:-1] == 1)[check], ~moved[check])
    np.testing.assert_array_equal((ahead >= 2)[forward], rewards[forward] != 0)
    assert (rewards[~forward] == 0).all()


def test_scripted_rewards_and_pointer() -> None:
    # agent at (4, 4) facing up; goal 1 straight ahead at (3, 4); order: 1, then 0, then 2
    state = _state((4, 4), 0, [(6, 6), (3, 4), (4, 5)], order=(1, 0, 2))
    key = jax.random.key(0)
    _, state, reward, *_ = step(key, state, jnp.int32(FORWARD), LONG)
    assert float(reward) == 1.0 and int(state.pointer) == 1
    _, state, reward, *_ = step(key, state, jnp.int32(LEFT), LONG)  # turn on the goal
    assert float(reward) == 0.0 and int(state.direction) == 3
    _, state, reward, *_ = step(key, state, jnp.int32(RIGHT), LONG)
    _, state, reward, *_ = step(key, state, jnp.int32(RIGHT), LONG)  # face right, towards (3, 5)
    _, state, reward, *_ = step(key, state, jnp.int32(FORWARD), LONG)
    assert float(reward) == 0.0 and tuple(np.asarray(state.pos)) == (3, 5)
    _, state, reward, *_ = step(key, state, jnp.int32(RIGHT), LONG)  # face down, to goal 2
    _, state, reward, *_ = step(key, state, jnp.int32(FORWARD), LONG)
    assert float(reward) == -1.0 and int(state.pointer) == 1  # wrong goal: pointer stays


def test_pointer_wraps_and_wall_bump_on_goal() -> None:
    # pointer at the last goal of the order; the target is in the corner (1, 1)
    state = _state((2, 1), 0, [(1, 1), (5, 5), (6, 6)], order=(1, 2, 0), pointer=2)
    key = jax.random.key(0)
    _, state, reward, *_ = step(key, state, jnp.int32(FORWARD), LONG)
    assert float(reward) == 1.0 and int(state.pointer) == 0
    _, state, reward, *_ = step(key, state, jnp.int32(FORWARD), LONG)  # bump the wall
    assert float(reward) == 0.0 and tuple(np.asarray(state.pos)) == (1, 1)


def test_egocentric_view_rotates_with_the_agent() -> None:
    # goal 0 at (4, 6): two cells east of the agent at (4, 4)
    goals = [(4, 6), (1, 7), (7, 1)]
    expected_cell = {0: (2, 4), 1: (0, 2), 2: (2, 0), 3: (4, 2)}  # facing up/right/down/left
    for direction, (row, col) in expected_cell.items():
        view = _view(get_obs(_state((4, 4), direction, goals), PARAMS))
        assert view[row, col] == 2, (direction, view)
        assert (view == 2).sum() == 1
    # at the top wall facing up the two rows ahead are wall and outside-map (also wall)
    view = _view(get_obs(_state((1, 4), 0, goals), PARAMS))
    assert (view[:2] == 1).all() and (view[2:] != 1).all()


def test_expert_goes_around_a_wrong_goal() -> None:
    # facing right at (4, 2); a wrong goal at (4, 3) blocks the straight path to (4, 4)
    state = _state((4, 2), 1, [(4, 4), (4, 3), (7, 7)])
    rewards = []
    for _ in range(7):
        _, state, reward, *_ = step(jax.random.key(0), state, expert_action(state, LONG), LONG)
        rewards.append(float(reward))
    assert rewards == [0.0] * 6 + [1.0]  # the shortest detour is 7 steps


@settings(max_examples=5, deadline=None)
@given(seed=SEEDS)
def test_expert_return_is_positive(seed: int) -> None:
    traj = expert_rollout(jax.random.key(seed), LONG)
    assert bool(traj.terminated[-1]) and not traj.terminated[:-1].any()
    expert_return = float(traj.rewards.sum())
    assert expert_return >= LONG.num_trials  # at least one goal per trial, net
    assert expert_return > float(random_rollout(jax.random.key(seed), LONG).rewards.sum())


@settings(max_examples=5, deadline=None)
@given(seed=SEEDS)
def test_trials_and_episodes(seed: int) -> None:
    """Layout, start and order hold within an episode and change across episodes; trials end
    every trial_length steps; terminated fires exactly after num_trials trials."""
    traj = random_rollout(jax.random.key(seed), PARAMS)
    states = jax.tree.map(np.asarray, traj.states)
    ends = np.flatnonzero(np.asarray(traj.terminated))
    np.testing.assert_array_equal(ends, [EPISODE - 1, 2 * EPISODE - 1])
    for field in ("goal_pos", "order", "start_pos", "start_direction"):
        values = np.asarray(getattr(states, field))
        assert (values[:EPISODE] == values[0]).all() and (
            values[EPISODE : 2 * EPISODE] == values[EPISODE]
        ).all()
    assert not (
        (states.goal_pos[0] == states.goal_pos[EPISODE]).all()
        and (states.order[0] == states.order[EPISODE]).all()
    )
    starts = np.arange(0, 2 * EPISODE, PARAMS.trial_length)  # the first step of every trial
    np.testing.assert_array_equal(states.pos[starts], states.start_pos[starts])
    np.testing.assert_array_equal(states.pointer[starts], 0)
    np.testing.assert_array_equal(states.trial[starts], np.tile(np.arange(4), 2))
    trial_onehot = np.asarray(traj.obs[:, -7:-3])
    np.testing.assert_array_equal(trial_onehot[starts[1:4] - 1].argmax(-1), [1, 2, 3])


@settings(max_examples=5, deadline=None)
@given(seed=SEEDS)
def test_auto_reset_and_final_observation(seed: int) -> None:
    traj = random_rollout(jax.random.key(seed), PARAMS)
    final_obs = traj.info["final_observation"]
    last = EPISODE - 1
    after = _at(traj.states, last + 1)  # the state the auto-reset produced
    assert int(after.time) == 0 and int(after.trial) == 0 and float(after.last_reward) == 0.0
    np.testing.assert_array_equal(traj.obs[last][-7:], [1, 0, 0, 0, 0, 1, 0])  # trial 0, r 0
    np.testing.assert_array_equal(traj.obs[last], get_obs(after, PARAMS))
    # the final observation is what step_env gives before the reset (its key is unused)
    obs_st = step_env(jax.random.key(1), _at(traj.states, last), traj.actions[last], PARAMS)[0]
    np.testing.assert_array_equal(final_obs[last], obs_st)
    np.testing.assert_array_equal(obs_st[-7:-3], 0.0)  # no trial left
    not_done = np.flatnonzero(~np.asarray(traj.terminated))
    np.testing.assert_array_equal(final_obs[not_done], traj.obs[not_done])


def test_vmap_matches_single_envs_and_params() -> None:
    batch = 6
    keys = jax.random.split(jax.random.key(3), batch)
    trial_lengths = jnp.array([1, 2, 3, 4, 5, 50])
    params = jax.vmap(lambda n: PARAMS.replace(trial_length=n))(trial_lengths)
    _, states = jax.vmap(reset, in_axes=(0, None))(keys, PARAMS)
    actions = jnp.array([0, 1, 2, 2, 1, 2], jnp.int32)
    batched = jax.vmap(step)(keys, states, actions, params)
    for i in range(batch):
        one_params = PARAMS.replace(trial_length=int(trial_lengths[i]))
        one = step(keys[i], _at(states, i), actions[i], one_params)
        chex.assert_trees_all_equal(_at(batched, i), one)


def test_same_key_same_rollout() -> None:
    chex.assert_trees_all_equal(
        random_rollout(jax.random.key(7), PARAMS), random_rollout(jax.random.key(7), PARAMS)
    )
    assert not np.array_equal(
        random_rollout(jax.random.key(7), PARAMS).obs,
        random_rollout(jax.random.key(8), PARAMS).obs,
    )


def test_render() -> None:
    state = _state((4, 4), 1, [(1, 1), (2, 2), (3, 3)])
    image = np.asarray(render(state, PARAMS))
    assert image.shape == (9 * 16, 9 * 16, 3) and image.dtype == np.uint8
    assert (image[1 * 16 + 8, 1 * 16 + 8] == [220, 50, 50]).all()  # goal 0 is red
    agent = image[4 * 16 : 5 * 16, 4 * 16 : 5 * 16]
    assert (agent[8, 4] == 255).all() and (agent[8, 14] < 255).all()  # dark band on the right


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_goals": 0},
        {"num_goals": 9},
        {"size": 1},
        {"size": 2, "num_goals": 4},
        {"view_size": 4},
        {"num_trials": 0},
        {"trial_length": 0},
        {"max_steps_in_episode": 0},
    ],
)
def test_bad_params_raise(overrides: dict) -> None:
    with pytest.raises(ValueError):
        PARAMS.replace(**overrides)


def test_bad_actions_raise() -> None:
    state = reset(jax.random.key(0), PARAMS)[1]
    with pytest.raises(ValueError, match="scalar"):
        ENV.step(jax.random.key(0), state, jnp.zeros(2, jnp.int32), PARAMS)
    with pytest.raises(ValueError, match="integer"):
        ENV.step(jax.random.key(0), state, jnp.float32(1.0), PARAMS)
    with pytest.raises(ValueError, match="outside"):
        ENV.step(jax.random.key(0), state, 7, PARAMS)


def test_a_python_int_action_steps() -> None:
    """The README's first snippet: ``env.step(key, state, 2, params)`` with a plain int."""
    state = reset(jax.random.key(0), PARAMS)[1]
    stepped = ENV.step(jax.random.key(1), state, 2, PARAMS)[1]
    assert int(stepped.time) == 1
