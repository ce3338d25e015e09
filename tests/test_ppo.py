"""PPO learns, is deterministic, vmaps over seeds and hyperparameters, and rejects bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from agents.evaluation import evaluate
from agents.hparams import stack_configs
from agents.ppo import PPOConfig, make_ppo, make_train

CARTPOLE = envs.make("gymnax:CartPole-v1")
TINY = PPOConfig(num_envs=4, num_steps=16, total_timesteps=4 * 16 * 3, num_minibatches=2)


def greedy_return(ppo, params, env, env_params, key, n=64):
    act = lambda c, o, r, k: ppo.policy.act(params, c, o, r, k, deterministic=True)  # noqa: E731
    return float(evaluate(key, env, env_params, act, ppo.policy.initial_carry(n))["return"].mean())


def test_ppo_solves_cartpole():
    """PureJaxRL's CartPole settings: 500k steps must reach a greedy mean return >= 475."""
    env, params = CARTPOLE
    ppo = make_ppo(PPOConfig(total_timesteps=500_000), env, params)
    rs, metrics = jax.jit(ppo.train)(jax.random.key(0))
    assert greedy_return(ppo, rs.train_state.params, env, params, jax.random.key(1)) >= 475
    early = np.nanmean(np.asarray(metrics["return"][:20]))
    assert early < 100, "returns should start low: the test must be able to fail"


def test_same_seed_same_result_and_different_seed_differs():
    env, params = CARTPOLE
    train = jax.jit(make_train(TINY, env, params))
    a, _ = train(jax.random.key(3))
    b, _ = train(jax.random.key(3))
    c, _ = train(jax.random.key(4))
    leaves = lambda rs: jax.tree.leaves(rs.train_state.params)  # noqa: E731
    for x, y in zip(leaves(a), leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(leaves(a), leaves(c)))


def test_vmapped_seeds_and_hyperparameter_sweep_match_single_runs():
    env, params = CARTPOLE
    keys = jax.random.split(jax.random.key(0), 2)
    configs = [TINY, TINY.replace(lr=1e-3, ent_coef=0.0)]
    swept, _ = jax.jit(jax.vmap(lambda c, k: make_train(c, env, params)(k)))(
        stack_configs(configs), keys
    )
    for i, cfg in enumerate(configs):
        single, _ = jax.jit(make_train(cfg, env, params))(keys[i])
        for x, y in zip(jax.tree.leaves(single.train_state.params), jax.tree.leaves(swept.train_state.params)):
            np.testing.assert_allclose(x, y[i], rtol=1e-4, atol=1e-5)


def test_recurrent_ppo_runs_and_resets_memory_per_episode():
    env, params = CARTPOLE
    cfg = TINY.replace(recurrent=True, gru_hidden=16, embed=(16,), hidden=(16,))
    rs, metrics = jax.jit(make_train(cfg, env, params))(jax.random.key(0))
    assert rs.carry.shape == (cfg.num_envs, 16)
    assert np.isfinite(np.asarray(metrics["value_loss"])).all()


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"num_minibatches": 3}, "does not divide into num_minibatches=3"),
        ({"lr": 0.0}, "PPOConfig.lr=0.0 is invalid"),
        ({"lr": -1e-3}, "PPOConfig.lr"),
        ({"gamma": 1.5}, "gamma"),
        ({"total_timesteps": 10}, "smaller than one rollout batch"),
        ({"recurrent": True, "num_minibatches": 3}, "num_envs=4 is not divisible"),
        ({"activation": "sigmoidish"}, "unknown activation"),
    ],
)
def test_invalid_config_is_named(overrides, match):
    env, params = CARTPOLE
    with pytest.raises(ValueError, match=match):
        make_ppo(TINY.replace(**overrides), env, params)


def test_stack_configs_rejects_static_differences():
    with pytest.raises(ValueError, match="static field 'num_envs'"):
        stack_configs([TINY, TINY.replace(num_envs=8)])


def test_unknown_env_is_named():
    with pytest.raises(ValueError, match="unknown environment 'NoSuchWorld'"):
        envs.make("NoSuchWorld")
    with pytest.raises(ValueError, match="unknown parameter"):
        envs.make("gymnax:CartPole-v1", no_such_param=1)
