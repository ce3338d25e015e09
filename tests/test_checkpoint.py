"""Tests for agents.checkpoint: training-state checkpoints and policy export."""

from __future__ import annotations

import gc
import logging
import os
import tempfile
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.checkpoint import Checkpointer, CheckpointError, load_params, save_params

CONFIG = {"lr": 3e-4, "net": {"width": 64, "depth": 2}, "env": "GoalSequence", "layers": (64, 64)}
TX = optax.adam(1e-3)


@struct.dataclass
class TrainState:
    params: dict
    opt_state: optax.OptState
    key: jax.Array  # typed key
    raw_key: jax.Array  # uint32 [2]
    step: jax.Array  # int32 []
    episodes: int
    history: tuple


def make_state(seed: int, width: int = 8) -> TrainState:
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "dense": {"w": jax.random.normal(k1, (4, width)), "b": jnp.zeros(width)},
        "head": jax.random.normal(k2, (width, 2)),
    }
    _, opt_state = TX.update(params, TX.init(params), params)  # non-zero adam moments, count 1
    return TrainState(
        params=params,
        opt_state=opt_state,
        key=jax.random.key(seed + 1),
        raw_key=jax.random.PRNGKey(seed + 2),
        step=jnp.int32(seed % 1000),
        episodes=seed % 17,
        history=(jnp.arange(3.0) * seed, jnp.ones((2, 2), jnp.int32)),
    )


def assert_same_state(restored: TrainState, state: TrainState) -> None:
    assert jax.dtypes.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
    assert jax.random.key_impl(restored.key) == jax.random.key_impl(state.key)
    chex.assert_trees_all_equal(jax.random.key_data(restored.key), jax.random.key_data(state.key))
    chex.assert_trees_all_equal(
        jax.random.uniform(restored.key, (3,)), jax.random.uniform(state.key, (3,))
    )
    assert int(restored.episodes) == state.episodes
    arrays = lambda s: s.replace(key=jnp.zeros(()), episodes=jnp.zeros(()))
    chex.assert_trees_all_equal(arrays(restored), arrays(state))
    chex.assert_trees_all_equal_dtypes(arrays(restored), arrays(state))
    assert restored.raw_key.dtype == jnp.uint32


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**20))
def test_round_trip_nested_state_with_keys_optax_and_ints(seed: int) -> None:
    state = make_state(seed)
    with tempfile.TemporaryDirectory() as root:
        Checkpointer(root, CONFIG).save(7, state)
        restored = Checkpointer(root, CONFIG).restore(make_state(seed + 1))
    assert_same_state(restored, state)
    assert type(restored.episodes) is int


def test_restore_into_abstract_template(tmp_path: Path) -> None:
    state = make_state(3)
    ckpt = Checkpointer(tmp_path, CONFIG)
    ckpt.save(1, state)
    assert_same_state(ckpt.restore(jax.eval_shape(lambda: make_state(0))), state)


def test_latest_step_and_max_to_keep(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, CONFIG, max_to_keep=2)
    assert ckpt.latest_step() is None
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ckpt.restore(make_state(0))
    for step in (0, 5, 10, 15):
        ckpt.save(step, make_state(step))
    assert ckpt.latest_step() == 15
    assert ckpt.all_steps() == [10, 15]
    assert Checkpointer(tmp_path, CONFIG).latest_step() == 15
    assert_same_state(ckpt.restore(make_state(0), step=10), make_state(10))
    assert_same_state(ckpt.restore(make_state(0)), make_state(15))
    with pytest.raises(CheckpointError, match="step 5"):
        ckpt.restore(make_state(0), step=5)
    with pytest.raises(CheckpointError, match="latest saved step 15"):
        ckpt.save(15, make_state(0))


def test_config_is_stored_and_mismatch_names_keys(tmp_path: Path) -> None:
    Checkpointer(tmp_path, CONFIG).save(1, make_state(1))
    assert (tmp_path / "config.json").exists()
    other = {**CONFIG, "lr": 1e-3, "net": {"width": 128, "depth": 2}}
    ckpt = Checkpointer(tmp_path, other)
    with pytest.raises(CheckpointError) as err:
        ckpt.restore(make_state(0))
    message = str(err.value)
    for text in ("lr", "0.0003", "0.001", "net.width", "64", "128", "fresh directory"):
        assert text in message
    assert "depth" not in message
    with pytest.raises(CheckpointError, match="lr"):
        ckpt.save(2, make_state(2))
    with pytest.raises(ValueError, match="JSON"):
        Checkpointer(tmp_path / "x", {"bad": object()})


def test_a_field_added_later_matches_stored_runs_at_its_old_behaviour(tmp_path: Path) -> None:
    """A stored config from before ``clone_steps`` existed resumes with ``clone_steps=1`` (what
    it ran with), and is refused with any other value."""
    Checkpointer(tmp_path, {**CONFIG, "oer": {"alpha": 0.1}}).save(1, make_state(1))
    added = {**CONFIG, "oer": {"alpha": 0.1, "clone_steps": 1}}
    Checkpointer(tmp_path, added).restore(make_state(0))
    with pytest.raises(CheckpointError, match=r"oer\.clone_steps"):
        Checkpointer(tmp_path, {**added, "oer": {"alpha": 0.1, "clone_steps": 4}}).restore(
            make_state(0)
        )


