"""Continual offline RL: model-based experience selection, dual behaviour cloning, forgetting."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from agents.checkpoint import Checkpointer
from agents.core import export_policy, load_policy
from agents.dynamics import DynamicsConfig, select_mbes
from agents.evaluation import mmd, transfer_metrics
from agents.oer import ContinualConfig, buffer_distances, make_continual
from agents.replay import Transition
from experiments.runner import RunFolder, run_chunked

PENDULUM = envs.make("gymnax:Pendulum-v1")  # obs [cos, sin, theta dot], torque in [-2, 2]
TINY = ContinualConfig(
    steps_per_task=800, batch_size=64, hidden=(32, 32), buffer_size=100, eval_episodes=0,
    num_neighbours=16, actor_lr=1e-3, critic_lr=1e-3, alpha=0.0,
    dynamics=DynamicsConfig(total_steps=200, hidden=(32, 32)),
)  # fmt: skip  # alpha 0: TD3+BC is behaviour cloning, so what is remembered is easy to read


def two_tasks(n: int = 1000) -> list[Transition]:
    """Task A: torque +1.5 where cos > 0; task B: torque -1.5 where cos < 0 (same network
    input space, different regions): a learner that forgets acts like B on A's states."""
    out = []
    for i, sign in enumerate((1.0, -1.0)):
        obs = jax.random.uniform(jax.random.key(i), (n, 3), minval=-1.0, maxval=1.0)
        obs = obs.at[:, 0].set(sign * jnp.abs(obs[:, 0]) + 0.1 * sign)
        done = (jnp.arange(n) % 50 == 49).astype(bool)  # 50-step "episodes"
        action = jnp.full((n, 1), 1.5 * sign)
        out.append(Transition(obs, action, jnp.zeros(n), obs, jnp.zeros(n, bool), done))
    return out


def actions_on_a(learner, state, data) -> np.ndarray:
    """Each seed's mean torque on task A's states with task A's head: [S]."""
    params = learner.policy_params(state)
    act = lambda p: learner.policy.act({**p, "head": 0}, (), data.obs, jax.random.key(0), True)[1]
    return np.asarray(jax.vmap(act)(params).mean((1, 2)))


@pytest.mark.parametrize(
    "method, selection, remembers",
    [
        ("finetune", "random", False),
        pytest.param("joint", "random", True, marks=pytest.mark.slow),
        pytest.param("replay", "random", True, marks=pytest.mark.slow),
        ("oer", "mbes", True),
    ],
)
def test_replay_and_oer_remember_the_first_task_and_fine_tuning_forgets(
    tmp_path, method, selection, remembers
):
    data = two_tasks()
    env, params = PENDULUM
    config = TINY.replace(method=method, selection=selection)
    learner = make_continual(config, data, env, [params, params], names=["A", "B"])
    state, metrics, _ = run_chunked(
        learner, jax.random.key(0), 2, RunFolder(tmp_path, {"m": method}), 1, False
    )
    torque = actions_on_a(learner, state, data[0])  # 1.5: remembered; pulled towards -1.5
    if remembers:
        assert (torque > 1.0).all(), torque
    else:
        assert (torque < 0.5).all(), torque
    # the policy for task A exports and acts the same loaded, without the trainer
    one = {**jax.tree.map(lambda x: x[0], learner.policy_params(state)), "head": np.int32(0)}
    export_policy(tmp_path / "policy", learner.policy, one, {"task": "A"})
    policy, loaded, meta = load_policy(tmp_path / "policy")
    act = lambda pol, p: np.asarray(pol.act(p, (), data[0].obs[:8], jax.random.key(0), True)[1])
    np.testing.assert_allclose(act(policy, loaded), act(learner.policy, one), rtol=0, atol=0)
    assert meta["task"] == "A"
    if method == "oer":  # the learning policy itself forgets; the clone is what remembers
        learning = {"actor": state.actor.params, "head": np.zeros(2, np.int32)}
        act = lambda p: learner.policy.act(p, (), data[0].obs, jax.random.key(0), True)[1]
        assert (np.asarray(jax.vmap(act)(learning)).mean((1, 2)) < 0.5).all()
        assert (metrics["confident"] > 0).all() and (metrics["chained"] > 0).all()
    if method in ("replay", "oer"):
        filled = np.asarray(state.buffer.filled)
        assert (filled == 2 * config.buffer_size).all()
        kept = np.asarray(state.buffer.action)  # [S, 2 * size, 1] in [-1, 1]: A's +0.75, B's -0.75
        assert (kept[:, : config.buffer_size] > 0.5).all() and (
            kept[:, config.buffer_size :] < -0.5
        ).all()


