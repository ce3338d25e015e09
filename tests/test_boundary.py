"""The boundary rule on hand-built loss traces (every branch) and against the published loop."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.hparams import stack_configs
from skills.boundary import BoundaryConfig, detect_boundaries

T = 40  # one trace length for every test, so the jitted rule compiles once
AGE_WEIGHT = 0.25  # the fake model's loss grows with its memory's age (exact in float32)


def fake_step(age, x):
    """A model whose memory is its age (steps seen since the last reset) and whose loss is
    ``x + AGE_WEIGHT * age``, so the losses show exactly when the memory was reset."""
    return age + 1, x + AGE_WEIGHT * age.astype(jnp.float32)


@jax.jit
def _rule(trace, config, event, episode_start):
    return detect_boundaries(fake_step, jnp.int32(0), trace, config, event, episode_start)


def run(trace, gap=1e6, min_len=2, max_len=10_000, events=(), starts=()):
    """Cut steps (boundaries other than t = 0) and the rule's output on ``trace`` [<= T]."""
    trace = np.asarray(trace, np.float32)
    full = np.zeros(T, np.float32)
    full[: len(trace)] = trace
    event = np.zeros(T, bool)
    event[list(events)] = True
    start = np.zeros(T, bool)
    start[list(starts)] = True
    out = _rule(full, BoundaryConfig(gap=gap, min_len=min_len, max_len=max_len), event, start)
    out = jax.device_get(out)
    return [int(t) for t in np.flatnonzero(out.boundary) if t > 0], out


def flat(*spikes: tuple[int, float]) -> np.ndarray:
    """Hand-built losses: ones, with ``(t, value)`` spikes."""
    trace = np.ones(T, np.float32)
    for t, v in spikes:
        trace[t] = v
    return trace


# The fake model's loss ramps with age (0.25 per step), so a plain trace would drift upwards.
# ``level`` removes the ramp of a segmentation the test expects, giving hand-built losses.
def level(trace: np.ndarray, cuts: list[int], starts: tuple[int, ...] = ()) -> np.ndarray:
    """``trace`` minus the age term the fake model adds given the expected cuts and starts."""
    age, out = 0, np.array(trace, np.float32)
    for t in range(T):
        if t in starts:
            age = 0
        out[t] -= AGE_WEIGHT * age
        age = 0 if t in cuts else age + 1
    return out


def check(losses, expected, **kw):
    """The rule on hand-built ``losses`` cuts exactly at ``expected`` and reports the losses."""
    starts = kw.get("starts", ())
    cuts, out = run(level(losses, expected, starts), **kw)
    assert cuts == sorted(set(expected) | set(starts)), (cuts, expected)
    np.testing.assert_allclose(out.nll, losses, atol=1e-5)  # the expected resets happened
    return out


def test_flat_trace_is_one_segment():
    out = check(flat(), [], gap=0.5)
    assert out.boundary[0] and out.boundary.sum() == 1
    assert np.isnan(out.score[:2]).all() and not np.isnan(out.score[2:]).any()
    np.testing.assert_allclose(out.score[2:], 0.0, atol=1e-6)


def test_spike_above_gap_opens_a_segment_at_the_spike():
    # losses since the cut: eight ones then 9 -> mean 17/9, score 9 - 17/9 = 7.11 > 7
    out = check(flat((9, 9.0)), [9], gap=7.0)
    assert out.flagged[9] and not out.flagged[10]  # the cut at 9 cleared the flag
    np.testing.assert_allclose(out.score[9], 9 - 17 / 9, rtol=1e-6)
    assert np.isnan(out.score[10])  # one loss since the cut: not enough to score


def test_spike_not_above_gap_is_ignored():
    check(flat((9, 9.0)), [], gap=9 - 17 / 9 + 1e-3)


def test_mean_includes_the_current_loss():
    # the mean of [1, 1, 1, 5] (ones from t = 1) is 2: score 3; without the current loss, 4
    check(flat((4, 5.0)), [], gap=3.5)
    check(flat((4, 5.0)), [4], gap=2.9)


def test_first_step_is_not_scored():
    # scored from t = 1: losses [1, 4] -> score 1.5; had t = 0 counted, [1, 1, 4] -> score 2
    check(flat((2, 4.0)), [], gap=1.75)
    check(flat((2, 4.0)), [2], gap=1.25)


def test_one_loss_is_not_enough_to_flag():
    # t = 1 is the first scored step; a spike there raises nothing, even with gap 0
    out = check(flat((1, 50.0)), [], gap=0.0, min_len=1)
    assert not out.flagged[1]


def test_flag_waits_for_min_len():
    # spikes at 9 (cut) and 12 (3 steps into the new segment, min_len 5): cut deferred to 14
    out = check(flat((9, 9.0), (12, 9.0)), [9, 14], gap=3.0, min_len=5)
    assert out.flagged[12:15].all() and not out.flagged[15]


def test_max_len_cuts_without_spikes():
    check(flat(), [7, 14, 21, 28, 35], max_len=7)


