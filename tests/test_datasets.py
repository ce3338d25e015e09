"""Tests for agents.replay.datasets: Minari storage, loading, bad input, normalised scores."""

from __future__ import annotations

import json
import os

import gymnasium as gym
import h5py
import jax
import jax.numpy as jnp
import minari
import numpy as np
import pytest

import envs
from agents.replay import Transition
from agents.replay.datasets import (
    D4RL_REF_SCORES,
    DatasetError,
    collect,
    episode_returns,
    episode_subset,
    load_dataset,
    normalized_score,
    save_dataset,
)

pytestmark = pytest.mark.xdist_group("datasets")  # one worker builds its module fixtures

ENV_NAME = "gymnax:Pendulum-v1"
ID = "skill-agents/pendulum-random-v0"


@pytest.fixture(scope="session")  # one worker runs the group: built once
def pendulum():
    return envs.make(ENV_NAME)


@pytest.fixture(scope="session")  # one worker runs the group: built once
def rollouts(pendulum):
    """[450, 3] random-action transitions: 2 full 200-step episodes + 50 unfinished per env."""
    env, params = pendulum
    act = lambda obs, key: jax.random.uniform(key, (obs.shape[0], 1), minval=-2.0, maxval=2.0)
    collect_fn = jax.jit(collect, static_argnums=(1, 3, 4, 5))
    return jax.tree.map(np.asarray, collect_fn(jax.random.key(0), env, params, act, 450, 3))


def save(transitions, root, dataset_id=ID, **kwargs):
    kwargs = {"env_name": ENV_NAME, "env_kwargs": {}, "ref_min_score": -1200.0,
              "ref_max_score": -150.0, "root": root, **kwargs}  # fmt: skip
    return save_dataset(transitions, dataset_id, **kwargs)


def column_major(x: np.ndarray) -> np.ndarray:  # [T, E, ...] -> [E * T, ...]
    return np.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])


def test_round_trip_is_exact(tmp_path, rollouts, pendulum):
    env, params = pendulum
    path = save(rollouts, tmp_path, metadata={"level": "random", "author": "tests"})
    data, meta = load_dataset(ID, tmp_path, env=env, env_params=params)

    expected = Transition(*(column_major(x) for x in rollouts))
    done = expected.terminated | expected.truncated
    # The unfinished last episode of each env comes back truncated; nothing else changes.
    last = np.zeros_like(done)
    last[449::450] = True
    assert not done[last].any()
    np.testing.assert_array_equal(np.asarray(data.truncated), expected.truncated | last)
    for field in ("obs", "action", "reward", "terminated"):
        got, want = np.asarray(getattr(data, field)), getattr(expected, field)
        assert got.dtype == want.dtype, field
        np.testing.assert_array_equal(got, want, err_msg=field)
    # next_obs: bit-exact at episode ends, the following observation inside episodes (which the
    # env's own pre-reset copy matches to float rounding).
    ends = done | last
    next_obs = np.asarray(data.next_obs)
    np.testing.assert_array_equal(next_obs[ends], expected.next_obs[ends])
    np.testing.assert_array_equal(next_obs[:-1][~ends[:-1]], expected.obs[1:][~ends[:-1]])
    np.testing.assert_allclose(next_obs, expected.next_obs, rtol=1e-6, atol=1e-6)

    assert meta["env_name"] == ENV_NAME and meta["env_kwargs"] == {}
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (-1200.0, -150.0)
    assert meta["level"] == "random" and meta["total_episodes"] == 9
    assert meta["path"] == str(path)
    # Minari itself reads the dataset and normalises scores like we do.
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path)
    try:
        ds = minari.load_dataset(ID)
        assert ds.total_steps == 1350 and ds.total_episodes == 9
        ep = ds[0]
        np.testing.assert_array_equal(ep.observations[:-1], expected.obs[:200])
        returns = episode_returns(data)
        np.testing.assert_allclose(
            minari.get_normalized_score(ds, returns) * 100,
            normalized_score("pendulum", returns, -1200.0, -150.0),
        )
    finally:
        del os.environ["MINARI_DATASETS_PATH"]


def test_one_dimensional_time_major_and_overwrite(tmp_path, rollouts):
    single = jax.tree.map(lambda x: x[:, 1], rollouts)
    save(single, tmp_path)
    with pytest.raises(DatasetError, match="already exists"):
        save(single, tmp_path)
    save(single, tmp_path, overwrite=True)
    data, meta = load_dataset(ID, tmp_path)
    np.testing.assert_array_equal(np.asarray(data.obs), single.obs)
    assert meta["total_episodes"] == 3
    np.testing.assert_allclose(
        episode_returns(data),
        [single.reward[:200].sum(), single.reward[200:400].sum(), single.reward[400:].sum()],
        rtol=1e-6,
    )


