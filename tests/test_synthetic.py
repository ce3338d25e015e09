"""SynthER: transition vectors and terminal flags, chunked upsampling, quality metrics against
the simulator, online SynthER's buffers and batches, and bad requests rejected before
compiling."""

import functools

import flashbax as fbx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from agents.diffusion import DiffusionConfig, make_diffusion
from agents.replay import Transition
from agents.replay.synthetic import transitions_to_vectors, vectors_to_transitions
from agents.sac import SACConfig, SACState, replay_contents
from agents.synther import (
    SynthERConfig,
    Synthesizer,
    SyntheticBuffer,
    dynamics_consistency,
    fit_synthesizer,
    make_synther,
    mixed_batch,
    moments,
    upsample,
)
from envs.wrappers import Normalizer

PENDULUM = envs.make("gymnax:Pendulum-v1")
TINY = DiffusionConfig(width=16, num_blocks=1, embed_dim=16, total_steps=10, batch_size=32)


def random_transitions(n: int, obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> Transition:
    rng = np.random.default_rng(seed)
    f = lambda *shape: rng.normal(size=(n, *shape)).astype(np.float32)
    flags = rng.random(n) < 0.2
    return Transition(
        f(obs_dim), f(act_dim), f(), f(obs_dim), flags, ~flags & (rng.random(n) < 0.1)
    )


def untrained_synthesizer(data: Transition) -> Synthesizer:
    x = transitions_to_vectors(data)
    model = make_diffusion(TINY.replace(num_sample_steps=2), x.shape[1])
    norm = Normalizer.fit(x, ddof=1, eps=1e-5, skip_dims=(x.shape[1] - 1,))
    state = model.init(jax.random.key(0), norm)
    return Synthesizer(model, state, data.obs.shape[1], data.action.shape[1])


def test_vectors_round_trip_and_terminal_flags():
    data = random_transitions(50)
    x = transitions_to_vectors(data)
    assert x.shape == (50, 3 + 2 + 1 + 3 + 1) and x.dtype == np.float32
    back = vectors_to_transitions(x, obs_dim=3)
    for name in ("obs", "action", "reward", "next_obs", "terminated"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name))
    assert not back.truncated.any()  # a generated step has no time limit
    x[:, -1] = np.linspace(0.0, 1.0, 50)  # generated flags are thresholded at 0.5
    np.testing.assert_array_equal(vectors_to_transitions(x, 3).terminated, x[:, -1] > 0.5)
    # the terminal flag is modelled unscaled, every other dimension is z-scored
    norm = untrained_synthesizer(data).state.normalizer
    assert norm.mean[-1] == 0.0 and norm.std[-1] == 1.0
    assert not np.allclose(norm.std[:-1], 1.0)


def test_upsample_in_chunks_is_deterministic_and_shaped():
    synth = untrained_synthesizer(random_transitions(40))
    out = upsample(synth, 2500, jax.random.key(1), chunk_size=1000)
    assert out.obs.shape == (2500, 3) and out.action.shape == (2500, 2)
    assert out.reward.shape == (2500,) and out.terminated.dtype == bool
    assert isinstance(out.obs, np.ndarray) and np.isfinite(out.next_obs).all()
    again = upsample(synth, 2500, jax.random.key(1), chunk_size=1000)
    np.testing.assert_array_equal(out.next_obs, again.next_obs)
    assert not np.allclose(out.obs[:1000], out.obs[1000:2000])  # chunks use fresh noise


def test_upsampled_actions_stay_in_the_fitted_data_range():
    data = random_transitions(40)
    synth = untrained_synthesizer(data)  # an untrained denoiser: samples far out of range
    raw = upsample(synth, 500, jax.random.key(1), clip_actions=False)
    low, high = np.full(2, -0.5, np.float32), np.full(2, 0.5, np.float32)
    assert ((raw.action < low) | (raw.action > high)).any()
    out = upsample(synth._replace(action_range=(low, high)), 500, jax.random.key(1))
    np.testing.assert_array_equal(out.action, np.clip(raw.action, low, high))
    np.testing.assert_array_equal(out.next_obs, raw.next_obs)  # only actions change
    fitted, _ = fit_synthesizer(data, TINY.replace(total_steps=1), jax.random.key(0))
    np.testing.assert_array_equal(fitted.action_range[0], data.action.min(0))
    np.testing.assert_array_equal(fitted.action_range[1], data.action.max(0))