def test_an_added_field_is_matched_by_its_path_not_its_last_name(tmp_path: Path) -> None:
    """``compose.start`` was added later; a field ``start`` elsewhere was not, so a stored run
    without it is another config."""
    Checkpointer(tmp_path, {**CONFIG, "schedule": {"lr": 0.1}}).save(1, make_state(1))
    with pytest.raises(CheckpointError, match=r"schedule\.start"):
        Checkpointer(tmp_path, {**CONFIG, "schedule": {"lr": 0.1, "start": "uniform"}}).restore(
            make_state(0)
        )


def test_structure_mismatch_names_first_leaf(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, CONFIG)
    ckpt.save(1, make_state(1))
    with pytest.raises(CheckpointError, match=r"'params/dense/b' has shape \(8,\).*\(16,\)"):
        ckpt.restore(make_state(1, width=16))
    state = make_state(1)
    extra = state.replace(params={**state.params, "extra": jnp.zeros(2)})
    with pytest.raises(CheckpointError, match="params/extra"):
        ckpt.restore(extra)


def test_partial_save_leaves_latest_good_checkpoint(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, CONFIG)
    ckpt.save(1, make_state(1))
    ckpt.save(2, make_state(2))
    # What a crash mid-save of step 3 leaves: orbax's temporary directory, never renamed.
    partial = tmp_path / "3.orbax-checkpoint-tmp-1700000000000000"
    (partial / "default").mkdir(parents=True)
    (partial / "default" / "_METADATA").write_text('{"tree_metadata": {"trunc')
    resumed = Checkpointer(tmp_path, CONFIG)
    assert resumed.latest_step() == 2
    assert_same_state(resumed.restore(make_state(0)), make_state(2))
    resumed.save(3, make_state(3))
    assert_same_state(resumed.restore(make_state(0)), make_state(3))


@pytest.fixture
def quiet_orbax_futures():
    """orbax leaves the other failed reads of a corrupt checkpoint in futures nobody awaits;
    asyncio logs (or reports as unraisable) each one when it is collected. Only noise."""
    logger = logging.getLogger("asyncio")
    logger.disabled = True
    yield
    gc.collect()
    logger.disabled = False


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.usefixtures("quiet_orbax_futures")
@pytest.mark.parametrize("damage", ["metadata", "truncated_data", "garbage_data", "junk_step"])
def test_corrupt_checkpoint_raises_checkpoint_error(tmp_path: Path, damage: str) -> None:
    ckpt = Checkpointer(tmp_path, CONFIG)
    ckpt.save(1, make_state(1))
    ckpt.save(2, make_state(2))
    step = 2
    data_files = [p for p in (tmp_path / "2").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    if damage == "metadata":
        (tmp_path / "2" / "default" / "_METADATA").write_text("not json")
    elif damage == "truncated_data":
        for path in data_files:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage_data":
        for path in data_files:
            path.write_bytes(os.urandom(path.stat().st_size))
    else:
        step = 3
        (tmp_path / "3").mkdir()
        (tmp_path / "3" / "junk").write_text("junk")
    with pytest.raises(CheckpointError) as err:
        Checkpointer(tmp_path, CONFIG).restore(make_state(0))
    assert f"step {step}" in str(err.value) and str(tmp_path) in str(err.value)
    assert err.value.__cause__ is None
    assert_same_state(Checkpointer(tmp_path, CONFIG).restore(make_state(0), step=1), make_state(1))


def test_params_round_trip(tmp_path: Path) -> None:
    params = make_state(4).params
    metadata = {"network": "mlp", "hidden": [64, 64], "obs_dim": 4, "num_actions": 2}
    save_params(tmp_path / "policy", params, metadata)
    loaded, meta = load_params(tmp_path / "policy")
    assert meta == metadata
    chex.assert_trees_all_equal(loaded, params)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(loaded))
    with pytest.raises(CheckpointError, match="fresh directory"):
        save_params(tmp_path / "policy", params, metadata)
    with pytest.raises(CheckpointError, match="does not exist; check the path"):
        load_params(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no complete policy export.*export_policy"):
        load_params(tmp_path / "empty")
    with pytest.raises(ValueError, match="JSON"):
        save_params(tmp_path / "other", params, {"array": np.zeros(2)})


def test_empty_arrays_round_trip(tmp_path):
    """Empty leaves (e.g. a feed-forward agent's [B, 0] memory) save and restore."""
    state = {"memory": jnp.zeros((4, 0)), "w": jnp.arange(3.0)}
    ckpt = Checkpointer(tmp_path / "ckpt", {"a": 1})
    ckpt.save(1, state)
    restored = ckpt.restore(jax.tree.map(jnp.zeros_like, state))
    assert restored["memory"].shape == (4, 0)
    np.testing.assert_array_equal(restored["w"], state["w"])


def test_a_killed_export_leaves_nothing_and_a_second_export_works(tmp_path, monkeypatch):
    """The export is written beside its folder and renamed into place: a kill before the rename
    (simulated by a failing metadata write) leaves no folder that looks exported."""
    import agents.checkpoint as checkpoint

    params = make_state(4).params

    def killed(path, text):
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(checkpoint, "write_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        save_params(tmp_path / "policy", params, {"a": 1})
    assert not (tmp_path / "policy").exists()
    monkeypatch.undo()
    save_params(tmp_path / "policy", params, {"a": 1})  # the leftover is cleared
    chex.assert_trees_all_equal(load_params(tmp_path / "policy")[0], params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]


def test_checkpoints_without_their_config_record_are_refused(tmp_path):
    """Deleting checkpoints/config.json must not let another config continue the checkpoints."""
    Checkpointer(tmp_path, CONFIG).save(1, make_state(0))
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json recording the config"):
        Checkpointer(tmp_path, {**CONFIG, "lr": 1.0})
    assert not (tmp_path / "config.json").exists()
