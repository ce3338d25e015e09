"""Shared networks: the GRU's reset really forgets, heads have the right shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.networks import ActorCritic, ResettableGRU, activation_fn


def test_gru_reset_equals_fresh_start():
    gru = ResettableGRU(8)
    key = jax.random.key(0)
    xs = jax.random.normal(key, (6, 3, 4))
    carry = ResettableGRU.initial_carry(3, 8)
    params = gru.init(key, carry, xs, jnp.zeros((6, 3), bool))
    resets = jnp.zeros((6, 3), bool).at[3].set(True)
    _, ys = gru.apply(params, carry + 1.0, xs, resets)  # non-zero memory before the reset
    _, fresh = gru.apply(params, carry, xs[3:], jnp.zeros((3, 3), bool))
    np.testing.assert_allclose(ys[3:], fresh, atol=1e-6)
    _, no_reset = gru.apply(params, carry + 1.0, xs, jnp.zeros((6, 3), bool))
    assert not np.allclose(no_reset[3:], fresh, atol=1e-3)


@pytest.mark.parametrize("discrete", [True, False])
def test_actor_critic_shapes(discrete):
    net = ActorCritic(action_dim=3, discrete=discrete)
    obs = jnp.zeros((5, 7))
    params = net.init(jax.random.key(0), obs)
    pi, value = net.apply(params, obs)
    assert value.shape == (5,)
    assert pi.sample(seed=jax.random.key(1)).shape == ((5,) if discrete else (5, 3))


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="unknown activation 'sigmoidish'"):
        activation_fn("sigmoidish")
