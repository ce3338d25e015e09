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


@pytest.mark.parametrize("shape", [(17, 256), (256, 256), (256, 6), (1, 1)])
def test_orthogonal_init_matches_flax_and_never_batches_qr(shape):
    import flax.linen as nn

    from agents.networks import orthogonal

    keys = jax.random.split(jax.random.key(3), 4)
    ours = jax.jit(jax.vmap(lambda k: orthogonal(1.7)(k, shape)))(keys)
    flax = jax.vmap(lambda k: nn.initializers.orthogonal(1.7)(k, shape))(keys)
    np.testing.assert_allclose(ours, flax, rtol=1e-5, atol=1e-6)
    # vmapped (twice), the QR stays one matrix at a time: a batched LAPACK QR on CPU splits over
    # XLA's intra-op pool and can deadlock it
    nested = jax.vmap(jax.vmap(lambda k: orthogonal()(k, shape)))
    text = jax.jit(nested).lower(keys.reshape(2, 2)).as_text()
    lapack = [line for line in text.splitlines() if "custom_call @lapack" in line]
    assert lapack and all('num_batch_dims = "0"' in line for line in lapack)
