"""SAC learns HalfCheetah, bootstraps through truncation only, tunes its temperature the right
way, resumes exactly, vmaps over seeds, exports its policy and rejects bad input."""

import shutil
from pathlib import Path
from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from agents.evaluation import evaluate
from agents.replay import Transition
from agents.sac import SACConfig, export_policy, load_policy, make_sac, make_train
from experiments.runner import RunFolder, run_chunked

PENDULUM = envs.make("gymnax:Pendulum-v1")  # actions in [-2, 2], truncated after 200 steps
TINY = SACConfig(
    num_envs=2,
    num_steps=8,
    total_timesteps=400 + 2 * 2 * 8,
    learning_starts=400,
    batch_size=32,
    buffer_size=512,
    hidden=(32, 32),
)
ROOT_KEY = jax.random.key(0)
KEYS = jax.random.split(ROOT_KEY, 2)  # what run_chunked gives its two seeds


class Tiny(NamedTuple):
    sac: Any
    learn: Any  # jitted (config, learner, batch, key) -> (learner, metrics); config sweepable
    init: Any  # state after init: the buffer holds learning_starts random transitions
    state: Any  # state after two updates (make_train)
    metrics: dict


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    """The tiny Pendulum SAC from KEYS[0], and its jitted pieces (compiled once per module)."""
    sac = make_sac(TINY, *PENDULUM)
    init = jax.jit(sac.init)(KEYS[0])
    state, metrics = jax.jit(make_train(TINY, *PENDULUM))(KEYS[0])  # init, then two updates
    learn = jax.jit(lambda cfg, *args: make_sac(cfg, *PENDULUM).learn(*args))
    return Tiny(sac, learn, init, state, metrics)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> tuple[Path, Any, dict]:
    """Two vmapped seeds trained by run_chunked, one update per chunk: (folder, state, metrics)."""
    path = tmp_path_factory.mktemp("sac") / "full"
    state, metrics, _ = _run_chunked(path)
    return path, state, metrics


def _run_chunked(path):
    sac = make_sac(TINY, *PENDULUM)
    return run_chunked(
        sac.init,
        sac.update,
        TINY.num_updates,
        TINY.steps_per_update,
        ROOT_KEY,
        2,
        RunFolder(path, {"sac": "tiny"}),
        updates_per_chunk=1,
        progress=False,
    )


def _data(x):
    return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def greedy_return(sac, params, env, env_params, key, n=8):
    act = lambda c, o, r, k: (c, sac.policy.act(params, o, k, deterministic=True))
    return evaluate(key, env, env_params, act, jnp.zeros((n, 0)))["return"]


def test_sac_improves_halfcheetah():
    """A small SAC (64x64, UTD 2, lr 1e-3) on native HalfCheetah: 10k steps after 1k random.

    Uniform random actions score about -280 (D4RL's reference -280.2) and standing still about
    0; 500 needs the cheetah to run. This run scores about 1,100 (greedy, 5 episodes).
    """
    env, env_params = envs.make("HalfCheetah", backend="native")
    lr = 1e-3
    cfg = SACConfig(
        total_timesteps=11_000,
        learning_starts=1_000,
        buffer_size=11_000,
        hidden=(64, 64),
        batch_size=128,
        utd=2,
        actor_lr=lr,
        critic_lr=lr,
        alpha_lr=lr,
    )
    sac = make_sac(cfg, env, env_params)

    def run(key):
        state, metrics = sac.train(key)
        params = state.learner.actor.params
        return metrics, greedy_return(sac, params, env, env_params, jax.random.key(1), n=5)

    metrics, returns = jax.jit(run)(jax.random.key(0))
    first = float(metrics["return"][0])
    assert first < 0, f"the first update should still score like random actions: {first}"
    assert float(returns.mean()) > 500, f"greedy returns after 11k steps: {np.asarray(returns)}"


def test_terminated_stops_the_target_truncated_bootstraps(tiny):
    batch = tiny.sac.sample(tiny.init.buffer, jax.random.key(1))
    batch = batch._replace(reward=jnp.ones_like(batch.reward))
    yes, no = jnp.ones_like(batch.terminated), jnp.zeros_like(batch.terminated)

    def target(terminated, truncated):
        b = batch._replace(terminated=terminated, truncated=truncated)
        return float(tiny.learn(TINY, tiny.init.learner, b, jax.random.key(2))[1]["target"])

    assert target(yes, no) == pytest.approx(1.0)  # reward only
    bootstrapped = target(no, no)
    assert abs(bootstrapped - 1.0) > 1e-3
    assert target(no, yes) == bootstrapped


