"""The runner: resume after a stop reproduces an uninterrupted run; files and aggregates."""

import json

import jax
import numpy as np
import pytest

import envs
from agents.checkpoint import Checkpointer, CheckpointError
from agents.ppo import PPOConfig, load_policy, make_ppo
from experiments import ppo as ppo_experiment
from experiments.runner import RunFolder, fmt_ci, iqm_ci, run_chunked

ENV = envs.make("gymnax:CartPole-v1")
CFG = PPOConfig(num_envs=4, num_steps=16, total_timesteps=4 * 16 * 6, num_minibatches=2)


def _run(path, stop_after_saves=None, config=None):
    ppo = make_ppo(CFG, *ENV)
    folder = RunFolder(path, config or {"cfg": "tiny"})
    return run_chunked(
        ppo.init,
        ppo.update,
        CFG.num_updates,
        CFG.batch_size,
        jax.random.key(0),
        2,
        folder,
        updates_per_chunk=2,
        progress=False,
    )


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
    _run(tmp_path / "a")
    with pytest.raises(CheckpointError, match="cfg: stored 'tiny', given 'other'"):
        _run(tmp_path / "a", config={"cfg": "other"})


def test_iqm_ci_brackets_the_iqm():
    point, lo, hi = iqm_ci(np.arange(10.0))
    assert lo <= point <= hi
    assert point == pytest.approx(4.5)
    assert fmt_ci((point, lo, 5.256)) == f"4.50 [{lo:.2f}, 5.26]"
    assert fmt_ci([48.14, 40.0, 50.5], 1) == "48.1 [40.0, 50.5]"


def test_experiment_writes_its_folder_and_an_inference_policy(tmp_path):
    args = ppo_experiment.Args(
        seeds=2, out=str(tmp_path / "run"), ppo=CFG, eval_envs=4, progress=False
    )
    results = ppo_experiment.main(args)
    run = tmp_path / "run"
    for name in (
        "config.json",
        "metrics.jsonl",
        "learning_curve.png",
        "summary.md",
        "results.json",
    ):
        assert (run / name).exists(), name
    assert len(results["greedy_return_per_seed"]) == 2
    policy, params, meta = load_policy(run / "policy")  # no trainer, no env needed
    assert meta["env"] == "gymnax:CartPole-v1"
    obs = np.zeros((3, 4), np.float32)
    _, action = policy.act(
        params, policy.initial_carry(3), obs, np.ones(3, bool), jax.random.key(0)
    )
    assert action.shape == (3,)
