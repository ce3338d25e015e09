"""EDM diffusion: preconditioning identities, the sampler on a known distribution, learning a
mixture, EMA, normalisation, conditioning, and bad input rejected before anything compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.diffusion import (
    DiffusionConfig,
    fit,
    heun_sample,
    loss_weight,
    make_diffusion,
    preconditioning,
)
from envs.wrappers import Normalizer

TINY = DiffusionConfig(width=16, num_blocks=1, embed_dim=16, total_steps=10, batch_size=32)


def fit_normalizer(data, skip_dims=(), size=None) -> Normalizer:
    """The diffusion model's normalisation: unbiased std + 1e-5, as in the reference."""
    return Normalizer.fit(data, ddof=1, eps=1e-5, skip_dims=skip_dims, size=size)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_preconditioning_identities(sigma_data):
    sigma = jnp.logspace(-3, 2, 50)
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
    sd2 = sigma_data**2
    # unit-variance network input and training target, and a unit effective loss weight
    np.testing.assert_allclose(c_in**2 * (sigma**2 + sd2), 1.0, rtol=1e-5)
    target_var = ((1 - c_skip) ** 2 * sd2 + c_skip**2 * sigma**2) / c_out**2
    np.testing.assert_allclose(target_var, 1.0, rtol=1e-4)
    np.testing.assert_allclose(loss_weight(sigma, sigma_data) * c_out**2, 1.0, rtol=1e-5)
    np.testing.assert_allclose(c_noise, jnp.log(sigma) / 4, rtol=1e-6)


def test_loss_of_a_zero_network_is_one():
    """With F = 0 the denoiser is c_skip * x, whose weighted error on N(0, sigma_data^2) data
    has expectation exactly 1 at every noise level."""
    config = TINY.replace(sigma_data=0.5)
    model = make_diffusion(config, data_dim=8)
    state = model.init(jax.random.key(0), fit_normalizer(np.eye(8)))
    params = jax.tree.map(jnp.zeros_like, state.train_state.params)
    x0 = 0.5 * jax.random.normal(jax.random.key(1), (4096, 8))
    loss = jax.jit(model.loss)(params, x0, jax.random.key(2))
    assert abs(float(loss) - 1.0) < 0.05


def mixture_denoiser(weights, means, stds):
    """The exact denoiser E[x0 | x] for a 1-D Gaussian mixture observed with noise sigma."""
    weights, means, stds = map(jnp.asarray, (weights, means, stds))

    def denoise(x, sigma):  # x [B, 1]
        var = stds**2 + sigma**2
        log_p = jnp.log(weights) - 0.5 * (x - means) ** 2 / var - 0.5 * jnp.log(var)
        post = jax.nn.softmax(log_p, axis=-1)
        cond_mean = means + stds**2 / var * (x - means)
        return (post * cond_mean).sum(-1, keepdims=True)

    return denoise


@jax.jit
def sample_mixture(key, config):  # config's float fields are traced: one compile for both
    denoise = mixture_denoiser([0.3, 0.7], [-2.0, 1.5], [0.3, 0.5])
    return heun_sample(denoise, key, (20000, 1), config)


@pytest.mark.parametrize("s_churn", [0.0, 80.0])
def test_sampler_recovers_a_gaussian_mixture(s_churn):
    config = DiffusionConfig(num_sample_steps=32, s_churn=s_churn)
    x = np.asarray(sample_mixture(jax.random.key(0), config))[:, 0]
    left = x < -0.5
    assert abs(left.mean() - 0.3) < 0.015
    assert abs(x[left].mean() + 2.0) < 0.03 and abs(x[~left].mean() - 1.5) < 0.03
    assert abs(x[left].std() / 0.3 - 1) < 0.08 and abs(x[~left].std() / 0.5 - 1) < 0.08


def test_learns_a_two_dimensional_mixture():
    """A small denoiser trained on a 2-D mixture (in data units far from N(0, 1)) samples it."""
    key = jax.random.key(0)
    k_mode, k_noise = jax.random.split(key)
    mode = jax.random.bernoulli(k_mode, 0.25, (4096,))
    centres = jnp.where(mode[:, None], jnp.array([30.0, -4.0]), jnp.array([10.0, 2.0]))
    data = centres + jnp.array([2.0, 0.3]) * jax.random.normal(k_noise, (4096, 2))
    config = DiffusionConfig(
        width=64, num_blocks=2, embed_dim=32, total_steps=2000, num_sample_steps=24
    )
    model = make_diffusion(config, data_dim=2)
    state, losses = fit(model, data, key)
    assert losses[-200:].mean() < 0.8 * losses[:50].mean()
    x = np.asarray(jax.jit(model.sample, static_argnums=2)(state, jax.random.key(1), 4000))
    upper = x[:, 0] > 20.0
    assert abs(upper.mean() - 0.25) < 0.05
    tol = np.array([1.0, 0.3])  # half of each dimension's in-mode std
    assert (np.abs(x[upper].mean(0) - [30.0, -4.0]) < tol).all(), x[upper].mean(0)
    assert (np.abs(x[~upper].mean(0) - [10.0, 2.0]) < tol).all(), x[~upper].mean(0)
    between = (x[:, 0] > 16.0) & (x[:, 0] < 24.0)  # 3 stds from both modes
    assert between.mean() < 0.05


