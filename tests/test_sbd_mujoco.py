"""Switching MuJoCo demonstrations for skill-boundary detection: schedules, rollouts, the study."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from agents.core import Policy, no_carry
from agents.sac import SquashedGaussianActor, sac_policy
from experiments.sbd_mujoco import Args
from skills.action_model import ActionModelConfig
from skills.switching import (
    STAGES,
    SwitchingConfig,
    detect_switches,
    switch_schedule,
    switching_rollout,
)


def _runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, lengths) of the runs of equal ids in a 1-D array."""
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return ids[starts], np.diff(np.r_[starts, ids.size])


def test_switch_schedule_draws_segments_in_range_and_always_switches():
    keys = jax.random.split(jax.random.key(0), 32)
    for num, lo, hi in ((3, 20, 40), (2, 5, 5)):
        draw = jax.jit(
            jax.vmap(lambda k, num=num, lo=lo, hi=hi: switch_schedule(k, 400, num, lo, hi))
        )
        ids = np.asarray(draw(keys))
        assert ids.dtype == np.int32 and ids.shape == (32, 400)
        assert ids.min() == 0 and ids.max() == num - 1
        for row in ids:
            values, lengths = _runs(row)
            # runs are whole segments (a switch always changes behaviour); the last may be cut
            assert np.all((lengths[:-1] >= lo) & (lengths[:-1] <= hi)), lengths
            assert lengths[-1] <= hi
            if num == 2:
                np.testing.assert_array_equal(values[1:], 1 - values[:-1])
    first = np.asarray(jax.jit(jax.vmap(lambda k: switch_schedule(k, 50, 3, 60, 200)))(keys))[:, 0]
    assert len(set(first.tolist())) == 3  # the first behaviour is drawn, not fixed


def test_rollout_acts_with_the_scheduled_policy_and_marks_true_switches():
    env, params = envs.make("HalfCheetah", backend="native")
    space = env.action_space(params)
    policy = sac_policy(space.low, space.high, (16, 16))
    obs_dim = env.observation_space(params).shape[0]
    actors = []
    for i in range(3):  # random actors, scaled so their actions differ clearly
        w = SquashedGaussianActor(6, (16, 16)).init(jax.random.key(i), jnp.zeros(obs_dim))
        actors.append((policy, jax.tree.map(lambda x: 10.0 * x, w)))
    steps, num = 90, 2
    schedule = jax.vmap(lambda k: switch_schedule(k, steps, 3, 10, 30))(
        jax.random.split(jax.random.key(1), num)
    )
    info = ("x_velocity", "height")
    run = jax.jit(jax.vmap(lambda k, b: switching_rollout(k, env, params, actors, b, True, info)))
    demos = run(jax.random.split(jax.random.key(2), num), schedule)
    data = demos.transitions
    assert data.obs.shape == (num, steps, obs_dim) and data.action.shape == (num, steps, 6)
    np.testing.assert_array_equal(demos.behaviour, schedule)
    t = np.arange(steps)
    switches = (t == 0) | np.r_[True, np.diff(np.asarray(schedule[0])) != 0]
    np.testing.assert_array_equal(demos.boundary[0], switches)
    assert 2 <= int(demos.boundary[0].sum()) <= 9
    # every step's action is the scheduled actor's, and no other actor's
    flat = data.obs.reshape(-1, obs_dim)
    acts = jnp.stack(
        [p.act(w, (), flat, jax.random.key(0), True)[1].reshape(num, steps, 6) for p, w in actors]
    )  # [3, N, T, 6]
    chosen = jnp.take_along_axis(acts, schedule[None, :, :, None], axis=0)[0]
    np.testing.assert_allclose(data.action, chosen, atol=1e-4)
    matches = (jnp.abs(acts - data.action[None]).max(-1) < 1e-3).sum(0)  # [N, T]
    assert float((matches == 1).mean()) > 0.95  # (saturated actions can coincide)
    # one continuing episode: next_obs is the next obs; physics info recorded every step
    np.testing.assert_allclose(data.next_obs[:, :-1], data.obs[:, 1:], atol=1e-6)
    assert not bool(data.terminated.any() | data.truncated.any())
    assert np.isfinite(np.asarray(demos.info["x_velocity"])).all()
    assert demos.info["height"].shape == (num, steps)


def test_args_name_bad_settings():
    with pytest.raises(ValueError, match="min_segment"):
        Args(min_segment=0).validate()
    with pytest.raises(ValueError, match="train_window"):
        Args(demo_steps=1000, train_window=300).validate()
    with pytest.raises(ValueError, match="batch_size"):
        Args(num_demos=1, demo_steps=200, train_window=200).validate()
    with pytest.raises(ValueError, match="seeds"):
        Args(seeds=0).validate()
    env, params = envs.make("HalfCheetah", backend="native")
    actors = [(scripted(np.zeros(6, np.float32)), None)] * 2
    with pytest.raises(ValueError, match=r"lacks the stage\(s\) \['baselines'\]"):
        keys = {s: jax.random.split(jax.random.key(0), 2) for s in STAGES[:2]}
        detect_switches(SwitchingConfig(), env, params, actors, keys)
    with pytest.raises(ValueError, match="at least two actors"):
        detect_switches(SwitchingConfig(), env, params, actors[:1], {})


def scripted(target: np.ndarray) -> Policy:
    """A behaviour that holds one action vector [6], with Gaussian noise: easy to tell apart."""

    def act(params, carry, obs, key, deterministic=False):
        noise = 0.0 if deterministic else 0.1 * jax.random.normal(key, (obs.shape[0], 6))
        return carry, jnp.clip(target + noise, -1.0, 1.0)

    return Policy(act, no_carry, {})


@pytest.mark.slow
def test_study_detects_switches_between_distinct_behaviours():
    """End to end on a small scale: SBD finds the switches of three clearly different
    behaviours, far above fixed-length segmentation; revealing the behaviour kills the spike."""
    targets = (0.6 * np.ones(6), -0.6 * np.ones(6), 0.6 * np.r_[1, -1, 1, -1, 1, -1])
    actors = [(scripted(t.astype(np.float32)), None) for t in targets]
    config = SwitchingConfig(
        num_demos=16,
        demo_steps=200,
        min_segment=20,
        max_segment=40,
        train_window=100,
        model=ActionModelConfig(
            embed=(32,), gru_hidden=32, head=(32,), total_steps=150, batch_size=16, lr=3e-3
        ),
        gaps=(2.0, 4.0, 8.0, 16.0),
        fixed_lengths=(10, 20, 30, 40),
        random_rates=(0.02, 0.05),
    )
    env, params = envs.make("HalfCheetah", backend="native")
    keys = {stage: jax.random.split(jax.random.key(i), 2) for i, stage in enumerate(STAGES)}
    run = detect_switches(config, env, params, actors, keys)  # 2 seeds
    strict = run.scores["by_tolerance"]["2"]
    f1 = strict["best_gap_f1"]["hidden"]
    assert f1.shape == (2,) and f1.mean() > 0.8
    assert f1.mean() > strict["fixed_best_f1"].mean() + 0.3
    spike = {view: a["spike"].mean() for view, a in run.scores["around"].items()}
    assert spike["hidden"] > 5.0 and spike["revealed"] < 0.5 * spike["hidden"]
    assert run.chosen["hidden"].boundary.shape == run.demos.boundary.shape == (2, 16, 200)
