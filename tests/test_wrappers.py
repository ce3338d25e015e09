"""Tests for envs.wrappers: episode statistics, observation normalisation, Gymnasium adapters."""

from __future__ import annotations

import copy
import pickle
import warnings
from functools import partial

import chex
import gymnasium
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from envs.core import spaces
from envs.wrappers import (
    EpisodeStats,
    NormalizeObservation,
    RunningStats,
    pool_stats,
    to_gymnasium,
    to_gymnasium_vector,
)

ENV, PARAMS = gymnax.make("CartPole-v1")
STATS_ENV = EpisodeStats(ENV)
NORM_ENV = NormalizeObservation(ENV)
FROZEN_ENV = NormalizeObservation(ENV, frozen=True)
GRIDWORLDS = ["GoalSequence", "MemorySequence", "MultiSkill"]
_SINGLE = to_gymnasium(ENV, PARAMS)
STEPS, BATCH = 400, 8  # rollout length and number of envs of the jitted rollouts below


def _rollout(env, key: jax.Array, params):
    """First obs, per-step (obs, reward, terminated, truncated, info) [T, ...] and last state
    of a uniformly random policy."""
    reset_key, step_key = jax.random.split(key)
    obs0, state = env.reset(reset_key, params)

    def body(state, inp):
        k, a = inp
        obs, state, reward, terminated, truncated, info = env.step(k, state, a, params)
        return state, (obs, reward, terminated, truncated, info)

    inputs = (jax.random.split(step_key, STEPS), jax.random.randint(key, (STEPS,), 0, 2))
    state, out = jax.lax.scan(body, state, inputs)
    return obs0, out, state


@partial(jax.jit, static_argnums=0)
def _rollouts(env, keys: jax.Array, params):  # keys [B]: every output gets a leading [B]
    return jax.vmap(lambda key: _rollout(env, key, params))(keys)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**30), max_steps=st.integers(3, 40))
def test_episode_stats_match_hand_computed_rollout(seed: int, max_steps: int) -> None:
    params = PARAMS.replace(max_steps_in_episode=max_steps)
    keys = jax.random.split(jax.random.key(seed), BATCH)
    _, (_, rewards, terminateds, truncateds, _), _ = jax.device_get(_rollouts(ENV, keys, params))
    infos = jax.device_get(_rollouts(STATS_ENV, keys, params)[1][4])
    dones = terminateds | truncateds
    expected = {k: np.zeros((BATCH, STEPS)) for k in ("returns", "lengths", "valid")}
    for b in range(BATCH):
        ret, length, last_ret, last_len, valid = 0.0, 0, 0.0, 0, False
        for t in range(STEPS):
            ret, length = ret + rewards[b, t], length + 1
            if dones[b, t]:
                last_ret, last_len, valid, ret, length = ret, length, True, 0.0, 0
            expected["returns"][b, t], expected["lengths"][b, t] = last_ret, last_len
            expected["valid"][b, t] = valid
    np.testing.assert_array_equal(infos["returned_episode"], dones)
    np.testing.assert_array_equal(infos["returned_episode_valid"], expected["valid"])
    np.testing.assert_allclose(infos["returned_episode_returns"], expected["returns"])
    np.testing.assert_array_equal(infos["returned_episode_lengths"], expected["lengths"])


def test_episode_stats_invalid_before_first_episode_ends() -> None:
    keys = jax.random.split(jax.random.key(0), BATCH)
    info = jax.device_get(_rollouts(STATS_ENV, keys, PARAMS)[1][4])
    for b in range(BATCH):
        first_done = int(np.argmax(info["returned_episode"][b]))
        assert first_done > 0 and info["returned_episode"][b, first_done]
        assert not info["returned_episode_valid"][b, :first_done].any()
        assert (info["returned_episode_returns"][b, :first_done] == 0).all()
        assert info["returned_episode_valid"][b, first_done:].all()


def test_episode_stats_forward_attributes_and_copy() -> None:
    assert STATS_ENV.default_params == ENV.default_params
    assert STATS_ENV.name == ENV.name
    assert STATS_ENV.action_space(PARAMS).n == 2
    assert STATS_ENV.observation_space(PARAMS).shape == (4,)
    for clone in (copy.deepcopy(STATS_ENV), pickle.loads(pickle.dumps(STATS_ENV))):
        assert clone.name == ENV.name