def test_relative_root_is_resolved_once(tmp_path, rollouts, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = save(jax.tree.map(lambda x: x[:, 0], rollouts), "rel")
    assert path == tmp_path / "rel" / ID
    assert load_dataset(ID, "rel")[0].reward.shape == (450,)


def test_loads_dataset_recorded_by_minari_data_collector(tmp_path, monkeypatch, pendulum):
    """Outside reference: Gymnasium's Pendulum-v1 recorded by Minari's own DataCollector."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    collector = minari.DataCollector(gym.make("Pendulum-v1"))
    rng = np.random.default_rng(0)
    seen = []  # (obs, action, reward, next_obs, terminated, truncated) as Gymnasium returned them
    for episode in range(3):
        obs, _ = collector.reset(seed=episode)
        done = False
        while not done:
            action = rng.uniform(-2, 2, size=(1,)).astype(np.float32)
            next_obs, reward, term, trunc, _ = collector.step(action)
            seen.append((obs, action, reward, next_obs, term, trunc))
            obs, done = next_obs, term or trunc
    collector.create_dataset("outside/pendulum-v0", algorithm_name="uniform random")
    env, params = pendulum
    data, meta = load_dataset("outside/pendulum-v0", env=env, env_params=params)

    assert data.obs.shape == (600, 3) and data.action.shape == (600, 1)
    for i, field in enumerate(Transition._fields):
        want = np.array([s[i] for s in seen])
        np.testing.assert_allclose(np.asarray(getattr(data, field)), want, rtol=1e-6, err_msg=field)
    assert np.asarray(data.truncated).sum() == 3 and not np.asarray(data.terminated).any()
    assert meta["env_name"] is None and meta["ref_min_score"] is None


# --- bad input -----------------------------------------------------------------------------


def test_save_rejects_bad_transitions(tmp_path, rollouts):
    reward = rollouts.reward.copy()
    reward[7, 1] = np.nan
    with pytest.raises(DatasetError, match=r"'reward' holds NaN or inf \(first at index \(7, 1\)"):
        save(rollouts._replace(reward=reward), tmp_path)
    obs = rollouts.obs.copy()
    obs[3, 0, 2] = np.inf
    with pytest.raises(DatasetError, match="'obs' holds NaN or inf"):
        save(rollouts._replace(obs=obs), tmp_path)
    with pytest.raises(DatasetError, match=r"per-step shape \(4,\).*observes \(3,\)"):
        save(rollouts._replace(obs=np.zeros((450, 3, 4)), next_obs=np.zeros((450, 3, 4))),
             tmp_path)  # fmt: skip
    with pytest.raises(DatasetError, match="'action' has per-step shape \\(2,\\)"):
        save(rollouts._replace(action=np.zeros((450, 3, 2), np.float32)), tmp_path)
    with pytest.raises(DatasetError, match="empty"):
        save(jax.tree.map(lambda x: x[:0], rollouts), tmp_path)
    with pytest.raises(DatasetError, match="'terminated' has shape"):
        save(rollouts._replace(terminated=rollouts.terminated[:10]), tmp_path)
    with pytest.raises(DatasetError, match="lack field"):
        save({"obs": rollouts.obs}, tmp_path)
    shuffled = jax.tree.map(lambda x: x[::-1], rollouts)
    with pytest.raises(DatasetError, match="time-major rollouts"):
        save(shuffled, tmp_path)
    assert not (tmp_path / ID).exists()  # nothing half-written


def test_load_checks_sizes_against_the_env(tmp_path, rollouts):
    save(rollouts, tmp_path)
    env, params = envs.make("gymnax:CartPole-v1")
    with pytest.raises(DatasetError, match=r"main_data.hdf5: field 'obs' has per-step shape"):
        load_dataset(ID, tmp_path, env=env, env_params=params)


def _episode_file(tmp_path):
    return tmp_path / ID / "data" / "main_data.hdf5"


def test_load_rejects_nan_in_file(tmp_path, rollouts):
    save(rollouts, tmp_path)
    with h5py.File(_episode_file(tmp_path), "a") as f:
        f["episode_4/rewards"][5] = np.nan
    with pytest.raises(DatasetError, match=r"main_data.hdf5: field 'reward' holds NaN"):
        load_dataset(ID, tmp_path)


def test_load_rejects_missing_fields(tmp_path, rollouts):
    save(rollouts, tmp_path)
    with h5py.File(_episode_file(tmp_path), "a") as f:
        del f["episode_2/rewards"]
    with pytest.raises(DatasetError, match=r"main_data.hdf5.*rewards"):
        load_dataset(ID, tmp_path)
    meta_file = tmp_path / ID / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    del meta["action_space"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"metadata.json: missing field\(s\) \['action_space'\]"):
        load_dataset(ID, tmp_path)


def test_load_rejects_empty_and_absent_datasets(tmp_path, rollouts, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    space = gym.spaces.Box(-1, 1, (3,), np.float32)
    minari.create_dataset_from_buffers(
        "skill-agents/empty-v0", [], observation_space=space, action_space=space
    )
    with pytest.raises(DatasetError, match="empty"):
        load_dataset("skill-agents/empty-v0")
    with pytest.raises(DatasetError, match="no Minari dataset 'skill-agents/nope-v0'"):
        load_dataset("skill-agents/nope-v0")


def test_load_rejects_corrupt_files(tmp_path, rollouts):
    save(rollouts, tmp_path)
    data_file = _episode_file(tmp_path)
    data_file.write_bytes(data_file.read_bytes()[:1000])  # truncated copy
    with pytest.raises(DatasetError, match=r"main_data.hdf5: cannot be read.*corrupt"):
        load_dataset(ID, tmp_path)
    (tmp_path / ID / "data" / "metadata.json").write_text('{"total_episodes": 9, ')
    with pytest.raises(DatasetError, match=r"metadata.json: corrupt metadata"):
        load_dataset(ID, tmp_path)


# --- normalised scores -----------------------------------------------------------------------


def test_normalized_score_matches_d4rl():
    assert D4RL_REF_SCORES["halfcheetah"] == (-280.178953, 12135.0)
    assert D4RL_REF_SCORES["hopper"] == (-20.272305, 3234.3)
    assert D4RL_REF_SCORES["walker2d"] == (1.629008, 4592.3)
    # 100 * (R - random) / (expert - random), D4RL's reference returns.
    assert normalized_score("halfcheetah", 5000.0) == pytest.approx(42.530026937)
    assert normalized_score("hopper-medium-v2", 1000.0) == pytest.approx(31.348890404)
    assert normalized_score("skill-agents/walker2d-expert-v0", 4592.3) == pytest.approx(100.0)
    assert normalized_score("HalfCheetah", -280.178953) == pytest.approx(0.0)
    np.testing.assert_allclose(
        normalized_score("ant", jnp.array([-325.6, 3879.7])), [0, 100], atol=1e-4
    )
    assert normalized_score("hopper", 500.0, ref_min=0.0, ref_max=1000.0) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="no D4RL reference returns for task 'pendulum'"):
        normalized_score("pendulum", 1.0)


def test_a_killed_save_leaves_no_dataset_and_a_half_written_one_is_rewritten(
    tmp_path, rollouts, monkeypatch
):
    """Datasets are written aside and renamed when complete; one left half-written by an older
    version (no reference scores in its metadata) counts as missing and is written again."""
    from minari.dataset.minari_storage import MinariStorage

    from agents.replay.datasets import dataset_complete, dataset_path

    single = jax.tree.map(lambda x: x[:, 1], rollouts)

    def killed(self, metadata):
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(MinariStorage, "update_metadata", killed)
    with pytest.raises(KeyboardInterrupt):
        save(single, tmp_path)
    monkeypatch.undo()
    assert not dataset_path(ID, tmp_path).exists() and not dataset_complete(ID, tmp_path)
    assert not list(tmp_path.glob(".partial-*"))
    save(single, tmp_path)
    meta_file = dataset_path(ID, tmp_path) / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if "ref_" not in k}))
    assert not dataset_complete(ID, tmp_path)
    save(single, tmp_path)  # no overwrite needed: it was incomplete
    assert dataset_complete(ID, tmp_path)
    assert load_dataset(ID, tmp_path)[0].reward.shape == (450,)


def test_episode_subset_keeps_whole_episodes_in_order():
    lengths = np.array([3, 5, 2, 7, 4, 6])  # 27 steps, episode i's rewards all i
    ends = np.cumsum(lengths) - 1
    reward = np.repeat(np.arange(6.0), lengths)
    done = np.zeros(27, bool)
    done[ends] = True
    data = Transition(np.arange(27.0)[:, None], np.zeros((27, 1)), reward, np.zeros((27, 1)),
                      done & (reward % 2 == 0), done & (reward % 2 == 1))  # fmt: skip
    for fraction in (0.1, 0.4, 1.0):
        subset = episode_subset(data, fraction, seed=3)
        kept = np.unique(subset.reward).astype(int)
        np.testing.assert_array_equal(subset.reward, np.repeat(kept, lengths[kept]))  # whole
        assert subset.reward.size >= fraction * 27  # enough transitions
        assert subset.reward.size - lengths[kept].max() < fraction * 27  # not one episode more
        np.testing.assert_array_equal(np.diff(subset.obs[:, 0]) > 0, True)  # original order