def test_training_is_chunkable_and_its_ema_follows_the_reference_rule():
    """``train`` is a scan of ``learn`` on batches keyed by the step count (so chunks equal
    one go), and the EMA copies until ema_start, then every ema_every steps decays by
    min(ema_decay, 1 - (t - ema_start)^-ema_power)."""
    config = TINY.replace(ema_every=2, ema_start=3, ema_decay=0.6, ema_power=0.5, lr=1e-2)
    model = make_diffusion(config, data_dim=3)
    data = jax.random.normal(jax.random.key(0), (64, 3))
    state = model.init(jax.random.key(1), fit_normalizer(data))
    key = jax.random.key(2)
    train = jax.jit(model.train, static_argnames="num_steps")
    chunked, first = train(state, data, key, num_steps=6)
    chunked, second = train(chunked, data, key, num_steps=6)

    learn, ema, losses = jax.jit(model.learn), state.ema_params, []
    for t in range(1, 13):
        k_idx, k_loss = jax.random.split(jax.random.fold_in(key, t - 1))
        idx = jax.random.randint(k_idx, (config.batch_size,), 0, 64)
        state, loss = learn(state, data[idx], k_loss)
        losses.append(loss)
        if t % 2 == 0:
            decay = 0.0 if t <= 3 else min(0.6, 1 - (t - 3) ** -0.5)
            params = state.train_state.params
            ema = jax.tree.map(lambda e, p, d=decay: d * e + (1 - d) * p, ema, params)
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        jax.tree.map(close, state.ema_params, ema)
    np.testing.assert_allclose(np.concatenate([first, second]), losses, rtol=1e-4)
    jax.tree.map(close, chunked.ema_params, state.ema_params)
    kernel = lambda p: p["params"]["Dense_0"]["kernel"]
    assert not np.allclose(kernel(state.ema_params), kernel(state.train_state.params))


def test_normalizer_is_unbiased_skips_flags_and_fits_a_prefix():
    rng = np.random.default_rng(0)
    data = rng.normal([5.0, -3.0, 100.0, 0.0], [0.1, 2.0, 30.0, 1.0], (500, 4)).astype(np.float32)
    data[:, 3] = rng.random(500) < 0.1  # a terminal flag
    norm = fit_normalizer(data, skip_dims=(3,))
    z = np.asarray(norm.normalize(data))
    np.testing.assert_allclose(z[:, :3].mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z[:, :3].std(0, ddof=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(norm.std[:3], data[:, :3].std(0, ddof=1) + 1e-5, rtol=1e-5)
    np.testing.assert_array_equal(z[:, 3], data[:, 3])  # the flag is left as it is
    np.testing.assert_allclose(norm.unnormalize(z), data, rtol=1e-5, atol=1e-4)
    prefix = jax.jit(lambda d, n: fit_normalizer(d, (3,), size=n))(data, 120)  # n traced
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
        prefix,
        fit_normalizer(data[:120], (3,)),
    )


def test_conditional_model_uses_its_condition():
    key = jax.random.key(0)
    cond = jnp.where(jax.random.bernoulli(key, 0.5, (2048, 1)), 2.0, -2.0)
    data = cond + 0.1 * jax.random.normal(jax.random.key(1), (2048, 1))
    config = DiffusionConfig(
        width=32, num_blocks=1, embed_dim=32, total_steps=1000, num_sample_steps=12
    )
    model = make_diffusion(config, data_dim=1, cond_dim=1)
    state, _ = fit(model, data, key, cond=cond)
    sample = jax.jit(model.sample, static_argnums=2)
    for c in (-2.0, 2.0):
        x = sample(state, jax.random.key(2), 500, jnp.full((500, 1), c))
        assert abs(float(x.mean()) - c) < 0.3
    with pytest.raises(ValueError, match="needs cond"):
        model.sample(state, key, 5)


@pytest.mark.parametrize(
    "data, match",
    [
        (np.full((8, 3), np.nan, np.float32), "24 non-finite values"),
        (np.concatenate([np.zeros((7, 3)), [[0.0, np.inf, 0.0]]]), "row 7, dimension 1"),
        (np.zeros((8, 4)), "dimension 4 but the diffusion model was built for 3"),
        (np.zeros((0, 3)), "empty"),
        (np.zeros(8), r"\[num_examples, dim\]"),
    ],
)
def test_bad_training_data_is_rejected_before_compiling(data, match, no_compiles):
    model = make_diffusion(TINY, data_dim=3)
    key = jax.random.key(0)
    with no_compiles(), pytest.raises(ValueError, match=match):
        fit(model, data, key)


def test_bad_sample_requests_are_rejected_before_compiling(no_compiles):
    model = make_diffusion(TINY, data_dim=3)
    state = model.init(jax.random.key(0), fit_normalizer(np.eye(3)))
    key = jax.random.key(1)
    with no_compiles():
        with pytest.raises(ValueError, match="must be a positive int"):
            model.sample(state, key, 0)
        with pytest.raises(ValueError, match="GiB but only"):
            model.sample(state, key, 10**13)
        with pytest.raises(ValueError, match="unconditional"):
            model.sample(state, key, 4, np.zeros((4, 2)))
        with pytest.raises(ValueError, match="fourier_dim=3 must be even"):
            make_diffusion(TINY.replace(fourier_dim=3), data_dim=3)
        with pytest.raises(ValueError, match=r"sigma_max=0\.001 must exceed"):
            make_diffusion(TINY.replace(sigma_max=0.001), data_dim=3)


def test_a_diverging_model_stops_with_the_step_named():
    from agents.core import DivergenceError

    data = jax.random.normal(jax.random.key(0), (256, 2))
    model = make_diffusion(TINY.replace(lr=1e9, total_steps=40), data_dim=2)
    with pytest.raises(DivergenceError, match=r"diffusion training diverged: loss = .* update"):
        fit(model, data, jax.random.key(1), chunk_steps=20)
