"""Tests for the offline learners (agents.td3_bc, agents.iql) and their shared pieces."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from agents import offline
from agents.core import export_policy, load_policy
from agents.iql import GaussianActor, IQLConfig, gaussian, make_iql
from agents.replay import Transition
from agents.replay.datasets import collect, episode_returns, normalized_score
from agents.td3_bc import Actor, TD3BCConfig, make_td3_bc
from envs.wrappers import Normalizer
from experiments.runner import RunFolder, run_chunked

pytestmark = pytest.mark.xdist_group("offline")  # one worker builds its module fixtures

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


@pytest.fixture(scope="session")  # one worker runs the group: built once
def pendulum():
    return envs.make("gymnax:Pendulum-v1")


@pytest.fixture(scope="session")  # one worker runs the group: built once
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


@pytest.fixture(scope="session")  # one worker runs the group: built once
def tiny() -> Transition:
    """400 made-up Pendulum-shaped transitions (4 episodes of 100 steps), no env rollouts."""
    rng = np.random.default_rng(0)
    n = 400
    obs = rng.normal([0.5, -0.2, 1.0], [0.3, 0.6, 2.0], (n + 1, 3)).astype(np.float32)
    return Transition(
        obs[:-1],
        rng.uniform(-2.0, 2.0, (n, 1)).astype(np.float32),
        rng.normal(-5.0, 2.0, n).astype(np.float32),
        obs[1:],
        np.zeros(n, bool),
        np.arange(n) % 100 == 99,
    )


def final_score(metrics: dict) -> float:
    return float(np.asarray(metrics["normalized_score"])[:, -2:].mean())


@pytest.mark.parametrize(
    ("make", "config", "threshold"),
    [
        (make_td3_bc, TD3BCConfig(total_steps=10_000, eval_every=2_000, hidden=(64, 64)), 35.0),
        pytest.param(  # 50 s; IQL trains end to end in the offline study's smoke test
            make_iql,
            IQLConfig(total_steps=10_000, eval_every=2_000, hidden=(64, 64)),
            50.0,
            marks=pytest.mark.slow,
        ),
    ],
    ids=["td3_bc", "iql"],
)
def test_learns_from_mixed_data(make, config, threshold, mixed, pendulum):
    """From half random data, reach a normalised score that random behaviour (0) cannot."""
    env, params = pendulum
    config = config.replace(eval_episodes=16)
    agent = make(config, mixed, env, params, ref_scores=(RANDOM_RETURN, EXPERT_RETURN))
    assert (agent.step_unit, agent.steps_per_update) == ("gradient steps", config.eval_every)
    _, metrics = jax.jit(jax.vmap(agent.train))(jax.random.split(jax.random.key(1), 2))
    assert np.asarray(metrics["return"]).shape == (2, config.num_updates)
    assert final_score(metrics) > threshold, np.asarray(metrics["normalized_score"])
    for name in ("critic_loss", "actor_loss", "q"):
        assert np.isfinite(np.asarray(metrics[name])).all(), name


def test_run_chunked_resumes_and_is_deterministic(tmp_path, tiny, pendulum):
    env, params = pendulum
    # Linear actor and critics (no hidden layer): what is checked does not need more, and
    # compiling is most of this test's time.
    config = TD3BCConfig(total_steps=8, eval_every=2, eval_episodes=0, batch_size=8, hidden=())
    td3 = make_td3_bc(config, tiny, env, params)
    run = lambda path: run_chunked(
        td3, jax.random.key(3), 2, RunFolder(path, {"td3": "x"}), updates_per_chunk=2,
        progress=False,
    )  # fmt: skip
    whole, metrics, _ = run(tmp_path / "whole")
    # The same run stopped after its first chunk (its last checkpoint gone), started again.
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "4")
    resumed, metrics_resumed, timing = run(tmp_path / "resumed")
    assert timing["steps_per_s"] > 0  # it did train the second chunk again
    equal = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    jax.tree.map(equal, whole.actor.params, resumed.actor.params)
    jax.tree.map(equal, whole.target_critic, resumed.target_critic)
    np.testing.assert_array_equal(metrics["critic_loss"], metrics_resumed["critic_loss"])
    assert metrics["critic_loss"].shape == (2, 4)
    # Seeds differ from each other.
    assert not np.allclose(metrics["critic_loss"][0], metrics["critic_loss"][1])


@pytest.mark.parametrize("make", [make_td3_bc, make_iql], ids=["td3_bc", "iql"])
def test_policy_exports_and_acts_in_env_units(make, tmp_path, tiny, pendulum):
    """The exported policy acts without the dataset exactly as the trained one does."""
    env, params = pendulum
    config = {"total_steps": 2, "eval_every": 2, "eval_episodes": 0, "hidden": (8,)}
    config = (TD3BCConfig if make is make_td3_bc else IQLConfig)(**config)
    agent = make(config, tiny, env, params)
    policy_params = agent.policy_params(jax.jit(agent.init)(jax.random.key(0)))
    export_policy(tmp_path, agent.policy, policy_params, {"dataset": "tiny"})
    policy, loaded, metadata = load_policy(tmp_path)
    assert metadata["dataset"] == "tiny"
    obs, key = jnp.asarray(tiny.obs[:16]), jax.random.key(1)
    for deterministic in (True, False):
        theirs = agent.policy.act(policy_params, (), obs, key, deterministic)[1]
        ours = policy.act(loaded, policy.initial_carry(16), obs, key, deterministic)[1]
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
        assert ours.shape == (16, 1) and bool((jnp.abs(ours) <= 2.0).all())
    greedy = np.asarray(policy.act(loaded, (), obs, key, True)[1])
    sampled = np.asarray(policy.act(loaded, (), obs, key, False)[1])
    assert np.array_equal(greedy, sampled) == (make is make_td3_bc)  # IQL samples its Gaussian
    # In the env's units: the dataset's normalisation and the [-2, 2] torque range are inside.
    norm = Normalizer.fit(tiny.obs, eps=offline.OBS_STD_EPS)
    net = Actor(1, (8,)) if make is make_td3_bc else GaussianActor(1, (8,))
    out = net.apply(loaded, norm.normalize(obs))
    out = out if make is make_td3_bc else out[0]
    np.testing.assert_allclose(greedy, 2.0 * np.clip(np.asarray(out), -1, 1), rtol=1e-5, atol=1e-6)


def test_prepare_normalises_and_rescales(mixed, pendulum):
    env, params = pendulum
    data = offline.prepare(mixed, env, params, normalize_obs=True, reward_scale=2.0)
    # The one normaliser reproduces the dataset statistics TD3+BC and CORL use.
    obs = np.asarray(mixed.obs, np.float32)
    np.testing.assert_allclose(np.asarray(data.obs.mean), obs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(data.obs.std), obs.std(0) + 1e-3, rtol=1e-5)
    scaled = np.asarray(data.transitions.obs)
    np.testing.assert_allclose(scaled.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(scaled.std(0), 1.0, atol=1e-2)
    np.testing.assert_allclose(np.asarray(data.transitions.reward), 2.0 * mixed.reward, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(data.transitions.action), mixed.action / 2.0, atol=1e-6)
    to_env = offline.env_action(
        jnp.array([[-1.0], [1.0], [3.0]]), data.action_low, data.action_high
    )
    np.testing.assert_allclose(np.asarray(to_env), [[-2], [2], [2]])
    returns = episode_returns(mixed)
    scale = offline.locomotion_reward_scale(mixed)
    assert scale == pytest.approx(1000.0 / (returns.max() - returns.min()))


def test_iql_log_prob_is_the_gaussian_formula():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    mean = jax.random.uniform(k1, (5, 3), minval=-1, maxval=1)
    log_std = jax.random.uniform(k2, (3,), minval=-3, maxval=1)
    action = jax.random.uniform(k3, (5, 3), minval=-1, maxval=1)
    z = (action - mean) / jnp.exp(log_std)
    by_hand = (-0.5 * jnp.square(z) - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
    got = gaussian(mean, log_std).log_prob(action)
    np.testing.assert_allclose(np.asarray(got), np.asarray(by_hand), rtol=1e-5, atol=1e-5)


def test_normalized_score_on_numpy_and_in_jit():
    returns = np.array([-20.0, 90.0, 200.0])
    np.testing.assert_allclose(normalized_score("x", returns, -20.0, 200.0), [0, 50, 100])
    assert normalized_score("halfcheetah", -280.178953) == pytest.approx(0.0)
    jitted = jax.jit(lambda r: normalized_score(None, r, -20.0, 200.0))(jnp.asarray(returns))
    assert isinstance(jitted, jax.Array)
    np.testing.assert_allclose(np.asarray(jitted), [0, 50, 100], atol=1e-4)


def test_bad_input_is_rejected(tiny, pendulum, no_compiles):
    env, params = pendulum
    cartpole, cp_params = envs.make("gymnax:CartPole-v1")
    nan_reward = tiny._replace(reward=np.where(np.arange(400) == 7, np.nan, tiny.reward))
    far = tiny._replace(action=tiny.action * 2.0)  # [-4, 4] for a [-2, 2] torque
    wrong = tiny._replace(obs=tiny.obs[:, :2], next_obs=tiny.next_obs[:, :2])
    cases = [
        (
            make_td3_bc,
            TD3BCConfig(eval_every=5_001, total_steps=10_002),
            tiny,
            "multiple of policy",
        ),
        (make_iql, IQLConfig(expectile=1.5), tiny, r"IQLConfig.expectile=1.5 is invalid"),
        (make_iql, IQLConfig(total_steps=1_000, eval_every=300), tiny, "total_steps=1000 must"),
        (
            make_td3_bc,
            TD3BCConfig(),
            wrong,
            r"dataset obs has shape \(400, 2\), expected \(400, 3\)",
        ),
        (make_iql, IQLConfig(), nan_reward, r"reward holds NaN or inf in 1 .* index 7"),
        (make_td3_bc, TD3BCConfig(), far, "far outside the env's bounds"),
        (make_iql, IQLConfig(), tiny._replace(truncated=tiny.truncated[:10]), "truncated has"),
    ]
    with no_compiles():
        for make, config, data, match in cases:
            with pytest.raises(ValueError, match=match):
                make(config, data, env, params)
        with pytest.raises(ValueError, match="continuous"):
            make_td3_bc(TD3BCConfig(), tiny, cartpole, cp_params)
        with pytest.raises(ValueError, match="ref_scores"):
            make_td3_bc(TD3BCConfig(), tiny, env, params, ref_scores=(5.0, 5.0))
