"""Cultural accumulation: social channel, oracles, visibility, generations, learning."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.core import Policy, no_carry
from agents.ppo import PPOConfig
from envs.gridworlds.goal_sequence import NUM_ACTIONS, GoalSequence
from envs.gridworlds.memory_sequence import MemorySequence
from envs.gridworlds.social import (
    SocialGoalSequence,
    SocialMemorySequence,
    visibility_probability,
)
from skills.cultural import (
    VISIBILITY,
    GoalTask,
    InContextConfig,
    InWeightsConfig,
    make_in_context_generation,
    make_in_weights_lineage,
    make_single_lifetime,
    record_play,
    select_demonstrations,
)

ENV = SocialMemorySequence()
IN_CONTEXT = SocialMemorySequence.in_context_params(num_symbols=3, seq_len=6, num_trials=4)


def scripted(act) -> Policy:
    """A memoryless ``Policy`` from ``act(obs [B, D], key) -> action [B]``."""
    return Policy(
        lambda params, carry, obs, key, deterministic=False: (carry, act(obs, key)), no_carry, {}
    )


def copier(num_symbols: int) -> Policy:
    """Plays the shown symbol when one is shown, else a random one."""

    def act(obs, key):
        n = num_symbols
        shown = jnp.argmax(obs[:, -(n + 2) : -1], axis=-1)  # [B]; n means nothing shown
        guess = jax.random.randint(key, shown.shape, 0, n)
        return jnp.where(shown < n, shown, guess)

    return scripted(act)


def _rollout(params, key, steps):
    """Expert play; (states before each step, obs before each step)."""

    def body(carry, key):
        obs, state = carry
        action = ENV.expert_action(state, params)
        obs2, state2, *_ = ENV.step(key, state, action, params)
        return (obs2, state2), (state, obs)

    k0, k1 = jax.random.split(key)
    return jax.lax.scan(body, ENV.reset(k0, params), jax.random.split(k1, steps))[1]


def test_visibility_schedule_first_trial_seen_last_unseen() -> None:
    p = [float(visibility_probability(jnp.int32(t), IN_CONTEXT)) for t in range(4)]
    np.testing.assert_allclose(p, [1.0, 2 / 3, 1 / 3, 0.0], atol=1e-6)
    fixed = SocialMemorySequence.in_weights_params(0, 3, 6, visibility=0.3)
    assert float(visibility_probability(jnp.int32(0), fixed)) == pytest.approx(0.3)
    steps = 4 * 6  # the expert finishes each trial in seq_len steps
    states, _ = jax.jit(jax.vmap(lambda k: _rollout(IN_CONTEXT, k, steps)))(
        jax.random.split(jax.random.key(0), 256)
    )
    trial, visible = np.asarray(states.env_state.trial), np.asarray(states.visible)
    assert visible[trial == 0].all() and not visible[trial == 3].any()
    for t, p_t in enumerate(p[1:3], 1):  # per-trial draws, constant within a trial
        per_episode = visible[:, t * 6 : (t + 1) * 6]
        assert (per_episode == per_episode[:, :1]).all()
        assert abs(per_episode[:, 0].mean() - p_t) < 0.1


_RESET = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None)))  # one compile per params layout


@pytest.mark.parametrize("accuracy", [0.0, 0.5, 1.0])
def test_oracle_accuracy(accuracy: float) -> None:
    params = IN_CONTEXT.replace(oracle_accuracy=jnp.float32(accuracy), seq_len=24)
    _, states = _RESET(jax.random.split(jax.random.key(1), 2048), params)
    agree = float((states.demo == states.env_state.sequence).mean())
    expected = accuracy + (1 - accuracy) / params.num_symbols  # noise may hit the right symbol
    assert agree == pytest.approx(expected, abs=0.02)
    # the reference's default: accuracy 1 - 1 / (1 + U * seq_len), mean about 0.87 for 24
    _, states = _RESET(
        jax.random.split(jax.random.key(2), 4096), params.replace(oracle_accuracy=None)
    )
    u = np.random.default_rng(0).uniform(size=200_000)
    acc = 1 - 1 / (1 + u * 24)
    expected = float(np.mean(acc + (1 - acc) / 3))
    assert float((states.demo == states.env_state.sequence).mean()) == pytest.approx(
        expected, abs=0.02
    )


def test_observation_contents() -> None:
    demos = jnp.array([[2, 1, 0, 2, 1, 0]], jnp.int32)
    params = IN_CONTEXT.replace(demos=demos)
    states, obs = jax.jit(lambda k: _rollout(params, k, 24))(jax.random.key(3))
    n, base = params.num_symbols, ENV.task.get_obs
    for t in range(24):
        state = jax.tree.map(lambda x, t=t: x[t], states)
        o = np.asarray(obs[t])
        assert o.shape == (params.obs_dim,) == (ENV.task.default_params.obs_dim + n + 2,)
        np.testing.assert_array_equal(o[: -(n + 2)], base(state.env_state, params))
        shown = int(demos[0, int(state.env_state.position)]) if bool(state.visible) else n
        np.testing.assert_array_equal(o[-(n + 2) : -1], np.eye(n + 1)[shown])
        assert o[-1] == float(state.visible)
    with pytest.raises(ValueError, match="demos must have shape"):
        IN_CONTEXT.replace(demos=jnp.zeros((1, 5), jnp.int32))
    with pytest.raises(ValueError, match="visibility must be in"):
        IN_CONTEXT.replace(visibility=1.5)
    with pytest.raises(ValueError, match="demo actions must be in"):
        IN_CONTEXT.replace(demos=jnp.full((1, 6), 7, jnp.int32))


def test_in_context_generation_sees_the_previous_generation() -> None:
    config = InContextConfig(generations=3, population=4)
    generation = jax.jit(make_in_context_generation(config, copier(3), ENV, IN_CONTEXT))
    sequence = jnp.array([0, 1, 2, 2, 1, 0], jnp.int32)
    demo = jnp.array([0, 1, 2, 0, 0, 0], jnp.int32)  # right for 3 symbols, then wrong
    key = jax.random.key(4)
    for _ in range(config.generations):
        key, k = jax.random.split(key)
        next_demo, record = generation(None, sequence, demo, k)
        actions, returns = np.asarray(record.trial_actions), np.asarray(record.trial_returns)
        # trial 0 is fully visible: every copier replays the demonstration up to its mistake
        wrong = np.flatnonzero(np.asarray(demo) != np.asarray(sequence))
        stop = wrong[0] + 1 if wrong.size else 6
        np.testing.assert_array_equal(actions[:, 0, :stop], np.tile(demo[:stop], (4, 1)))
        assert (actions[:, 0, stop:] == 3).all()  # positions never reached
        best = np.argmax(returns[:, -1])
        np.testing.assert_array_equal(next_demo, actions[best, -1])  # the best member's last
        assert returns[best, -1] == returns[:, -1].max()
        demo = next_demo
    demos, kept = select_demonstrations(jnp.arange(12).reshape(4, 3), jnp.array([1.0, 3, 3, 0]), 2)
    np.testing.assert_array_equal(demos, [[6, 7, 8], [3, 4, 5]])  # later ones win ties
    np.testing.assert_array_equal(kept, [3, 3])


def test_record_play_over_lifetimes() -> None:
    params = IN_CONTEXT.replace(
        demos=jnp.array([[0, 1, 2, 2, 1, 0]]),
        fixed_sequence=True,
        sequence=jnp.array([0, 1, 2, 2, 1, 0]),
        visibility=1.0,
        visibility_decay=False,
    )
    record = jax.jit(lambda k: record_play(copier(3), None, ENV, params, k, 2, lifetimes=3))(
        jax.random.key(5)
    )
    assert record.trial_returns.shape == (2, 12) and record.trial_actions.shape == (2, 12, 6)
    np.testing.assert_array_equal(record.trial_returns, 6.0)  # a perfect demonstrator copied


def test_envs_expose_what_accumulation_needs_and_settings_errors_name_the_fix() -> None:
    plain = MemorySequence()
    assert ENV.demo_spec(IN_CONTEXT) == plain.demo_spec(IN_CONTEXT) == (6, 3)
    _, state = ENV.reset(jax.random.key(0), IN_CONTEXT)
    clocks = [*ENV.trial_clock(state), *plain.trial_clock(state.env_state)]
    assert [int(c) for c in clocks] == [0, 0, 0, 0]
    assert GOAL.demo_spec(GOAL_PARAMS) == (6, NUM_ACTIONS)
    tiny = PPOConfig(num_envs=2, num_steps=4, total_steps=8, num_minibatches=1, recurrent=True)
    in_weights = SocialMemorySequence.in_weights_params(0, 3, 6, demos=jnp.zeros((2, 6), jnp.int32))
    with pytest.raises(ValueError, match="no social channel"):
        make_in_context_generation(InContextConfig(), copier(3), plain, IN_CONTEXT)
    with pytest.raises(ValueError, match="visibility decaying over the trials"):
        make_in_context_generation(InContextConfig(), copier(3), ENV, in_weights)
    with pytest.raises(ValueError, match="demo_from must be"):
        make_in_context_generation(InContextConfig(demo_from="first"), copier(3), ENV, IN_CONTEXT)
    with pytest.raises(ValueError, match="recorded demonstrators"):
        make_in_weights_lineage(InWeightsConfig(tiny, num_demos=2), ENV, IN_CONTEXT)
    with pytest.raises(ValueError, match="recorded demonstrators"):
        make_single_lifetime(InWeightsConfig(tiny, num_demos=2), ENV, IN_CONTEXT)
    with pytest.raises(ValueError, match="needs recurrent PPO"):
        make_in_weights_lineage(InWeightsConfig(tiny.replace(recurrent=False)), ENV, in_weights)
    with pytest.raises(ValueError, match="num_demos=99 exceeds"):
        make_in_weights_lineage(
            InWeightsConfig(tiny, num_demos=99, eval_episodes=2), ENV, in_weights
        )


@pytest.mark.slow  # compile-heavy; run with -m slow
def test_in_weights_learner_copies_a_visible_demonstrator() -> None:
    """A fresh PPO agent learns to use the social channel: with a perfect demonstrator always
    visible it reproduces most of a sequence it has barely explored; alone it is far worse."""
    ppo = PPOConfig(
        num_envs=16,
        num_steps=16,
        total_steps=16 * 16 * 40,
        recurrent=True,
        num_minibatches=2,
        hidden=(32,),
        embed=(32,),
        gru_hidden=32,
        lr=3e-3,
    )
    config = InWeightsConfig(ppo, generations=2, population=2, num_demos=2, eval_episodes=32)
    params = SocialMemorySequence.in_weights_params(
        7, num_symbols=6, seq_len=8, demos=jnp.zeros((2, 8), jnp.int32)
    )
    lineage = make_in_weights_lineage(config, ENV, params, VISIBILITY["one"])
    perfect = jnp.tile(params.sequence, (2, 1))
    state = lineage.init(jax.random.key(6))  # past generation 0 (which trains alone):
    state = state._replace(demos=perfect, generation=jnp.int32(1))
    state, m = jax.jit(lineage.update)(state)
    social, alone = np.asarray(m["return_social"]), np.asarray(m["return_alone"])
    assert social.min() >= 5.0, social  # max 8; a blind guesser expects about -0.8
    assert social.mean() - alone.mean() >= 2.0, alone  # the channel carries the answer
    assert state.demos.shape == (2, 8) and float(m["best_return"]) >= alone.max()
    assert int(state.generation) == 2 and lineage.num_updates == 2


# --------------------------------------------------------------------------- Goal Sequence

GOAL = SocialGoalSequence()
GOAL_PARAMS = SocialGoalSequence.in_context_params(size=4, trial_length=6, view_size=5)


@functools.partial(jax.jit, static_argnums=(2, 3))  # params traced: tests share a compile
def _goal_rollout(params, key, steps, num_envs):
    """Random learner moves; (state before each step, obs before each step), [steps, envs]."""

    def body(carry, key):
        obs, state = carry
        k_act, k_step = jax.random.split(key)
        action = jax.random.randint(k_act, (num_envs,), 0, NUM_ACTIONS)
        keys = jax.random.split(k_step, num_envs)
        obs2, state2, *_ = jax.vmap(GOAL.step, in_axes=(0, 0, 0, None))(keys, state, action, params)
        return (obs2, state2), (state, obs)

    k0, k1 = jax.random.split(key)
    reset = jax.vmap(GOAL.reset, in_axes=(0, None))(jax.random.split(k0, num_envs), params)
    return jax.lax.scan(body, reset, jax.random.split(k1, steps))[1]


def test_goal_sequence_social_observation_and_visibility() -> None:
    """The demonstrator channel marks its cell in the learner's egocentric view (checked
    against the task's own view of a goal put there), only while visible; visibility is
    drawn per trial, 1 in the first and 0 in the last."""
    T, L = GOAL_PARAMS.num_trials, 6
    states, obs = _goal_rollout(GOAL_PARAMS, jax.random.key(0), T * L, 256)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    states, obs = jax.tree.map(flat, states), flat(obs)
    me, partner = states.env_state, states.partner
    base = jax.vmap(GOAL.task.get_obs, in_axes=(0, None))(me, GOAL_PARAMS)
    V2, C = 25, GOAL_PARAMS.view_shape[-1]
    np.testing.assert_array_equal(obs[:, : base.shape[1]], base)
    one_goal = GOAL_PARAMS.replace(num_goals=1)
    marker = jax.vmap(GOAL.task.get_obs, in_axes=(0, None))(
        me.replace(goal_pos=partner.pos[:, None]), one_goal
    )[:, : V2 * 3].reshape(-1, V2, 3)[..., 2]  # the goal channel: the partner's cell
    visible = np.asarray(states.visible)
    expected = np.asarray(marker) * visible[:, None]
    channel = np.asarray(obs[:, base.shape[1] : -1])
    assert (
        channel.shape[1] == V2
        and GOAL_PARAMS.obs_dim == GOAL_PARAMS.view_size**2 * C + 4 + T + 3 + V2 + 1
    )
    np.testing.assert_array_equal(channel, expected)
    assert 0.2 < channel.sum(axis=1)[visible].mean() < 1.0  # in view some of the time
    np.testing.assert_array_equal(obs[:, -1], visible)
    # visibility: per trial, all in trial 0, none in the last, 2/3 and 1/3 between
    trial = np.asarray(me.trial).reshape(T * L, 256)
    vis = visible.reshape(T * L, 256)
    assert vis[trial == 0].all() and not vis[trial == T - 1].any()
    for t, p in ((1, 2 / 3), (2, 1 / 3)):
        block = vis[t * L : (t + 1) * L]
        assert (block == block[:1]).all() and abs(block[0].mean() - p) < 0.1
    with pytest.raises(ValueError, match="demos must have shape"):
        GOAL_PARAMS.replace(demos=jnp.zeros((1, 5), jnp.int32))
    with pytest.raises(ValueError, match="demo actions must be in"):
        GOAL_PARAMS.replace(demos=jnp.full((1, 6), 4, jnp.int32))


def test_goal_sequence_oracle_scramble_rate() -> None:
    """The oracle plays the shortest-path expert's move except a fraction 1 - accuracy of its
    moves, which are uniformly random (so they still match the expert a third of the time)."""
    params = GOAL_PARAMS.replace(oracle_accuracy=0.8)
    states, _ = _goal_rollout(params, jax.random.key(1), 24, 256)  # the same program as above
    states = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), states)
    np.testing.assert_allclose(states.accuracy, 0.8)  # the episode's accuracy, from params
    keys = jax.random.split(jax.random.key(2), states.time.shape[0])
    accuracies = jnp.array([0.0, 0.8, 1.0])

    @jax.jit
    def agreement(accuracy):  # fraction of oracle moves equal to the expert's
        s = states.replace(accuracy=jnp.full_like(states.accuracy, accuracy))
        moves = jax.vmap(GOAL.partner_action, in_axes=(0, 0, None))(keys, s, params)
        expert = jax.vmap(GOAL.task.expert_action, in_axes=(0, None))(s.partner, params)
        return (moves == expert).mean(), moves.min(), moves.max()

    agree, low, high = jax.lax.map(agreement, accuracies)
    expected = accuracies + (1 - accuracies) / NUM_ACTIONS
    np.testing.assert_allclose(agree, expected, atol=0.03)
    assert low.min() >= 0 and high.max() <= NUM_ACTIONS - 1
    # accuracy None: drawn per episode, uniform on [0, 1]
    drawn = jax.vmap(GOAL.reset, in_axes=(0, None))(
        jax.random.split(jax.random.key(3), 2048), params.replace(oracle_accuracy=None)
    )[1].accuracy
    assert abs(float(drawn.mean()) - 0.5) < 0.03 and float(drawn.std()) > 0.25


def test_goal_sequence_generation_replays_the_best_trial() -> None:
    """Generation wiring on Goal Sequence: a recorded trial replayed as the demonstrator moves
    its body exactly as the recorded agent moved, and the next demonstration is the best
    member's last trial, whose replay earns the recorded return."""

    random = scripted(lambda obs, key: jax.random.randint(key, obs.shape[:1], 0, NUM_ACTIONS))
    config = InContextConfig(generations=1, population=8)
    generation = jax.jit(make_in_context_generation(config, random, GOAL, GOAL_PARAMS))
    task = GOAL.draw_task(jax.random.key(3), GOAL_PARAMS)
    length, none = GOAL.demo_spec(GOAL_PARAMS)
    demo = jnp.full((length,), none, jnp.int32)  # a demonstrator standing still
    next_demo, record = generation(None, task, demo, jax.random.key(4))
    returns = np.asarray(record.trial_returns)
    assert returns.shape == (8, GOAL_PARAMS.num_trials) and record.trial_actions.shape[-1] == 6
    best = int(np.argmax(returns[:, -1]))
    np.testing.assert_array_equal(next_demo, record.trial_actions[best, -1])

    # replay next_demo as the learner's moves while the demonstrator replays it too
    params = GOAL.with_task(GOAL_PARAMS, task).replace(demos=next_demo[None])
    _, state = GOAL.reset(jax.random.key(5), params)
    total = 0.0
    for t in range(length):
        assert (state.partner.pos == state.env_state.pos).all()
        assert state.partner.direction == state.env_state.direction
        _, state, reward, *_ = GOAL.step(jax.random.key(t), state, next_demo[t], params)
        total += float(reward)
    assert total == pytest.approx(returns[best, -1])
    rand = GoalSequence().reset(jax.random.key(3), GOAL_PARAMS)[1]  # draw_task is the reset's
    np.testing.assert_array_equal(rand.goal_pos, task.goal_pos)