def test_spike_step_keeps_the_old_memory_and_the_next_step_starts_fresh():
    # raw ages, no levelling: the loss is 0.25 * age; cuts every 5 steps (max_len)
    cuts, out = run(np.zeros(T), max_len=5)
    assert cuts == list(range(5, T, 5))
    age = np.array([t if t <= 5 else (t - 1) % 5 for t in range(T)])  # 0..5, then 0..4 per cut
    np.testing.assert_allclose(out.nll, AGE_WEIGHT * age, atol=1e-6)


def test_events_cut_at_the_event_or_once_min_len_allows():
    check(flat(), [20], events=[20])
    # an event 1 step after a cut waits for min_len 3; two pending events give two cuts
    check(flat(), [10, 13], events=[10, 11], min_len=3)
    check(flat(), [10, 13, 16], events=[10, 11, 12], min_len=3)
    # an event at t = 0 is scored and cut at min_len
    check(flat(), [2], events=[0])


def test_event_and_spike_are_unioned():
    check(flat((9, 9.0)), [9, 25], events=[25], gap=7.0)


def test_episode_start_begins_a_fresh_trajectory():
    # an episode start cuts regardless of min_len, resets the memory before its step, clears
    # the losses (its own step is not scored) and the pending flag
    out = check(flat((9, 9.0), (16, 9.0)), [9, 16], starts=(11, 30), gap=3.0, min_len=5)
    assert np.isnan(out.score[11]) and np.isnan(out.score[12]) and not np.isnan(out.score[13])
    # the spike at 8 is flagged (3 steps into an episode, min_len 5); the episode start at 10
    # clears the flag, so nothing is cut at 15
    out = check(flat((8, 9.0)), [], starts=(5, 10), gap=3.0, min_len=5)
    assert out.flagged[8] and out.flagged[9] and not out.flagged[10]


def test_gap_sweep_in_one_vmapped_program_matches_single_runs():
    rng = np.random.default_rng(0)
    trace = rng.exponential(1.0, T).astype(np.float32)
    configs = [BoundaryConfig(gap=g, min_len=2, max_len=100) for g in (0.5, 1.0, 2.0, 4.0)]
    none = np.zeros(T, bool)
    swept = jax.vmap(lambda c: _rule(trace, c, none, none))(stack_configs(configs))
    for i, c in enumerate(configs):
        single = _rule(trace, c, none, none)
        np.testing.assert_array_equal(swept.boundary[i], single.boundary)
    assert len({int(b.sum()) for b in swept.boundary}) > 1  # the gap mattered


def published_loop(trace, gap, min_len, max_len, events):
    """The loop of ``compute_boundary`` (CraftJarvis/SkillDiscovery) on one episode, with the
    fake model's losses; returns the cut steps."""
    events = [*sorted(events), math.inf]
    cuts, losses, age, prev, flag = [], [], 0, 0, False
    for t, x in enumerate(trace):
        loss = float(x) + AGE_WEIGHT * age
        age += 1
        if t < events[0] and t - prev <= 0:
            continue
        losses.append(loss)
        if len(losses) > 1 and losses[-1] - sum(losses) / len(losses) > gap:
            flag = True
        if t - prev >= min_len and (flag or t >= events[0] or t - prev >= max_len):
            if t >= events[0]:
                events.pop(0)
            cuts.append(t)
            losses, age, prev, flag = [], 0, t, False
    return cuts


@settings(max_examples=60, deadline=None)
@given(
    trace=st.lists(st.integers(0, 32), min_size=T, max_size=T),
    gap=st.integers(0, 24),
    min_len=st.integers(1, 6),
    extra_len=st.integers(0, 20),
    events=st.sets(st.integers(0, T - 1), max_size=5),
    starts=st.sets(st.integers(1, T - 1), max_size=3),
)
def test_matches_the_published_loop(trace, gap, min_len, extra_len, events, starts):
    trace = np.asarray(trace, np.float32) / 4  # quarter steps: exact sums in float32
    gap, max_len = gap / 4, min_len + extra_len
    cuts, _ = run(trace, gap, min_len, max_len, sorted(events), sorted(starts))
    expected, edges = [], [0, *sorted(starts), T]
    for a, b in itertools.pairwise(edges):  # each episode is its own trajectory
        episode_events = [e - a for e in events if a <= e < b]
        local = published_loop(trace[a:b], gap, min_len, max_len, episode_events)
        expected += ([a] if a > 0 else []) + [a + c for c in local]
    assert cuts == expected


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (BoundaryConfig(min_len=0), "min_len=0 must be >= 1"),
        (BoundaryConfig(min_len=5, max_len=3), "max_len=3 must be >= min_len=5"),
        (BoundaryConfig(gap=float("nan")), "gap must be finite"),
    ],
)
def test_bad_config_is_named(config, match):
    with pytest.raises(ValueError, match=match):
        detect_boundaries(fake_step, jnp.int32(0), jnp.zeros(T), config)


def test_bad_inputs_are_named():
    config = BoundaryConfig()
    with pytest.raises(ValueError, match="same leading time axis"):
        detect_boundaries(fake_step, jnp.int32(0), (jnp.zeros(T), jnp.zeros(T + 1)), config)
    with pytest.raises(ValueError, match=r"event must be a bool \[T=40\] mask"):
        detect_boundaries(fake_step, jnp.int32(0), jnp.zeros(T), config, event=jnp.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        detect_boundaries(fake_step, jnp.int32(0), jnp.zeros(0), config)