def test_more_clone_steps_keep_the_clone_closer_to_the_learning_policy():
    """``clone_steps`` > 1 (fresh batches per extra step) distils the learning policy faster:
    a lower dual-cloning loss on both tasks; 0 is refused."""
    data, (env, params) = two_tasks(), PENDULUM
    config = TINY.replace(method="oer", selection="random", steps_per_task=200)
    losses = {}
    for steps in (1, 4):
        learner = make_continual(config.replace(clone_steps=steps), data, env, [params] * 2)
        losses[steps] = np.asarray(jax.jit(learner.train)(jax.random.key(0))[1]["clone_loss"])
    assert (losses[4] < losses[1]).all(), losses
    with pytest.raises(ValueError, match="clone_steps"):
        config.replace(clone_steps=0).validate()


def test_a_buffer_of_one_repeated_state_covers_less_than_a_uniform_one():
    """``buffer_distances``: a uniformly selected buffer covers its task's data about as well as
    another uniform draw; the same buffer collapsed onto one state covers it far worse."""
    data, (env, params) = two_tasks(), PENDULUM
    config = TINY.replace(method="replay", selection="random", steps_per_task=20)
    learner = make_continual(config, data, env, [params] * 2)
    keys = jax.random.split(jax.random.key(0), 2)
    state, _ = jax.jit(jax.vmap(learner.train))(keys)
    uniform = buffer_distances(learner, state, env, [params] * 2, data, samples=200)
    assert set(uniform) == {"buffer", "random", "coverage", "coverage_random"}
    np.testing.assert_allclose(uniform["coverage"], uniform["coverage_random"], rtol=0.2)
    obs = state.buffer.data.obs  # [S, 2 * size, D]: task A's slots first
    one = obs.at[:, : config.buffer_size].set(obs[:, :1])
    state = state._replace(buffer=state.buffer._replace(data=state.buffer.data._replace(obs=one)))
    collapsed = buffer_distances(learner, state, env, [params] * 2, data, samples=200)
    assert (collapsed["coverage"] > 2 * collapsed["coverage_random"]).all(), collapsed


def test_a_run_stopped_between_tasks_resumes_to_the_same_result(tmp_path, monkeypatch):
    data, (env, params) = two_tasks(400), PENDULUM
    config = TINY.replace(method="ewc", steps_per_task=20)
    learner = make_continual(config, data, env, [params, params])
    run = lambda path: run_chunked(learner, jax.random.key(3), 2, RunFolder(path, {}), 1, False)
    full, full_metrics, _ = run(tmp_path / "a")
    original = Checkpointer.save

    def stop_after_the_first_task(self, step, state):
        original(self, step, state)
        raise KeyboardInterrupt("simulated stop")

    monkeypatch.setattr(Checkpointer, "save", stop_after_the_first_task)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    monkeypatch.setattr(Checkpointer, "save", original)
    resumed, resumed_metrics, _ = run(tmp_path / "b")
    keyless = lambda x: (
        jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    )
    for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(keyless(x), keyless(y))
    np.testing.assert_array_equal(full_metrics["critic_loss"], resumed_metrics["critic_loss"])
    fisher = jax.tree.leaves(resumed.fisher)  # EWC's summed Fisher of both tasks, kept
    assert all(np.isfinite(f).all() for f in fisher) and any((f > 0).any() for f in fisher)


def chain_world(n: int = 4000) -> Transition:
    """2-D states, random actions in [-1, 1]^2, s' = s + 0.5 a; 40-step episodes."""
    k_obs, k_act = jax.random.split(jax.random.key(7))
    obs = jax.random.uniform(k_obs, (n, 2), minval=-1.0, maxval=1.0)
    action = jax.random.uniform(k_act, (n, 2), minval=-1.0, maxval=1.0)
    done = jnp.arange(n) % 40 == 39
    return Transition(obs, action, jnp.zeros(n), obs + 0.5 * action, jnp.zeros(n, bool), done)