def test_moments_of_identical_data():
    data = random_transitions(100)
    m = moments(data, data)
    np.testing.assert_allclose(m["mean_gap_in_std"], 0.0, atol=1e-12)
    np.testing.assert_allclose(m["std_ratio"], 1.0)


@functools.cache
def cheetah_data(n: int = 200) -> tuple:
    env, params = envs.make("HalfCheetah")

    def step(carry, k):
        obs, state = carry
        k_act, k_env = jax.random.split(k)
        action = jax.random.uniform(k_act, (6,), minval=-1.0, maxval=1.0)
        obs2, state, reward, term, trunc, info = env.step(k_env, state, action, params)
        return (obs2, state), Transition(
            obs, action, reward, info["final_observation"], term, trunc
        )

    key = jax.random.key(0)
    start = env.reset(key, params)
    _, data = jax.jit(lambda k: jax.lax.scan(step, start, jax.random.split(k, n)))(key)
    return env, params, jax.tree.map(np.asarray, data)


def test_dynamics_consistency_separates_real_noisy_and_shuffled_data():
    env, params, data = cheetah_data()
    real = dynamics_consistency(env, params, data, jax.random.key(1))
    assert real["reward_mae"] < 1e-4 and real["next_obs_mse"] < 1e-6  # the state is recovered
    assert real["terminal_agreement"] == 1.0
    assert real["shuffled_next_obs_mse"] > 0.5 and real["shuffled_reward_mae"] > 0.1
    scale = data.next_obs.std(0)
    noisy = data._replace(next_obs=data.next_obs + 0.3 * scale, reward=data.reward + 0.05)
    m = dynamics_consistency(env, params, noisy, jax.random.key(1), obs_scale=scale)
    np.testing.assert_allclose(m["next_obs_mse"], 0.09, rtol=1e-3)
    np.testing.assert_allclose(m["reward_mae"], 0.05, rtol=1e-3)
    with pytest.raises(ValueError, match="needs a MuJoCo env"):
        dynamics_consistency(*envs.make("gymnax:Pendulum-v1"), data, jax.random.key(1))


def test_bad_datasets_and_requests_are_rejected_before_compiling(no_compiles):
    good = random_transitions(20)
    synth = untrained_synthesizer(good)
    key = jax.random.key(0)
    nan_reward = good._replace(reward=np.where(np.arange(20) == 7, np.nan, good.reward))
    with no_compiles():
        with pytest.raises(ValueError, match=r"reward has 1 non-finite values.*row 7"):
            fit_synthesizer(nan_reward, TINY, key)
        with pytest.raises(ValueError, match="obs and next_obs must both be"):
            fit_synthesizer(good._replace(next_obs=good.next_obs[:, :2]), TINY, key)
        with pytest.raises(ValueError, match="action has"):
            fit_synthesizer(good._replace(action=good.action[:5]), TINY, key)
        with pytest.raises(ValueError, match="N >= 1"):
            fit_synthesizer(jax.tree.map(lambda x: x[:0], good), TINY, key)
        with pytest.raises(ValueError, match="positive int"):
            upsample(synth, 0, key)
        with pytest.raises(ValueError, match="host memory"):
            upsample(synth, 10**13, key)


def online_config() -> SynthERConfig:
    sac = SACConfig(
        total_steps=1000,
        learning_starts=400,
        utd=1,
        batch_size=32,
        buffer_size=1000,
        hidden=(32, 32),
    )
    diffusion = DiffusionConfig(
        width=64, num_blocks=2, embed_dim=32, total_steps=600, num_sample_steps=16
    )
    return SynthERConfig(sac, diffusion, retrain_every=300, num_synthetic=600, sample_chunk=300)


def is_row(x, rows) -> np.ndarray:
    """[B] bool: which rows of ``x`` [B, D] are rows of ``rows`` [N, D]."""
    return (np.abs(np.asarray(rows)[None] - np.asarray(x)[:, None]).max(-1) == 0).any(1)