def follower(view_size: int) -> Policy:
    """A scripted, memoryless policy that chases the demonstrator's body using only the social
    channel: turn toward it, step forward when it is straight ahead, random moves when it is
    out of view."""

    def act(obs, key):
        v, r = view_size, view_size // 2
        channel = obs[:, -(v * v + 1) : -1]  # [B, v*v]; row 0 of the view is furthest ahead
        cell = jnp.argmax(channel, axis=-1)
        ahead, right = r - cell // v, cell % v - r
        chase = jnp.where(right > 0, 1, jnp.where(right < 0, 0, jnp.where(ahead > 0, 2, 1)))
        chase = jnp.where((ahead == 0) & (right == 0), 0, chase)  # on its cell: wait (turn)
        guess = jax.random.randint(key, cell.shape, 0, NUM_ACTIONS)
        return jnp.where(channel.sum(-1) > 0, chase, guess)

    return scripted(act)


@pytest.mark.slow  # evidence for the README (a statistical check); run with -m slow
def test_goal_sequence_demonstrator_is_followable() -> None:
    """The social channel alone carries the task in the in-context study's setting (4x4 room,
    3 goals, 16-step trials): a memoryless follower of a visible oracle scores most of the
    expert's return per trial (3.48) while random moves lose (-0.21). So a learner stuck at 0
    is an optimisation failure, not a missing signal."""
    env, params = GoalTask().social(4, visibility=1.0, visibility_decay=False)
    policy = follower(params.view_size)
    # (oracle accuracy, visibility) in one program: followed 1.0 and 0.8, then unseen
    accuracy, visibility = jnp.array([1.0, 0.8, 1.0, 0.8]), jnp.array([1.0, 1.0, 0.0, 0.0])

    @jax.jit
    def play(accuracy, visibility):  # per-trial returns [256, 4]
        p = params.replace(oracle_accuracy=accuracy, visibility=visibility)
        return record_play(policy, None, env, p, jax.random.key(0), 256).trial_returns

    returns = np.asarray(jax.vmap(play)(accuracy, visibility)).mean(axis=(1, 2))
    assert 2.5 < returns[0] < 3.5 and 1.7 < returns[1] < 2.6, returns
    assert returns[2] < 0.0 and returns[3] < 0.0, returns  # unseen, it moves at random