@pytest.mark.parametrize("scale, rises", [(-10.0, True), (10.0, False)])
def test_temperature_rises_when_entropy_is_below_target(tiny, scale, rises):
    """target entropy -scale * act_dim: far above the policy's (scale -10) or far below (10).

    From a fresh optimiser state, so Adam's first step follows the gradient's sign."""
    batch = tiny.sac.sample(tiny.init.buffer, jax.random.key(1))
    config = TINY.replace(target_entropy_scale=scale)
    learner, _ = tiny.learn(config, tiny.init.learner, batch, jax.random.key(2))
    before = float(tiny.init.learner.temperature.params["log_alpha"])
    after = float(learner.temperature.params["log_alpha"])
    assert (after > before) if rises else (after < before), (before, after)


def test_log_prob_is_the_squashed_rescaled_gaussian_density(tiny):
    params, obs = tiny.state.learner.actor.params, tiny.state.obs
    action, log_prob = tiny.sac.policy.sample(params, obs, jax.random.key(3))
    mean, log_std = tiny.sac.policy.network.apply(params, obs)
    scale = distrax.ScalarAffine(shift=0.0, scale=2.0)  # Pendulum's bounds are [-2, 2]
    dist = distrax.Transformed(
        distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)),
        distrax.Block(distrax.Chain([scale, distrax.Tanh()]), 1),
    )
    np.testing.assert_allclose(log_prob, dist.log_prob(action), rtol=1e-4, atol=1e-4)


def test_buffer_stores_the_pre_reset_observation_at_truncation(tiny):
    """Two envs, 200 random steps each: the last is Pendulum's truncation; next_obs is pre-reset."""
    items = jax.tree.map(
        lambda x: np.asarray(x[0, : TINY.learning_starts]), tiny.init.buffer.experience
    )
    for e in range(TINY.num_envs):  # items are step-major: [steps * E] -> column e
        data = jax.tree.map(lambda x, e=e: x.reshape(-1, TINY.num_envs, *x.shape[1:])[:, e], items)
        assert data.truncated[-1] and not data.truncated[:-1].any() and not data.terminated.any()
        np.testing.assert_array_equal(data.next_obs[:-1], data.obs[1:])
        assert not np.allclose(data.next_obs[-1], tiny.init.obs[e])  # the env reset after it
    assert 1.0 < np.abs(items.action).max() <= 2.0  # uniform over Pendulum's [-2, 2]


def test_shapes_bounds_and_metrics(tiny):
    sac, state, metrics = tiny.sac, tiny.state, tiny.metrics
    assert int(tiny.init.buffer.current_index) == TINY.learning_starts
    assert int(state.buffer.current_index) == TINY.learning_starts + 2 * TINY.steps_per_update
    assert state.obs.shape == (TINY.num_envs, 3)
    for name in ("critic_loss", "actor_loss", "alpha", "entropy", "q", "target", "return"):
        assert metrics[name].shape == (2,), name
    assert np.isfinite(np.asarray(metrics["critic_loss"])).all()
    obs = jnp.zeros((5, 3))
    params = state.learner.actor.params
    action = sac.policy.act(params, obs, jax.random.key(0))
    assert action.shape == (5, 1) and float(jnp.abs(action).max()) <= 2.0
    greedy = [sac.policy.act(params, obs, jax.random.key(i), deterministic=True) for i in (0, 1)]
    np.testing.assert_array_equal(*greedy)


def test_vmapped_seeds_match_single_runs_and_differ(tiny, chunked):
    _, batched, metrics = chunked
    for x, y in zip(jax.tree.leaves(tiny.state), jax.tree.leaves(batched)):
        np.testing.assert_allclose(_data(x), _data(y)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tiny.metrics["critic_loss"], metrics["critic_loss"][0], rtol=1e-5)
    actor = jax.tree.leaves(batched.learner.actor.params)
    assert any(not np.allclose(y[0], y[1]) for y in actor)


def test_resume_matches_uninterrupted(chunked, tmp_path):
    """A run stopped after its first checkpoint and restarted ends exactly like the full run."""
    full_path, full, full_metrics = chunked
    shutil.copytree(full_path, tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / str(TINY.num_updates))  # the last chunk
    resumed, resumed_metrics, _ = _run_chunked(tmp_path / "b")
    for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):  # buffer and keys too
        np.testing.assert_array_equal(_data(x), _data(y))
    np.testing.assert_array_equal(full_metrics["critic_loss"], resumed_metrics["critic_loss"])


