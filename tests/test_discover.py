"""Skill discovery on plain arrays: a toy where each skill repeats one action and the
observation shows the last action, so a switch is the one unpredictable step."""

import itertools

import numpy as np
import pytest

from envs.core import spaces
from skills.action_model import ActionModelConfig
from skills.discover import discover

K, N, T = 5, 24, 80
MODEL = ActionModelConfig(
    embed=(16,), gru_hidden=16, head=(16,), total_steps=300, batch_size=8, lr=3e-3
)


def _demos(seed: int = 0):
    rng = np.random.default_rng(seed)
    actions, true = np.zeros((N, T), int), np.zeros((N, T), bool)
    for i in range(N):
        t, a = 0, rng.integers(K)
        while t < T:
            length = rng.integers(10, 25)
            actions[i, t : t + length], true[i, t] = a, t > 0
            t, a = t + length, (a + rng.integers(1, K)) % K
    last = np.concatenate([np.zeros((N, 1), int), actions[:, :-1]], 1)
    obs = np.eye(K)[last] + 0.1 * rng.normal(size=(N, T, K))
    return obs.astype(np.float32), actions, true


def test_discover_finds_the_switches_with_and_without_true_boundaries():
    obs, actions, true = _demos()
    chosen = discover(obs, actions, spaces.Discrete(K), true_boundaries=true, model=MODEL)
    assert chosen.gap_rule == "best F1 on 12 trajectories"
    assert chosen.scores["f1"] > 0.85, chosen.scores  # held out; random cuts reach about 0.3
    assert chosen.boundary.shape == chosen.nll.shape == (N, T) and chosen.boundary[:, 0].all()
    for segments in chosen.segments:  # half-open, contiguous, covering every step
        assert segments[0][0] == 0 and segments[-1][1] == T
        assert all(a[1] == b[0] for a, b in itertools.pairwise(segments))
    unsupervised = discover(obs, actions, spaces.Discrete(K), model=MODEL)
    assert unsupervised.gap_rule.startswith("Otsu") and unsupervised.scores is None
    scored = discover(obs, actions, spaces.Discrete(K), true_boundaries=true, gap=unsupervised.gap,
                      model=MODEL)  # fmt: skip
    assert scored.scores["f1"] > 0.85, scored.scores  # the Otsu gap, scored on all trajectories


def test_bad_arrays_are_named():
    obs, actions, true = _demos()
    with pytest.raises(ValueError, match=r"obs must be \[N trajectories, T steps, obs_dim\]"):
        discover(obs[0], actions, spaces.Discrete(K))
    with pytest.raises(ValueError, match=r"actions must have shape \(24, 80\)"):
        discover(obs, actions[:, :-1], spaces.Discrete(K))
    with pytest.raises(ValueError, match=r"true_boundaries must be bool \[24, 80\]"):
        discover(obs, actions, spaces.Discrete(K), true_boundaries=true[:2])