def test_wrappers_render_the_wrapped_state() -> None:
    env, params = _gridworld("GoalSequence")
    wrapped = NormalizeObservation(EpisodeStats(env))
    _, state = wrapped.reset(jax.random.key(0), params)
    image = wrapped.render(state, params)
    chex.assert_trees_all_equal(image, env.render(state.env_state.env_state, params))
    assert image.dtype == jnp.uint8 and image.ndim == 3 and image.shape[-1] == 3


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**30))
def test_normalize_statistics_are_exact_per_env_and_pool(seed: int) -> None:
    keys = jax.random.split(jax.random.key(seed), BATCH)
    params = PARAMS.replace(max_steps_in_episode=25)
    *_, state = _rollouts(NORM_ENV, keys, params)
    obs0, (obs, *_), _ = _rollouts(ENV, keys, params)
    seen = np.concatenate([np.asarray(obs0)[:, None], np.asarray(obs)], axis=1)  # [B, T+1, 4]
    np.testing.assert_allclose(state.stats.mean, seen.mean(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.stats.var, seen.var(1), rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(state.stats.count, np.full(BATCH, STEPS + 1))
    pooled = pool_stats(state.stats)
    np.testing.assert_allclose(pooled.mean, seen.reshape(-1, 4).mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pooled.var, seen.reshape(-1, 4).var(0), rtol=1e-3, atol=1e-5)
    empty = pool_stats(jax.tree.map(lambda x: jnp.stack([x, x]), RunningStats.create((4,))))
    chex.assert_trees_all_equal(empty, RunningStats.create((4,)))


def test_normalize_gives_zero_mean_unit_variance_after_many_steps() -> None:
    keys = jax.random.split(jax.random.key(1), BATCH)
    _, (obs, *_), _ = _rollouts(NORM_ENV, keys, PARAMS)
    late = np.asarray(obs[:, STEPS // 2 :]).reshape(-1, 4)  # [B * T / 2, 4]
    np.testing.assert_allclose(late.mean(0), 0.0, atol=0.2)
    np.testing.assert_allclose(late.std(0), 1.0, atol=0.2)
    assert NORM_ENV.observation_space(PARAMS).shape == (4,)


def test_normalize_frozen_keeps_given_statistics() -> None:
    stats = RunningStats(
        mean=jnp.array([0.1, -0.2, 0.0, 0.3]),
        var=jnp.array([4.0, 1.0, 0.25, 2.0]),
        count=jnp.int32(7),
    )
    params = PARAMS.replace(max_steps_in_episode=1)  # the first step ends the episode

    def normalized(raw):
        return (raw - stats.mean) / jnp.sqrt(stats.var + 1e-8)

    obs, state = FROZEN_ENV.reset(jax.random.key(3), params, stats)
    raw_obs, raw_state = ENV.reset(jax.random.key(3), params)
    chex.assert_trees_all_close(obs, normalized(raw_obs))
    obs, state, _, _, truncated, info = FROZEN_ENV.step(jax.random.key(4), state, 1, params)
    raw_obs, _, _, _, _, raw_info = ENV.step(jax.random.key(4), raw_state, 1, params)
    assert truncated
    chex.assert_trees_all_equal(state.stats, stats)
    chex.assert_trees_all_close(obs, normalized(raw_obs))
    chex.assert_trees_all_close(
        info["final_observation"], normalized(raw_info["final_observation"])
    )


def test_normalize_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        NormalizeObservation(ENV, epsilon=0.0)
    with pytest.raises(ValueError, match="clip"):
        NormalizeObservation(ENV, clip=-1.0)
    with pytest.raises(ValueError, match="Box"):
        NormalizeObservation(_DiscreteObsEnv()).observation_space(PARAMS)
    with pytest.raises(ValueError, match="shape"):
        NORM_ENV.reset(jax.random.key(0), PARAMS, RunningStats.create((3,)))
    with pytest.raises(ValueError, match="batched"):
        pool_stats(RunningStats.create((4,)))


class _DiscreteObsEnv:
    name = "DiscreteObs"

    def observation_space(self, params):
        return spaces.Discrete(3)


def _gridworld(name: str):
    pytest.importorskip(envs._REGISTRY[name].split(":")[0])
    return envs.make(name)


def _check(env: gymnasium.Env, unbounded: bool = False) -> None:
    """Gymnasium's env checker, its warnings as errors (but the unbounded-observation one, which
    Gymnasium's own MuJoCo tasks also raise, when ``unbounded``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error")
        warnings.filterwarnings("ignore", message=".*not having a spec")
        if unbounded:
            warnings.filterwarnings("ignore", message=".*infinity. This is probably too")
        check_env(env)


def test_gymnasium_adapter_passes_check_env_on_cartpole() -> None:
    env = to_gymnasium(ENV, PARAMS, seed=0)
    _check(env)
    assert env.action_space == gymnasium.spaces.Discrete(2)
    assert env.observation_space.shape == (4,) and env.observation_space.dtype == np.float32
    with pytest.raises(ValueError, match="render_mode"):
        to_gymnasium(ENV, PARAMS, render_mode="human")


@pytest.mark.parametrize("name", GRIDWORLDS)
def test_gymnasium_adapter_passes_check_env_on_gridworlds(name: str) -> None:
    env, params = _gridworld(name)
    adapter = to_gymnasium(env, params, render_mode="rgb_array")
    _check(adapter)
    adapter.reset(seed=5)
    frame = adapter.render()
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
    assert frame.ndim == 3 and frame.shape[-1] == 3 and frame.std() > 0


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), other=st.integers(0, 2**31 - 1))
def test_gymnasium_reset_seed_is_deterministic(seed: int, other: int) -> None:
    env = _SINGLE
    first, _ = env.reset(seed=seed)
    env.step(1)
    second, _ = env.reset(seed=seed)
    np.testing.assert_array_equal(first, second)
    if other != seed:
        assert not np.array_equal(env.reset(seed=other)[0], first)


def test_vector_adapter_same_step_autoreset_with_final_obs() -> None:
    vec = to_gymnasium_vector(ENV, PARAMS, num_envs=3, seed=0)
    assert vec.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert vec.observation_space.shape == (3, 4) and vec.single_action_space.n == 2
    vec.reset(seed=11)
    singles = [to_gymnasium(ENV, PARAMS) for _ in range(3)]
    for i, single in enumerate(singles):
        single.reset(seed=11 + i)
    ended = np.zeros(3, np.bool_)
    for _ in range(30):
        obs, reward, terminated, truncated, infos = vec.step(np.ones(3, np.int32))
        for i, single in enumerate(singles):
            s_obs, s_reward, s_term, s_trunc, s_info = single.step(1)
            np.testing.assert_allclose(obs[i], s_obs, rtol=1e-6)
            assert (reward[i], terminated[i], truncated[i]) == (s_reward, s_term, s_trunc)
            if s_term or s_trunc:
                assert infos["_final_obs"][i] and infos["final_info"]["_terminated"][i]
                final = s_info["final_observation"]
                np.testing.assert_allclose(infos["final_obs"][i], final, rtol=1e-6)
                assert not np.allclose(infos["final_obs"][i], obs[i])
            elif "final_obs" in infos:
                assert infos["final_obs"][i] is None and not infos["_final_obs"][i]
        assert not truncated.any()
        ended |= terminated
    assert ended.all()


def test_vector_adapter_reports_truncation_separately() -> None:
    params = PARAMS.replace(max_steps_in_episode=4)
    vec = to_gymnasium_vector(ENV, params, num_envs=4)
    first, _ = vec.reset(seed=2)
    again, _ = vec.reset(seed=[2, 3, 4, 5])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, vec.reset(seed=[2, 3, 4, 6])[0])
    for _ in range(3):
        *_, terminated, truncated, infos = vec.step(np.zeros(4, np.int32))
        assert not (terminated | truncated).any() and "final_obs" not in infos
    *_, terminated, truncated, infos = vec.step(np.zeros(4, np.int32))
    assert truncated.all() and not terminated.any() and infos["_final_obs"].all()
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.ones(3, np.int32))


def test_vector_adapter_renders_each_env() -> None:
    env, params = _gridworld("GoalSequence")
    vec = to_gymnasium_vector(env, params, num_envs=2, seed=0, render_mode="rgb_array")
    vec.reset()
    frames = vec.render()
    assert len(frames) == 2 and all(f.dtype == np.uint8 and f.ndim == 3 for f in frames)


@pytest.mark.parametrize("name", ["HalfCheetah", "Hopper", "Walker2d"])
def test_mujoco_tasks_render_and_pass_check_env(name: str) -> None:
    """MuJoCo's own renderer, headless; where no OpenGL library exists the error says which
    package to install (then this test is skipped)."""
    env, params = envs.make(name, backend="native")
    try:
        env._renderer()
    except RuntimeError as err:
        assert "apt install libegl1" in str(err)
        pytest.skip(f"no OpenGL here: {err}")
    adapter = to_gymnasium(env, params, render_mode="rgb_array")
    _check(adapter, unbounded=True)
    adapter.reset(seed=5)
    first = adapter.render()
    assert first.shape == (480, 480, 3) and first.dtype == np.uint8 and first.std() > 0
    for _ in range(5):
        adapter.step(np.ones(adapter.action_space.shape, np.float32))
    assert not np.array_equal(adapter.render(), first)  # the body moved


def test_gymnax_envs_check_their_actions() -> None:
    env, params = envs.make("gymnax:CartPole-v1")
    _, state = env.reset(jax.random.key(0), params)
    with pytest.raises(ValueError, match=r"discrete action 5 is outside \[0, 2\)"):
        env.step(jax.random.key(1), state, jnp.int32(5), params)
    with pytest.raises(ValueError, match="must be integers"):
        env.step(jax.random.key(1), state, jnp.float32(1.0), params)