def test_exported_policy_acts_like_the_trained_one(tiny, tmp_path):
    sac, state = tiny.sac, tiny.state
    env, env_params = PENDULUM
    params = state.learner.actor.params
    export_policy(tmp_path / "p", TINY, env.action_space(env_params), params, env="Pendulum")
    policy, loaded, meta = load_policy(tmp_path / "p")
    assert meta["env"] == "Pendulum" and meta["agent"] == "sac"
    obs = state.obs
    np.testing.assert_allclose(
        policy.act(loaded, obs, jax.random.key(0), deterministic=True),
        sac.policy.act(params, obs, jax.random.key(0), deterministic=True),
    )


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"learning_starts": 16}, "learning_starts=16 is smaller than batch_size=32"),
        ({"learning_starts": 401}, "not a multiple of num_envs=2"),
        ({"total_timesteps": 401}, "leaves no room for one update"),
        ({"buffer_size": 100}, "buffer_size=100 cannot hold"),
        ({"utd": 0}, "SACConfig.utd must be >= 1"),
        ({"gamma": 1.5}, "SACConfig.gamma=1.5 is invalid"),
        ({"critic_lr": 0.0}, "SACConfig.critic_lr=0.0 is invalid"),
        ({"tau": 0.0}, "SACConfig.tau=0.0 is invalid"),
        ({"init_alpha": -1.0}, "SACConfig.init_alpha=-1.0 is invalid"),
        ({"activation": "sigmoidish"}, "unknown activation"),
    ],
)
def test_invalid_config_is_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_sac(TINY.replace(**overrides), *PENDULUM)


def test_unsuitable_env_and_batch_are_named(tiny):
    with pytest.raises(ValueError, match="continuous \\(Box\\) action space"):
        make_sac(TINY, *envs.make("gymnax:CartPole-v1"))
    batch = tiny.sac.sample(tiny.state.buffer, jax.random.key(0))
    wrong = batch._replace(obs=batch.obs[:, :2])
    with pytest.raises(ValueError, match=r"batch.obs: expected \[B, 3\], got \(32, 2\)"):
        tiny.sac.learn(tiny.state.learner, wrong, jax.random.key(0))
    assert isinstance(batch, Transition)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"tasks": ("ant",)}, "unknown task"),
        ({"sac": SACConfig(total_timesteps=20_000, buffer_size=10_000)}, "must never wrap"),
        ({"snapshot_every": 1_500}, "snapshot_every=1500 must be a multiple"),
        ({"eval_episodes": 5}, "need >= 10"),
        ({"dataset_steps": 1_005}, "multiple of collect_envs=10"),
    ],
)
def test_dataset_args_are_checked(overrides, match):
    from experiments.make_datasets import Args

    with pytest.raises(ValueError, match=match):
        Args(**overrides).validate()


@pytest.mark.slow
def test_make_datasets_saves_every_level_and_skips_when_done(tmp_path):
    from agents.replay.datasets import load_dataset
    from experiments import make_datasets as md

    sac = SACConfig(
        total_timesteps=3_000, learning_starts=1_000, buffer_size=3_000, hidden=(32, 32)
    )
    args = md.Args(
        tasks=("hopper",),
        sac=sac,
        snapshot_every=1_000,
        dataset_steps=2_000,
        root=str(tmp_path / "datasets"),
        out=str(tmp_path / "runs"),
        progress=False,
    )
    results = md.main(args)["hopper"]
    env, env_params = envs.make("Hopper", backend="native")
    sizes = {}
    for level in md.LEVELS:
        data, meta = load_dataset(
            f"skill-agents/hopper-{level}-v0", args.root, env=env, env_params=env_params
        )
        sizes[level] = data.reward.shape[0]
        assert meta["ref_min_score"] == pytest.approx(results["random_return"])
        assert meta["ref_max_score"] == pytest.approx(results["expert_return"])
        assert meta["training_env_steps"] == 3_000 and meta["level"] == level
    assert sizes["medium-replay"] == results["medium_env_steps"]
    assert sizes["medium-expert"] == sizes["medium"] + sizes["expert"] == 4_000
    assert md.main(args)["hopper"] == results  # everything exists: skipped


def test_medium_is_the_closest_snapshot_on_the_way_up():
    from experiments.make_datasets import medium_snapshot

    # expert 1500 -> target 500; the late dip to 495 is not a medium policy
    evals = np.array([188, 325, 453, 871, 439, 2432, 495, 1500.0])
    assert medium_snapshot(evals, 1500.0) == 2
    assert medium_snapshot(np.array([-60, 1100, 2000, 6000.0]), 6000.0) == 2
    assert medium_snapshot(np.array([900, 100, 520, 1500.0]), 1500.0) == 0