def test_mixed_batches_take_real_rows_then_synthetic_ones():
    """Half of each batch from SAC's buffer, the other half from the synthetic buffer in
    ``SACState.aux`` once it is ready (all real before the first refit)."""
    real = random_transitions(64, seed=1)
    buffer = fbx.make_item_buffer(64, 1, 32, add_batches=True)  # SAC's buffer
    stored = buffer.add(buffer.init(jax.tree.map(lambda x: x[0], real)), real)
    assert int(replay_contents(stored)[1]) == 64
    synthetic = random_transitions(50)._replace(truncated=np.zeros(50, bool))
    batch_fn = jax.jit(lambda s, k: mixed_batch(s, k, batch_size=32, synthetic_rows=16))
    for ready in (True, False):
        aux = SyntheticBuffer(synthetic, jnp.array(ready))
        batch = batch_fn(SACState(None, stored, None, None, None, aux), jax.random.key(2))
        assert batch.obs.shape == (32, 3) and batch.terminated.dtype == bool
        assert is_row(batch.obs[:16], real.obs).all()
        assert is_row(batch.obs[16:], synthetic.obs if ready else real.obs).all()


def test_bad_online_settings_are_named():
    config = online_config()
    with pytest.raises(ValueError, match="multiple of sample_chunk"):
        make_synther(config.replace(sample_chunk=7), *PENDULUM)
    with pytest.raises(ValueError, match="retrain_every=301 must be a positive multiple"):
        two_envs = config.sac.replace(num_envs=2)
        make_synther(config.replace(sac=two_envs, retrain_every=301), *PENDULUM)
    with pytest.raises(ValueError, match="leaves no room for one refit period"):
        make_synther(config.replace(retrain_every=900), *PENDULUM)
    with pytest.raises(ValueError, match="ring buffer would overwrite"):
        make_synther(config.replace(sac=config.sac.replace(buffer_size=800)), *PENDULUM)


@pytest.mark.slow  # compile-heavy; run with -m slow
def test_online_synther_refits_on_the_real_buffer_and_trains_end_to_end():
    synther = make_synther(online_config(), *PENDULUM)
    assert synther.num_updates == 2 and synther.steps_per_update == 300
    state = jax.jit(synther.init)(jax.random.key(0))  # 400 uniformly random transitions
    assert not bool(state.aux.ready)
    state, metrics = jax.jit(synther.update)(state)  # 300 env steps, then a refit
    assert bool(state.aux.ready) and np.isfinite(metrics["critic_loss"])
    syn = jax.tree.map(np.asarray, state.aux.data)
    real, size = replay_contents(state.buffer)
    real = jax.tree.map(lambda x: np.asarray(x[: int(size)]), real)
    m = moments(real, syn)
    # cos, sin, angular velocity of the real states: a trained model reproduces their scale
    assert np.abs(m["mean_gap_in_std"][:3]).max() < 0.5, m["mean_gap_in_std"]
    assert ((m["std_ratio"][:3] > 0.6) & (m["std_ratio"][:3] < 1.5)).all(), m["std_ratio"]
    state, metrics = jax.jit(synther.train)(jax.random.key(0))
    assert metrics["return"].shape == (2,) and np.isfinite(metrics["critic_loss"]).all()
    assert bool(state.aux.ready)  # refitted once, after the first period (the last is skipped)
    assert np.isfinite(np.asarray(state.aux.data.obs)).all()


@pytest.mark.slow  # compiles two refits; run with -m slow
def test_online_synthetic_actions_stay_in_the_action_space_unless_asked():
    """A barely trained denoiser generates actions past Pendulum's [-2, 2]: the refit clips
    them by default and keeps them with ``clip_actions=False`` (the reference's behaviour)."""
    config = online_config()
    config = config.replace(diffusion=config.diffusion.replace(total_steps=2))
    largest = {}
    for clip in (True, False):
        synther = make_synther(config.replace(clip_actions=clip), *PENDULUM)
        state, _ = jax.jit(synther.update)(jax.jit(synther.init)(jax.random.key(0)))
        largest[clip] = float(np.abs(np.asarray(state.aux.data.action)).max())
    assert largest[True] <= 2.0 < largest[False], largest
