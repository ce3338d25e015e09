"""Tests for the offline learners (agents.td3_bc, agents.iql) and their shared pieces."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from agents import offline
from agents.iql import IQLConfig, make_iql
from agents.replay import Transition
from agents.replay.datasets import collect, episode_returns
from agents.td3_bc import TD3BCConfig, make_td3_bc
from experiments.runner import RunFolder, run_chunked

# Pendulum-v1 reference returns measured below: uniform random torques and the scripted expert.
RANDOM_RETURN, EXPERT_RETURN = -1230.0, -146.0


def scripted(obs: jax.Array, key: jax.Array, noise: float) -> jax.Array:
    """Energy-pumping swing-up with a PD balance near the top, plus Gaussian torque noise."""
    c, s, w = obs[:, 0], obs[:, 1], obs[:, 2]
    energy = 0.5 * w**2 + 15.0 * c  # 15 = 3g / 2l; upright at rest has energy 15
    balance = -10.0 * jnp.arctan2(s, c) - 2.0 * w
    pump = 2.0 * jnp.sign(w + 1e-3) * jnp.sign(15.0 - energy)
    u = jnp.where(c > 0.95, balance, pump) + noise * jax.random.normal(key, w.shape)
    return jnp.clip(u, -2.0, 2.0)[:, None]


def uniform(obs: jax.Array, key: jax.Array) -> jax.Array:
    return jax.random.uniform(key, (obs.shape[0], 1), minval=-2.0, maxval=2.0)


def flat(tr: Transition) -> Transition:  # [T, E] -> [E * T], episodes contiguous
    return jax.tree.map(lambda x: np.asarray(x).swapaxes(0, 1).reshape((-1,) + x.shape[2:]), tr)


@pytest.fixture(scope="module")
def pendulum():
    return envs.make("gymnax:Pendulum-v1")


@pytest.fixture(scope="module")
def mixed(pendulum):
    """8k noisy-expert + 8k uniformly random Pendulum transitions (40 + 40 episodes)."""
    env, params = pendulum
    k_expert, k_random = jax.random.split(jax.random.key(0))
    run = jax.jit(collect, static_argnums=(1, 3, 4, 5))
    noisy = lambda obs, key: scripted(obs, key, 1.0)
    expert = flat(run(k_expert, env, params, noisy, 1000, 8))
    rand = flat(run(k_random, env, params, uniform, 1000, 8))
    # The references the normalised scores use are what these policies actually score.
    assert episode_returns(rand).mean() == pytest.approx(RANDOM_RETURN, rel=0.1)
    clean = flat(run(k_expert, env, params, lambda o, k: scripted(o, k, 0.0), 1000, 8))
    assert episode_returns(clean).mean() == pytest.approx(EXPERT_RETURN, rel=0.1)
    return jax.tree.map(lambda a, b: np.concatenate([a, b]), expert, rand)


def final_score(metrics: dict) -> float:
    return float(np.asarray(metrics["normalized_score"])[:, -2:].mean())


@pytest.mark.parametrize(
    ("make", "config", "threshold"),
    [
        (make_td3_bc, TD3BCConfig(total_steps=10_000, eval_every=2_000, hidden=(64, 64)), 35.0),
        (make_iql, IQLConfig(total_steps=10_000, eval_every=2_000, hidden=(64, 64)), 50.0),
    ],
    ids=["td3_bc", "iql"],
)
def test_learns_from_mixed_data(make, config, threshold, mixed, pendulum):
    """From half random data, reach a normalised score that random behaviour (0) cannot."""
    env, params = pendulum
    config = config.replace(eval_episodes=16)
    learner = make(config, mixed, env, params, ref_scores=(RANDOM_RETURN, EXPERT_RETURN))
    _, metrics = jax.jit(jax.vmap(learner.train))(jax.random.split(jax.random.key(1), 2))
    assert np.asarray(metrics["return"]).shape == (2, config.num_updates)
    assert final_score(metrics) > threshold, np.asarray(metrics["normalized_score"])
    for name in ("critic_loss", "actor_loss", "q"):
        assert np.isfinite(np.asarray(metrics[name])).all(), name


def test_run_chunked_resumes_and_is_deterministic(tmp_path, mixed, pendulum):
    env, params = pendulum
    config = TD3BCConfig(
        total_steps=40, eval_every=10, eval_episodes=0, batch_size=32, hidden=(16, 16)
    )
    td3 = make_td3_bc(config, mixed, env, params)
    run = lambda folder, n: run_chunked(
        td3.init, td3.update, n, config.eval_every, jax.random.key(3), 2,
        RunFolder(folder, {"td3": "x"}), updates_per_chunk=2, progress=False,
    )  # fmt: skip
    whole, metrics, _ = run(tmp_path / "whole", config.num_updates)
    run(tmp_path / "resumed", 2)  # stopped after one chunk, then started again
    resumed, metrics_resumed, _ = run(tmp_path / "resumed", config.num_updates)
    chex_equal = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    jax.tree.map(chex_equal, whole.actor.params, resumed.actor.params)
    jax.tree.map(chex_equal, whole.target_critic, resumed.target_critic)
    np.testing.assert_array_equal(metrics["critic_loss"], metrics_resumed["critic_loss"])
    assert metrics["critic_loss"].shape == (2, 4)
    # Seeds differ from each other.
    assert not np.allclose(metrics["critic_loss"][0], metrics["critic_loss"][1])


def test_prepare_normalises_and_rescales(mixed, pendulum):
    env, params = pendulum
    data = offline.prepare(mixed, env, params, normalize_obs=True, reward_scale=2.0)
    obs = np.asarray(data.transitions.obs)
    np.testing.assert_allclose(obs.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(obs.std(0), 1.0, atol=1e-2)
    np.testing.assert_allclose(np.asarray(data.transitions.reward), 2.0 * mixed.reward, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(data.transitions.action), mixed.action / 2.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(data.env_action(jnp.array([[-1.0], [1.0]]))), [[-2], [2]])
    returns = episode_returns(mixed)
    scale = offline.locomotion_reward_scale(mixed)
    assert scale == pytest.approx(1000.0 / (returns.max() - returns.min()))


def test_bad_input_is_rejected(mixed, pendulum):
    env, params = pendulum
    with pytest.raises(ValueError, match="multiple of policy_freq"):
        make_td3_bc(TD3BCConfig(eval_every=5_001, total_steps=10_002), mixed, env, params)
    with pytest.raises(ValueError, match=r"IQLConfig.expectile=1.5 is invalid"):
        make_iql(IQLConfig(expectile=1.5), mixed, env, params)
    with pytest.raises(ValueError, match="total_steps=1000 must be a multiple of eval_every"):
        make_iql(IQLConfig(total_steps=1_000, eval_every=300), mixed, env, params)
    cartpole, cp_params = envs.make("gymnax:CartPole-v1")
    with pytest.raises(ValueError, match="continuous"):
        make_td3_bc(TD3BCConfig(), mixed, cartpole, cp_params)
    wrong = mixed._replace(obs=mixed.obs[:, :2], next_obs=mixed.next_obs[:, :2])
    with pytest.raises(ValueError, match=r"dataset observations have shape \(16000, 2\)"):
        make_iql(IQLConfig(), wrong, env, params)
