"""Invariants of the multi-skill gridworld, its scripted expert and its skill labels."""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from envs.gridworlds.common import FIRST_OBJECT, PALETTE, WALL
from envs.gridworlds.multi_skill import (
    STAY,
    MultiSkill,
    MultiSkillParams,
    expert_action,
    rollout_expert,
)
from skills.segments import to_segments

ENV, PARAMS = envs.make("MultiSkill")
H, W, K = PARAMS.height, PARAMS.width, PARAMS.num_objects
T = 64  # steps per rollout
N = 16  # rollouts per batch
MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1], [0, 0]])


def decode(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Agent [..., 2], objects [..., K, 2] and skill part [..., K] of observations [..., D]."""
    obs = np.asarray(obs)
    n = (K + 1) * (H + W)
    blocks = obs[..., :n].reshape(obs.shape[:-1] + (K + 1, H + W))
    np.testing.assert_array_equal(blocks[..., :H].sum(-1), 1)  # one-hot rows
    np.testing.assert_array_equal(blocks[..., H:].sum(-1), 1)  # one-hot columns
    pos = np.stack([blocks[..., :H].argmax(-1), blocks[..., H:].argmax(-1)], axis=-1)
    agent, objects = pos[..., 0, :], pos[..., 1:, :]
    offsets = obs[..., n : n + 2 * K].reshape(obs.shape[:-1] + (K, 2))
    interior = np.array([H - 3, W - 3])
    np.testing.assert_allclose(offsets * interior, objects - agent[..., None, :], atol=1e-5)
    return agent, objects, obs[..., -K:]


def episode_starts(truncated: np.ndarray) -> np.ndarray:
    """bool [..., T]: step t is the first of an episode."""
    done_before = np.concatenate([np.ones_like(truncated[..., :1]), truncated[..., :-1]], -1)
    return done_before.astype(bool)


# Params travel as arguments, so every setting of the vmappable fields shares one program.
rollouts = jax.jit(
    jax.vmap(lambda k, p, noise: rollout_expert(k, ENV, p, T, noise), in_axes=(0, None, None))
)


step_batch = jax.vmap(ENV.step, in_axes=(0, 0, 0, None))


@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    min_len=st.integers(1, 6),
    span=st.integers(0, 8),
    reveal=st.booleans(),
    episode_len=st.integers(8, 40),
)
def test_expert_rollouts_follow_the_controller(
    seed: int, min_len: int, span: int, reveal: bool, episode_len: int
):
    params = PARAMS.replace(
        min_skill_len=min_len,
        max_skill_len=min_len + span,
        reveal_skill=reveal,
        max_steps_in_episode=episode_len,
    )
    demos = jax.device_get(rollouts(jax.random.split(jax.random.key(seed), N), params, 0.0))
    chex.assert_shape(demos.obs, (N, T, ENV.observation_space(params).shape[0]))
    agent, objects, skill_part = decode(demos.obs)
    next_agent, next_objects, _ = decode(demos.next_obs)
    starts = episode_starts(demos.truncated)

    # positions stay inside the walls, objects are distinct, the agent starts off every object
    for pos in (agent, next_agent, objects, next_objects):
        assert pos.min() >= 1 and pos[..., 0].max() <= H - 2 and pos[..., 1].max() <= W - 2
    same_cell = (objects[..., :, None, :] == objects[..., None, :, :]).all(-1)  # [N, T, K, K]
    np.testing.assert_array_equal(same_cell.sum((-1, -2)), K)  # only each object with itself
    assert not (agent[starts][:, None] == objects[starts]).all(-1).any()
    np.testing.assert_array_equal(next_objects, objects)

    # the skill one-hot is in the observation iff revealed
    expected = np.eye(K)[demos.skill] if reveal else np.zeros((N, T, K))
    np.testing.assert_array_equal(skill_part, expected)
    commanded = np.take_along_axis(objects, demos.skill[..., None, None], axis=-2)[..., 0, :]
    target_part = np.asarray(demos.obs)[..., -K - 2 : -K] * np.array([H - 3, W - 3])
    np.testing.assert_allclose(target_part, (commanded - agent) * reveal, atol=1e-5)

    # reward exactly when the action leaves the agent on the commanded object
    target = np.take_along_axis(objects, demos.skill[..., None, None], axis=-2)[..., 0, :]
    np.testing.assert_array_equal(demos.reward, (next_agent == target).all(-1))

    # boundary labels: episode starts and skill changes, nothing else
    changed = np.concatenate([np.ones((N, 1), bool), demos.skill[:, 1:] != demos.skill[:, :-1]], 1)
    np.testing.assert_array_equal(demos.boundary, starts | changed)
    assert not demos.terminated.any()
    ends = np.arange(1, T + 1) % episode_len == 0
    np.testing.assert_array_equal(demos.truncated, np.broadcast_to(ends, (N, T)))

    # every segment lasts min(distance, duration) with duration in [min_len, min_len + span]
    for n in range(N):
        for start, end in to_segments(demos.boundary[n]):
            length = end - start
            distance = np.abs(target[n, start] - agent[n, start]).sum()
            assert distance >= 1
            assert not demos.reward[n, start : end - 1].any()
            if end == T or demos.truncated[n, end - 1]:  # the rollout or episode cut it short
                assert length <= min(distance, min_len + span)
            elif demos.reward[n, end - 1]:
                assert length == distance <= min_len + span
            else:
                assert min_len <= length <= min_len + span and length < distance


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_expert_reaches_objects_in_manhattan_distance_steps(seed: int):
    longest = (H - 3) + (W - 3)  # the farthest two interior cells are apart
    params = PARAMS.replace(min_skill_len=longest + 1, max_skill_len=longest + 1)
    demos = jax.device_get(rollouts(jax.random.split(jax.random.key(seed), N), params, 0.0))
    agent, objects, _ = decode(demos.obs)
    target = np.take_along_axis(objects, demos.skill[..., None, None], axis=-2)[..., 0, :]
    for n in range(N):
        for start, end in to_segments(demos.boundary[n]):
            if end < T and not demos.truncated[n, end - 1]:
                distance = np.abs(target[n, start] - agent[n, start]).sum()
                assert end - start == distance and demos.reward[n, end - 1] == 1


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_random_walk_dynamics(seed: int):
    # noise 1 makes the expert a uniform random policy, bumping into walls and passing objects
    demos = jax.device_get(rollouts(jax.random.split(jax.random.key(seed), N), PARAMS, 1.0))
    agent, objects, _ = decode(demos.obs)
    next_agent, _, _ = decode(demos.next_obs)
    wanted = agent + MOVES[demos.action]
    np.testing.assert_array_equal(next_agent, np.clip(wanted, 1, np.array([H - 2, W - 2])))
    assert (next_agent != wanted).any()  # some moves ran into a wall
    target = np.take_along_axis(objects, demos.skill[..., None, None], axis=-2)[..., 0, :]
    np.testing.assert_array_equal(demos.reward, (next_agent == target).all(-1))
    assert demos.reward.any()


def test_every_skill_appears():
    batches = [rollouts(jax.random.split(jax.random.key(i), N), PARAMS, 0.0) for i in range(8)]
    demos = jax.device_get(jax.tree.map(lambda *x: jnp.concatenate(x), *batches))
    share = np.bincount(demos.skill.ravel(), minlength=K) / demos.skill.size
    assert share.min() > 0.6 / K, share
    starts = np.bincount(demos.skill[demos.boundary], minlength=K)
    assert starts.min() > 0.6 * demos.boundary.sum() / K, starts


def test_autoreset_reports_final_observation():
    key_reset, key_step = jax.random.split(jax.random.key(3))
    _, state = ENV.reset(key_reset, PARAMS)
    state = state.replace(time=jnp.int32(PARAMS.max_steps_in_episode - 1))
    action = jnp.int32(2)
    obs, new_state, _, terminated, truncated, info = ENV.step(key_step, state, action, PARAMS)
    assert bool(truncated) and not bool(terminated)
    moved = jnp.clip(state.agent_pos + MOVES[2], 1, jnp.array([H - 2, W - 2]))
    np.testing.assert_array_equal(
        info["final_observation"], ENV.get_obs(state.replace(agent_pos=moved), PARAMS)
    )
    # the returned observation is a valid first observation of the new episode
    assert int(new_state.time) == 0 and bool(new_state.boundary)
    np.testing.assert_array_equal(obs, ENV.get_obs(new_state, PARAMS))
    agent, objects, _ = decode(obs)
    assert not (agent == objects).all(-1).any()
    assert len({tuple(p) for p in objects}) == K
    assert bool(ENV.observation_space(PARAMS).contains(obs))


def test_vmapped_step_equals_single_steps():
    reset_keys, step_keys = jax.random.split(jax.random.key(4), (2, 8))
    states = [ENV.reset(k, PARAMS)[1] for k in reset_keys]
    actions = jax.random.randint(jax.random.key(5), (8,), 0, 5)
    batched = step_batch(step_keys, jax.tree.map(lambda *x: jnp.stack(x), *states), actions, PARAMS)
    for i, state in enumerate(states):
        single = ENV.step(step_keys[i], state, actions[i], PARAMS)
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], batched), single)


def test_same_key_same_rollout():
    keys = jax.random.split(jax.random.key(5), N)
    first, again = rollouts(keys, PARAMS, 0.1), rollouts(keys, PARAMS, 0.1)
    chex.assert_trees_all_equal(first, again)
    other = rollouts(jax.random.split(jax.random.key(6), N), PARAMS, 0.1)
    assert not np.array_equal(first.action, other.action)


def test_expert_noise_adds_other_actions():
    clean = rollouts(jax.random.split(jax.random.key(7), N), PARAMS, 0.0)
    noisy = rollouts(jax.random.split(jax.random.key(7), N), PARAMS, 0.5)
    assert not (clean.action == STAY).any()  # the clean expert always has a move to make
    assert (noisy.action == STAY).any()


def test_render_colours_cells():
    _, state = ENV.reset(jax.random.key(8), PARAMS)
    image = np.asarray(ENV.render(state, PARAMS))
    tile = image.shape[0] // H
    assert image.shape == (H * tile, W * tile, 3) and image.dtype == np.uint8
    palette = np.asarray(PALETTE)

    def centre(row, col):
        return image[row * tile + tile // 2, col * tile + tile // 2]

    np.testing.assert_array_equal(centre(*np.asarray(state.agent_pos)), [255, 255, 255])
    for i, (row, col) in enumerate(np.asarray(state.object_pos)):
        np.testing.assert_array_equal(centre(row, col), palette[FIRST_OBJECT + i])
    np.testing.assert_array_equal(centre(0, 0), palette[WALL])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40))
def test_to_segments_tiles_the_trajectory(boundary: list[bool]):
    segments = to_segments(np.array(boundary))
    assert segments[0][0] == 0 and segments[-1][1] == len(boundary)
    assert all(end == start for (_, end), (start, _) in itertools.pairwise(segments))
    assert [s for s, _ in segments[1:]] == [t for t in range(1, len(boundary)) if boundary[t]]


def test_make_and_spaces():
    env, params = envs.make("MultiSkill", reveal_skill=True, num_objects=5)
    assert isinstance(env, MultiSkill) and isinstance(params, MultiSkillParams)
    obs, _ = env.reset(jax.random.key(0), params)
    assert obs.shape == env.observation_space(params).shape == ((5 + 1) * (H + W) + 3 * 5 + 2,)
    assert obs.dtype == jnp.float32 and env.action_space(params).n == 5


@pytest.mark.parametrize(
    "overrides",
    [
        {"min_skill_len": 0},
        {"min_skill_len": 5, "max_skill_len": 4},
        {"min_skill_len": jnp.array([1, 0]), "max_skill_len": jnp.array([3, 3])},  # batched
        {"max_steps_in_episode": 0},
        {"num_objects": 2},
        {"num_objects": len(PALETTE) - FIRST_OBJECT + 1},
        {"height": 4, "width": 4},  # 4 free cells for 4 objects and the agent
    ],
)
def test_bad_params_raise(overrides: dict):
    with pytest.raises(ValueError):
        envs.make("MultiSkill", **overrides)  # checked while concrete
    params = PARAMS.replace(**overrides)
    key = jax.random.key(0)
    with pytest.raises(ValueError):
        ENV.reset(key, params)
    _, state = ENV.reset(key, PARAMS)
    with pytest.raises(ValueError):
        ENV.step(key, state, jnp.int32(0), params)
    with pytest.raises(ValueError):
        rollout_expert(key, ENV, params, T)


def test_bad_inputs_raise():
    key = jax.random.key(0)
    _, state = ENV.reset(key, PARAMS)
    with pytest.raises(ValueError, match="scalar"):
        ENV.step(key, state, jnp.array([1, 2]), PARAMS)
    with pytest.raises(ValueError, match="integers"):
        ENV.step(key, state, jnp.float32(1.0), PARAMS)
    with pytest.raises(ValueError, match="num_steps"):
        rollout_expert(key, ENV, PARAMS, 0)
    with pytest.raises(ValueError, match="noise"):
        expert_action(key, state, PARAMS, noise=1.5)
    with pytest.raises(ValueError, match="1-D"):
        to_segments(np.zeros((2, 3), bool))
