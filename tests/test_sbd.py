"""SBD end to end: the action model, segments, detection on data with known switches, controls."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from agents.core import export_policy, load_policy
from agents.replay import Transition
from envs.core import spaces
from envs.gridworlds.multi_skill import rollout_expert
from skills.action_model import (
    ActionModel,
    ActionModelConfig,
    episode_starts,
    make_action_model,
)
from skills.boundary import BoundaryConfig, detect_boundaries
from skills.evaluate import STAGES, MultiSkillSBDConfig, evaluate_sbd
from skills.policies import (
    GoalData,
    GoalPolicyConfig,
    GoalPolicyNet,
    hierarchical_policy,
    make_goal_policy,
    set_plan,
)
from skills.segments import (
    boundary_scores,
    fixed_length_boundaries,
    hindsight_goals,
    match_boundaries,
    random_boundaries,
    segment_end,
    to_segments,
)

pytestmark = pytest.mark.xdist_group("sbd")  # one worker builds its module fixtures

TOLERANCE = 2


@jax.jit
def _pooled(predicted, true, start):
    counts = jax.vmap(lambda p, t, s: match_boundaries(p, t, TOLERANCE, s))(predicted, true, start)
    return boundary_scores(jax.tree.map(jnp.sum, counts))


def pooled_f1(predicted, true, start) -> dict[str, float]:
    """Precision, recall and F1 pooled over trajectories [N, T]."""
    return {k: float(v) for k, v in _pooled(predicted, true, start).items()}


def segment_all(model, params, obs, action, start, config):
    step = model.step_fn(params)
    return jax.jit(
        jax.vmap(
            lambda o, a, s: detect_boundaries(step, model.initial_memory(), (o, a), config, None, s)
        )
    )(obs, action, start)


def best_baselines(true, start, key) -> tuple[float, float]:
    """Best F1 of fixed-length (any length) and random (any rate) segmentation: oracle-tuned."""
    fixed_f1 = jax.jit(
        lambda n: _pooled(
            jnp.broadcast_to(fixed_length_boundaries(n, start), true.shape), true, start
        )
    )
    fixed = max(float(fixed_f1(n)["f1"]) for n in range(2, 25))
    rand = max(
        pooled_f1(random_boundaries(key, r, start), true, start)["f1"]
        for r in (0.05, 0.1, 0.15, 0.2, 0.3)
    )
    return fixed, rand


# ---------------------------------------------------------------- segments and metrics


def test_match_boundaries_is_one_to_one_within_tolerance():
    true = np.zeros(30, bool)
    true[[0, 10, 12, 25]] = True
    pred = np.zeros(30, bool)
    pred[[0, 11, 20, 27, 28]] = True  # 11 matches 10 (first free); 27 matches 25; 28 no longer
    counts = match_boundaries(pred, true, 2)
    assert [int(x) for x in counts] == [2, 4, 3]  # t = 0 is not counted
    scores = boundary_scores(counts)
    np.testing.assert_allclose([scores["precision"], scores["recall"]], [0.5, 2 / 3], rtol=1e-6)
    assert int(match_boundaries(pred, true, 0).true_positive) == 0
    # ignored steps (episode starts) count for neither side
    ignore = np.zeros(30, bool)
    ignore[[10, 11]] = True
    assert [int(x) for x in match_boundaries(pred, true, 2, ignore)] == [1, 3, 2]  # 27 -> 25


def test_fixed_length_and_segment_ends_restart_at_episodes():
    start = np.zeros(12, bool)
    start[[0, 7]] = True
    fixed = np.asarray(fixed_length_boundaries(3, start))
    np.testing.assert_array_equal(np.flatnonzero(fixed), [0, 3, 6, 7, 10])
    assert to_segments(fixed) == [(0, 3), (3, 6), (6, 7), (7, 10), (10, 12)]
    np.testing.assert_array_equal(segment_end(fixed), [2, 2, 2, 5, 5, 5, 6, 9, 9, 9, 11, 11])
    next_obs = jnp.arange(12.0)[:, None] * jnp.ones((1, 2))
    np.testing.assert_array_equal(hindsight_goals(next_obs, fixed)[:, 0], segment_end(fixed))
    assert np.asarray(random_boundaries(jax.random.key(0), 0.0, start)).sum() == 2


# ---------------------------------------------------------------- the action model


def test_segmentation_losses_equal_fresh_runs_on_each_segment():
    """The scan's memory resets are real: each segment's losses (after its first step) are the
    model's losses from a fresh memory started right after the segment's first step."""
    config = ActionModelConfig(embed=(16,), gru_hidden=16, head=(16,))
    model = ActionModel.create(config, spaces.Discrete(5))
    params = model.init(jax.random.key(0), 6)
    obs = jax.random.normal(jax.random.key(1), (50, 6))
    action = jax.random.randint(jax.random.key(2), (50,), 0, 5)
    params = jax.tree.map(lambda x: 5 * x, params)  # confident, varied predictions
    event = np.zeros(50, bool)
    event[[5, 13, 14, 30]] = True  # cuts there (14 waits for min_len: 15)
    seg = jax.jit(detect_boundaries, static_argnums=0)(
        model.step_fn(params),
        model.initial_memory(),
        (obs, action),
        BoundaryConfig(gap=1e6),
        event,
    )
    cuts = np.flatnonzero(seg.boundary)
    np.testing.assert_array_equal(cuts, [0, 5, 13, 15, 30])
    # fresh memory from the step after each cut: one pass with resets there
    resets = np.zeros((50, 1), bool)
    resets[0] = True
    resets[cuts[1:] + 1] = True
    nll = jax.jit(model.nll)  # one compile for both calls
    fresh = nll(params, obs[:, None], action[:, None], jnp.asarray(resets))[:, 0]
    np.testing.assert_allclose(seg.nll, fresh, rtol=1e-4, atol=1e-4)
    # and without the resets the losses differ: the memory mattered
    plain = nll(params, obs[:, None], action[:, None], jnp.zeros((50, 1), bool))
    assert not np.allclose(seg.nll[6:], plain[6:, 0], atol=1e-3)


def switching_gaussian_demos(key, num: int, length: int):
    """Continuous demos: action = one of 3 skill means + noise; the observation holds the previous
    action, so the current skill can be inferred; skills switch every 8-16 steps."""
    means = jnp.array([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]])

    def one(key):
        k_len, k_skill, k_noise, k_obs = jax.random.split(key, 4)
        durations = jax.random.randint(k_len, (length,), 8, 17)
        switch_at = jnp.cumsum(durations)
        t = jnp.arange(length)
        segment = jnp.searchsorted(switch_at, t, side="right")
        shifts = jax.random.randint(k_skill, (length + 1,), 1, 3)  # always a different skill
        skill = jnp.cumsum(shifts)[segment] % 3
        action = means[skill] + 0.1 * jax.random.normal(k_noise, (length, 2))
        previous = jnp.concatenate([jnp.zeros((1, 2)), action[:-1]])
        obs = jnp.concatenate([previous, jax.random.normal(k_obs, (length, 2))], -1)
        boundary = jnp.concatenate([jnp.array([True]), skill[1:] != skill[:-1]])
        return obs, action, boundary

    return jax.vmap(one)(jax.random.split(key, num))


@pytest.mark.slow  # the Gaussian path runs in test_studies::test_sbd_mujoco; the claim in the
# slow end-to-end test_sbd_mujoco::test_study_detects_switches_between_distinct_behaviours
def test_continuous_actions_spike_at_switches():
    obs, action, true = switching_gaussian_demos(jax.random.key(0), 128, 64)
    false = jnp.zeros(true.shape, bool)
    demos = Transition(obs, action, false.astype(jnp.float32), obs, false, false)
    config = ActionModelConfig(embed=(32,), gru_hidden=32, head=(32,), total_steps=300, lr=1e-2)
    space = spaces.Box(-2.0, 2.0, (2,))
    agent = make_action_model(config, space, demos)
    state, log = jax.jit(agent.train)(jax.random.key(1))
    params = agent.policy_params(state)
    assert log["loss"][-20:].mean() < log["loss"][:20].mean() - 1.0
    model = ActionModel.create(config, space)
    start = episode_starts(false, false)
    seg = segment_all(model, params, obs, action, start, BoundaryConfig(gap=3.0))
    scores = pooled_f1(seg.boundary, true, start)
    fixed, rand = best_baselines(true, start, jax.random.key(2))
    assert scores["f1"] > 0.75 and scores["f1"] > fixed + 0.2 and scores["f1"] > rand + 0.3, (
        scores,
        fixed,
        rand,
    )


@pytest.mark.parametrize(
    ("demos", "match"),
    [
        (
            Transition(*(jnp.zeros((4, 8)),) * 6),
            r"obs must be \[N trajectories, T steps, obs_dim\]",
        ),
        (
            Transition(jnp.zeros((4, 8, 3)), jnp.zeros((4, 8)), *(jnp.zeros((4, 8)),) * 4),
            "discrete actions must be integers",
        ),
        (
            Transition(
                jnp.full((4, 8, 3), jnp.nan), jnp.zeros((4, 8), int), *(jnp.zeros((4, 8)),) * 4
            ),
            "NaN or inf",
        ),
        (
            Transition(jnp.zeros((0, 8, 3)), jnp.zeros((0, 8), int), *(jnp.zeros((0, 8)),) * 4),
            "hold no steps",
        ),
        (
            Transition(jnp.zeros((4, 0, 3)), jnp.zeros((4, 0), int), *(jnp.zeros((4, 0)),) * 4),
            "hold no steps",
        ),
        (
            Transition(jnp.zeros((4, 8, 3)), jnp.full((4, 8), 5), *(jnp.zeros((4, 8)),) * 4),
            r"range over \[5, 5\], outside the action space's \[0, 5\)",
        ),
    ],
)
def test_bad_demonstrations_are_named(demos, match):
    with pytest.raises(ValueError, match=match):
        make_action_model(ActionModelConfig(total_steps=1), spaces.Discrete(5), demos)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match=r"ActionModelConfig\.lr=-1\.0 is invalid; it must be"):
        ActionModel.create(ActionModelConfig(lr=-1.0), spaces.Discrete(5))
    data = GoalData(*(jnp.zeros((2, 4, 3)),) * 3, jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"GoalPolicyConfig\.batch_size=0 is invalid"):
        make_goal_policy(GoalPolicyConfig(batch_size=0), spaces.Discrete(5), data)
    with pytest.raises(ValueError, match=r"GoalPolicyConfig\.total_steps=0 is invalid"):
        make_goal_policy(GoalPolicyConfig(total_steps=0), spaces.Discrete(5), data)
    env, params = envs.make("MultiSkill")
    with pytest.raises(ValueError, match="eval_demos=9 <= num_demos=8"):
        evaluate_sbd(MultiSkillSBDConfig(num_demos=8, eval_demos=9), env, params, {})
    with pytest.raises(ValueError, match=r"lacks the stage\(s\) \['baselines', 'evaluate'"):
        keys = {stage: jax.random.split(jax.random.key(0), 2) for stage in STAGES[:2]}
        evaluate_sbd(MultiSkillSBDConfig(), env, params, keys)
    keys = {stage: jax.random.split(jax.random.key(0), 2) for stage in STAGES}
    keys["evaluate"] = jax.random.split(jax.random.key(1), 3)
    with pytest.raises(ValueError, match=r"one key per seed, the same number; got .*'evaluate': 3"):
        evaluate_sbd(MultiSkillSBDConfig(), env, params, keys)


# ---------------------------------------------------------------- the gridworld


ENV_KWARGS = {"height": 33, "width": 33, "num_objects": 3, "min_skill_len": 12, "max_skill_len": 24}
GRID_MODEL = ActionModelConfig(
    embed=(48,), gru_hidden=48, head=(48,), total_steps=500, batch_size=32, lr=3e-3
)
GAP = 0.75
UNION_GAP = 1.5  # with events covering the predictable switches, a higher gap pays


@pytest.fixture(scope="session")  # one worker runs the group: built once
def gridworld():
    """Demonstrations with the skill hidden and revealed (the same rollouts), and a model for
    each, trained on the 768 trajectories (of one 64-step episode) it will segment."""
    env, hidden = envs.make("MultiSkill", **ENV_KWARGS)
    keys = jax.random.split(jax.random.key(0), 768)
    rollouts = jax.jit(jax.vmap(lambda k, p: rollout_expert(k, env, p, 64), in_axes=(0, None)))

    @jax.jit
    def train(demos):
        agent = make_action_model(GRID_MODEL, env.action_space(hidden), demos)
        state, log = agent.train(jax.random.key(1))
        return agent.policy_params(state), log

    out = {}
    for name, params in (("hidden", hidden), ("revealed", hidden.replace(reveal_skill=True))):
        demos = rollouts(keys, params)
        model_params, log = train(Transition(*demos[:6]))
        out[name] = (demos, model_params, log)
    return env, hidden, out


def test_gridworld_boundaries_beat_fixed_length_and_random(gridworld):
    env, params, arms = gridworld
    demos, model_params, log = arms["hidden"]
    assert log["loss"][-50:].mean() < 0.7 * np.log(5)  # it learnt something about the skills
    model = ActionModel.create(GRID_MODEL, env.action_space(params))
    start = episode_starts(demos.terminated, demos.truncated)
    seg = segment_all(model, model_params, demos.obs, demos.action, start, BoundaryConfig(gap=GAP))
    scores = pooled_f1(seg.boundary, demos.boundary, start)
    fixed, rand = best_baselines(demos.boundary, start, jax.random.key(2))
    assert scores["f1"] > fixed + 0.05 and scores["f1"] > rand + 0.15, (scores, fixed, rand)
    # unioned with environment events (the step after an object was reached), as the reference
    # does with its game events: the predictable switches are covered too
    reached = jnp.concatenate([jnp.zeros((768, 1)), demos.reward[:, :-1]], axis=1) > 0
    events = reached & ~start
    union = jax.jit(
        jax.vmap(
            lambda o, a, e, s: detect_boundaries(
                model.step_fn(model_params),
                model.initial_memory(),
                (o, a),
                BoundaryConfig(gap=UNION_GAP),
                e,
                s,
            )
        )
    )(demos.obs, demos.action, events, start)
    only_events = pooled_f1(events | start, demos.boundary, start)
    both = pooled_f1(union.boundary, demos.boundary, start)
    assert both["f1"] > scores["f1"] + 0.08 and both["f1"] > only_events["f1"] + 0.02, (
        both,
        scores,
        only_events,
    )


def test_negative_control_revealed_skill_collapses_spikes(gridworld):
    env, params, arms = gridworld
    model = ActionModel.create(GRID_MODEL, env.action_space(params))
    f1, spike = {}, {}
    for name, (demos, model_params, _) in arms.items():
        start = episode_starts(demos.terminated, demos.truncated)
        seg = segment_all(
            model, model_params, demos.obs, demos.action, start, BoundaryConfig(gap=GAP)
        )
        f1[name] = pooled_f1(seg.boundary, demos.boundary, start)["f1"]
        tm = lambda x: jnp.swapaxes(x, 0, 1)
        nll = np.asarray(model.nll(model_params, tm(demos.obs), tm(demos.action), tm(start))).T
        switch = np.asarray(demos.boundary & ~start)
        spike[name] = nll[switch].mean() - nll[~np.asarray(demos.boundary)].mean()
    assert f1["revealed"] < 0.5 * f1["hidden"], f1
    assert spike["revealed"] < 0.25 * spike["hidden"], spike


@pytest.mark.slow  # the code path runs in test_studies::test_sbd and the export test below
def test_goal_policy_on_true_segments_reaches_goals_and_the_hierarchy_sequences_them(gridworld):
    env, params, arms = gridworld
    demos, _, _ = arms["hidden"]
    config = GoalPolicyConfig(hidden=(64, 64), total_steps=800, batch_size=128, lr=3e-3)
    data = GoalData(demos.obs, demos.action, demos.next_obs, segment_end(demos.boundary))
    agent = make_goal_policy(config, env.action_space(params), data)
    state, log = jax.jit(agent.train)(jax.random.key(3))
    policy_params = agent.policy_params(state)
    planner = hierarchical_policy(agent.policy.spec, params.num_objects, demos.obs.shape[-1])
    params = params.replace(max_steps_in_episode=200)  # no reset during the tour

    def tour(key):  # visit all objects in a random order within 180 steps
        key_reset, key_order = jax.random.split(key)
        obs, state = env.reset(key_reset, params)
        order = jax.random.permutation(key_order, params.num_objects)
        plan = jax.vmap(
            lambda o: env.get_obs(state.replace(agent_pos=state.object_pos[o]), params)
        )(order)

        def step(carry, k):
            st, obs, memory, progress = carry
            memory, action = planner.act(policy_params, memory, obs[None], k, deterministic=True)
            obs, st, *_ = env.step(k, st, action[0], params)
            target = st.object_pos[order[jnp.minimum(progress, params.num_objects - 1)]]
            arrived = (progress < params.num_objects) & jnp.all(st.agent_pos == target)
            return (st, obs, memory, progress + arrived), None

        memory = set_plan(planner.initial_carry(1), plan[None])
        init = (state, obs, memory, jnp.int32(0))
        (*_, progress), _ = jax.lax.scan(step, init, jax.random.split(key, 180))
        return progress

    progress = jax.jit(jax.vmap(tour))(jax.random.split(jax.random.key(4), 64))
    assert (progress == params.num_objects).mean() > 0.4, progress
    chex.assert_shape(log["loss"], (800,))


def test_to_segments_agrees_with_segment_end():
    start = np.zeros(20, bool)
    start[[0, 5, 6, 13]] = True
    ends = np.asarray(segment_end(start))
    for a, b in to_segments(start):
        np.testing.assert_array_equal(ends[a:b], b - 1)


# ---------------------------------------------------------------- policies: export and load


def test_every_skills_policy_exports_and_loads_to_act_identically(tmp_path):
    """The action model (GRU carry), a goal-conditioned policy (obs = [observation, goal]) and a
    hierarchical policy (carry: its plan) act the same after agents.core.export/load_policy."""
    n, t, d, batch = 4, 6, 3, 5
    obs = jax.random.normal(jax.random.key(0), (n, t, d))
    action = jax.random.randint(jax.random.key(1), (n, t), 0, 5)
    false = jnp.zeros((n, t), bool)
    space = spaces.Discrete(5)
    config = ActionModelConfig(embed=(8,), gru_hidden=8, head=(8,), total_steps=2, batch_size=2)
    model = make_action_model(
        config,
        space,
        Transition(obs, action, false.astype(jnp.float32), obs, false, false),
    )
    goals = make_goal_policy(
        GoalPolicyConfig(hidden=(8,), total_steps=2, batch_size=4),
        space,
        GoalData(obs, action, obs, segment_end(jnp.ones((n, t), bool))),
    )
    planner = hierarchical_policy(goals.policy.spec, plan_length=2, obs_dim=d)
    plan = jax.random.normal(jax.random.key(2), (batch, 2, d))
    x = jax.random.normal(jax.random.key(3), (batch, d)).at[0].set(plan[0, 0])
    model_params, goal_params = jax.jit(
        lambda k: (
            ActionModel.create(config, space).init(k, d),  # as the agents' own init
            GoalPolicyNet(5, True, (8,)).init(k, jnp.zeros((1, 2 * d))),
        )
    )(jax.random.key(4))
    cases = {
        "action_model": (model.policy, model_params, lambda c: c, x),
        "goal": (goals.policy, goal_params, lambda c: c, jnp.concatenate([x, x], -1)),
        "hierarchical": (planner, goal_params, lambda c: set_plan(c, plan), x),
    }
    for name, (policy, params, prepare, inputs) in cases.items():
        export_policy(tmp_path / name, policy, params, {"kind": name})
        loaded, loaded_params, metadata = load_policy(tmp_path / name)
        assert metadata["kind"] == name
        acts = [
            p.act(w, prepare(p.initial_carry(batch)), inputs, jax.random.key(7))
            for p, w in ((policy, params), (loaded, loaded_params))
        ]
        chex.assert_trees_all_equal(*acts)
    carry, _ = planner.act(goal_params, set_plan(planner.initial_carry(batch), plan), x, None, True)
    np.testing.assert_array_equal(carry.index, [1, 0, 0, 0, 0])  # env 0 stands on its goal 0
    with pytest.raises(ValueError, match="set_plan"):
        set_plan(planner.initial_carry(batch), plan[:, :1])
