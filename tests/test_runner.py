"""The runner: resume after a stop reproduces an uninterrupted run; files and aggregates."""

import json

import jax
import numpy as np
import pytest

import envs
from agents.checkpoint import Checkpointer, CheckpointError
from agents.ppo import PPOConfig, make_ppo
from experiments.runner import RunFolder, fmt_ci, iqm_ci, run_chunked, run_loop

ENV = envs.make("gymnax:CartPole-v1")
CFG = PPOConfig(num_envs=4, num_steps=16, total_steps=4 * 16 * 6, num_minibatches=2)


AGENT = make_ppo(CFG, *ENV)  # one agent: its chunk program compiles once for every run here


def _run(path, stop_after_saves=None, config=None):
    folder = RunFolder(path, config or {"cfg": "tiny"})
    return run_chunked(AGENT, jax.random.key(0), 2, folder, updates_per_chunk=2, progress=False)


def test_resume_after_stop_matches_uninterrupted(tmp_path, monkeypatch):
    full, full_metrics, _ = _run(tmp_path / "a")

    saves = {"n": 0}
    original = Checkpointer.save

    def crash_after_first_save(self, step, state):
        original(self, step, state)
        saves["n"] += 1
        if saves["n"] == 1:
            raise KeyboardInterrupt("simulated stop")

    monkeypatch.setattr(Checkpointer, "save", crash_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b")
    monkeypatch.setattr(Checkpointer, "save", original)
    assert Checkpointer(tmp_path / "b" / "checkpoints", {"cfg": "tiny"}).latest_step() == 2
    resumed, resumed_metrics, _ = _run(tmp_path / "b")

    for x, y in zip(
        jax.tree.leaves(full.train_state.params), jax.tree.leaves(resumed.train_state.params)
    ):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(full_metrics["value_loss"], resumed_metrics["value_loss"])
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["update"] for line in lines] == list(range(CFG.num_updates))


def test_resume_with_another_config_is_refused(tmp_path):
    step = lambda state, start, n: (state + n, {"x": np.zeros(n)})
    run_loop(RunFolder(tmp_path, {"cfg": "tiny"}), np.zeros(()), step, total=2)
    with pytest.raises(CheckpointError, match="cfg: stored 'tiny', given 'other'"):
        run_loop(RunFolder(tmp_path, {"cfg": "other"}), np.zeros(()), step, total=2)


def test_iqm_ci_brackets_the_iqm():
    point, lo, hi = iqm_ci(np.arange(10.0))
    assert lo <= point <= hi
    assert point == pytest.approx(4.5)
    assert fmt_ci((point, lo, 5.256)) == f"4.50 [{lo:.2f}, 5.26]"
    assert fmt_ci([48.14, 40.0, 50.5], 1) == "48.1 [40.0, 50.5]"


def test_run_loop_resumes_a_generic_loop(tmp_path):
    """Any chunked loop (e.g. generations) resumes from its last checkpoint, lines intact."""
    step = lambda state, start, n: (state + n, {"x": np.arange(start, start + n) * 1.5})
    folder = RunFolder(tmp_path, {"loop": 1})
    state, lines = run_loop(folder, np.zeros(()), step, total=3, chunk=2)
    assert float(state) == 3 and [m["x"] for m in lines] == [0.0, 1.5, 3.0]
    state, lines = run_loop(RunFolder(tmp_path, {"loop": 1}), np.zeros(()), step, total=5)
    assert float(state) == 5 and [m["update"] for m in lines] == [0, 1, 2, 3, 4]


def test_iqm_is_rliables_aggregate_iqm():
    from rliable import metrics

    from experiments.runner import iqm

    rng = np.random.default_rng(0)
    for n in (1, 3, 4, 5, 8, 13):
        x = rng.normal(size=(n, 1))
        assert iqm(x) == pytest.approx(metrics.aggregate_iqm(x), abs=1e-12)