def test_mbes_follows_the_policy_where_the_model_is_confident_and_the_data_where_not():
    data = chain_world()
    n = data.reward.shape[0]
    starts = jnp.concatenate([jnp.array([True]), (data.terminated | data.truncated)[:-1]])
    policy = lambda obs: jnp.tile(jnp.array([[1.0, 0.0]]), (obs.shape[0], 1))
    exact = lambda obs, action: ((obs + 0.5 * action)[None], jnp.zeros((1, *obs.shape)))
    unsure = lambda obs, action: ((obs + 0.5 * action)[None], jnp.full((1, *obs.shape), 1e6))
    select = lambda predict: select_mbes(
        jax.random.key(0), data, n, starts, policy, predict, 200, num_neighbours=64
    )

    picked, stats = jax.jit(lambda: select(exact))()
    assert np.unique(np.asarray(picked)).size == 200
    assert float(stats["confident"]) == 1.0
    # the transitions chosen act like the policy: far closer to (1, 0) than the data's actions
    gap = lambda idx: float(jnp.abs(data.action[idx] - jnp.array([1.0, 0.0])).mean())
    # kept neighbours are skipped, so the chains fill the whole buffer (no uniform top-up)
    assert int(stats["chained"]) == 200
    assert gap(picked) < 0.5 * gap(jnp.arange(n))

    picked, stats = jax.jit(lambda: select(unsure))()
    assert float(stats["confident"]) == 0.0
    # unconfident: the chains walk the data's own episodes from their starts, step by step
    assert int(stats["chained"]) >= 200
    kept = set(np.asarray(picked).tolist())
    assert all(bool(starts[i]) or i - 1 in kept for i in kept)


def test_transfer_metrics_by_hand():
    r = np.array([[80.0, 10.0, 0.0], [60.0, 90.0, 5.0], [50.0, 70.0, 85.0]])
    m = transfer_metrics(r, single=np.array([70.0, 80.0, 90.0]))
    assert m["average"] == pytest.approx((50 + 70 + 85) / 3)
    assert m["bwt"] == pytest.approx(((50 - 80) + (70 - 90)) / 2)
    assert m["forgetting"] == pytest.approx(((80 - 50) + (90 - 70)) / 2)
    assert m["fwt"] == pytest.approx(((80 - 70) + (90 - 80) + (85 - 90)) / 3)
    batched = transfer_metrics(np.stack([r, r]))
    np.testing.assert_allclose(batched["forgetting"], [25.0, 25.0])


def test_mmd_is_zero_for_one_sample_and_grows_with_a_shift():
    x = jax.random.normal(jax.random.key(0), (300, 3))
    y = jax.random.normal(jax.random.key(1), (300, 3))
    assert float(mmd(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(mmd(x, y)) < float(mmd(x, y + 1.0)) < float(mmd(x, y + 3.0))


def test_mmd_matches_a_float64_reference_on_state_like_samples():
    """Against scipy's pairwise distances in float64, on large-magnitude 17-D samples (where a
    float32 Gram-matrix shortcut could cancel) and with a given bandwidth."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, (400, 17))
    y = rng.normal(5.5, 3.0, (300, 17))
    z = np.concatenate([x, y])
    d2 = cdist(z, z, "sqeuclidean")
    x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    for bandwidth, h2 in ((None, np.median(d2)), (2.0, 4.0)):
        k = np.exp(-d2 / h2)
        ref = k[:400, :400].mean() + k[400:, 400:].mean() - 2 * k[:400, 400:].mean()
        assert float(mmd(x32, y32, bandwidth)) == pytest.approx(ref, rel=1e-3, abs=1e-6)


def test_bad_sequences_are_named():
    env, params = PENDULUM
    a, b = two_tasks(200)
    wide = b._replace(obs=jnp.zeros((200, 4)), next_obs=jnp.zeros((200, 4)))
    with pytest.raises(ValueError, match=r"task 'B'.*obs"):
        make_continual(TINY, [a, wide], env, [params, params], names=["A", "B"])
    with pytest.raises(ValueError, match="task 'B' has no dataset"):
        make_continual(TINY, [a, None], env, [params, params], names=["A", "B"])
    with pytest.raises(ValueError, match="buffer_size=0"):
        make_continual(TINY.replace(buffer_size=0), [a, b], env, [params, params])
    with pytest.raises(ValueError, match="task 'A' has 200 transitions, fewer than buffer_size"):
        make_continual(TINY.replace(buffer_size=300), [a, b], env, [params, params], None, "AB")
    with pytest.raises(ValueError, match="method='replay-all'"):
        make_continual(TINY.replace(method="replay-all"), [a, b], env, [params, params])
    with pytest.raises(ValueError, match="2 datasets, 1 task params"):
        make_continual(TINY, [a, b], env, [params])
    with pytest.raises(ValueError, match=r"one \(random, expert\) pair .* shape \[2, 2\], got"):
        make_continual(TINY, [a, b], env, [params, params], (-1000.0, 0.0))  # one pair, 2 tasks
